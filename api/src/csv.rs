//! `format=csv`: the same answer as a spreadsheet reads it (`/reports`, `/users`).
//!
//! `text/csv; charset=utf-8`, a header row, fields quoted per RFC 4180 (the `csv` crate: a
//! field with a comma, quote or line break is quoted, quotes doubled), `\r\n` line ends.
//!
//! Formula injection: a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and some
//! read a leading tab or carriage return the same way) as a formula. Text cells that come from
//! event data (user ids, event types, group values) and start with one of these are written
//! with a leading `'`, which spreadsheets show as text; numbers Tally computed are written as
//! they are (a negative number stays a number).

use std::collections::HashMap;

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// The answer's format, from `format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `json` (the default).
    Json,
    /// `csv`.
    Csv,
}

/// `format`: absent or `json`, or `csv`; anything else is a 400.
pub fn format_param(params: &HashMap<String, String>) -> Result<Format, ApiError> {
    match params.get("format").map(String::as_str) {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            Err(ApiError::BadRequest(format!(
                "unknown format `{shown}`: use json or csv"
            )))
        }
    }
}

/// One field of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Text from data: guarded against formula injection.
    Text(String),
    /// A number or time Tally wrote: as it is.
    Plain(String),
}

/// `text` as a spreadsheet should show it: prefixed with `'` when it starts like a formula.
pub fn guard(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// The body of a CSV answer: `header`, then `rows`.
pub fn body(
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<Cell>>,
) -> Result<Vec<u8>, ApiError> {
    let internal = |e: ::csv::Error| ApiError::Internal(format!("writing csv: {e}"));
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(header).map_err(internal)?;
    for row in rows {
        let fields = row.into_iter().map(|c| match c {
            Cell::Text(t) => guard(&t),
            Cell::Plain(p) => p,
        });
        w.write_record(fields).map_err(internal)?;
    }
    w.into_inner()
        .map_err(|e| ApiError::Internal(format!("writing csv: {e}")))
}

/// A `200 text/csv; charset=utf-8` answer with `body`.
pub fn response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_guards() {
        let rows = vec![
            vec![
                Cell::Text("=HYPERLINK(\"x\")".into()),
                Cell::Plain("-3".into()),
            ],
            vec![Cell::Text("a,b\nc".into()), Cell::Text("@sum".into())],
            vec![Cell::Text("plain".into()), Cell::Text("+1".into())],
        ];
        let out = String::from_utf8(body(&["a", "b"], rows).expect("csv")).expect("utf-8");
        assert_eq!(
            out,
            "a,b\r\n\"'=HYPERLINK(\"\"x\"\")\",-3\r\n\"a,b\nc\",'@sum\r\nplain,'+1\r\n"
        );
    }

    #[test]
    fn formats() {
        let p = |v: &str| HashMap::from([("format".to_owned(), v.to_owned())]);
        assert_eq!(format_param(&HashMap::new()).ok(), Some(Format::Json));
        assert_eq!(format_param(&p("json")).ok(), Some(Format::Json));
        assert_eq!(format_param(&p("csv")).ok(), Some(Format::Csv));
        assert!(format_param(&p("xml")).is_err());
    }
}
