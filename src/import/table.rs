//! CSV files (the `csv` crate): a header row names the columns; each row becomes an event
//! object through the `--map` [`Mapping`]. The row's raw bytes are kept too, for its stable id
//! and for the rejects file.
//!
//! Cells are strings. An empty cell is absent (an empty `event_type` or `user_id` stays, and is
//! rejected as empty); a `timestamp` of ASCII digits becomes integer epoch milliseconds; a
//! `metadata` cell is parsed as JSON; every column that is no field's source goes into
//! `metadata` as a string (a key of the `metadata` cell wins over a column of the same name).

use std::io::{self, Read};

use serde_json::{Map, Value};

use super::args::Mapping;
use super::split::Piece;

/// A row of a CSV file, before validation.
#[derive(Debug)]
pub struct Row {
    /// The 1-based line the row starts on.
    pub line: u64,
    /// The row as in the file, without its line ending.
    pub raw: Piece,
    /// The event object, or why the row is not one.
    pub event: Result<Value, String>,
}

/// Where each event field and each metadata column is, by column index.
#[derive(Debug)]
struct Layout {
    fields: Vec<(&'static str, usize)>,
    metadata: Vec<(String, usize)>,
    columns: usize,
}

impl Layout {
    fn new(headers: &csv::StringRecord, mapping: &Mapping) -> Result<Layout, String> {
        let find = |name: &str| headers.iter().position(|h| h == name);
        let mut fields = Vec::new();
        for (field, source) in mapping.fields() {
            match find(source) {
                Some(i) => fields.push((field, i)),
                None if field != source => {
                    return Err(format!(
                        "--map {field}={source}: the header has no column `{source}` \
                         (columns: {})",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ))
                }
                None => {}
            }
        }
        let metadata = headers
            .iter()
            .enumerate()
            .filter(|(i, h)| !mapping.is_source(h) && find(h) == Some(*i))
            .map(|(i, h)| (h.to_owned(), i))
            .collect();
        Ok(Layout {
            fields,
            metadata,
            columns: headers.len(),
        })
    }

    /// The event object of one row.
    fn event(&self, row: &csv::StringRecord) -> Result<Value, String> {
        if row.len() != self.columns {
            return Err(format!(
                "the row has {} cells; the header has {}",
                row.len(),
                self.columns
            ));
        }
        let cell = |i: usize| row.get(i).unwrap_or("");
        let mut obj = Map::new();
        for &(field, i) in &self.fields {
            let text = cell(i);
            let value = match field {
                "event_type" | "user_id" => Value::from(text),
                _ if text.is_empty() => continue,
                "timestamp" => match text.parse::<u64>() {
                    Ok(ms) if text.bytes().all(|b| b.is_ascii_digit()) => Value::from(ms),
                    _ => Value::from(text),
                },
                // Not JSON: kept as a string, which validation refuses as not an object.
                "metadata" => serde_json::from_str(text).unwrap_or_else(|_| Value::from(text)),
                _ => Value::from(text),
            };
            obj.insert(field.to_owned(), value);
        }
        let extra = self
            .metadata
            .iter()
            .filter(|(_, i)| !cell(*i).is_empty())
            .map(|(name, i)| (name.clone(), Value::from(cell(*i))));
        match obj.get_mut("metadata") {
            Some(Value::Object(m)) => {
                for (k, v) in extra {
                    m.entry(k).or_insert(v);
                }
            }
            Some(_) => {} // validation says `metadata` must be an object
            None => {
                let m: Map<String, Value> = extra.collect();
                if !m.is_empty() {
                    obj.insert("metadata".to_owned(), Value::Object(m));
                }
            }
        }
        Ok(Value::Object(obj))
    }
}

/// The rows of one CSV file.
pub struct Rows<R: Read> {
    reader: csv::Reader<Tee<R>>,
    layout: Layout,
    record: csv::ByteRecord,
}

impl<R: Read> Rows<R> {
    /// Reads the header row of `input` and resolves `mapping` against it.
    ///
    /// # Errors
    /// The outer error when `input` cannot be read; the inner one (for people) when the header
    /// row is not valid UTF-8 or lacks a column `mapping` names.
    pub fn new(input: R, mapping: &Mapping) -> io::Result<Result<Self, String>> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(Tee::new(input));
        let layout = match reader.headers() {
            Ok(headers) => Layout::new(headers, mapping),
            Err(e) if e.is_io_error() => return Err(csv_io(e)),
            Err(e) => Err(format!("the CSV header row cannot be read: {e}")),
        };
        Ok(layout.map(|layout| Rows {
            reader,
            layout,
            record: csv::ByteRecord::new(),
        }))
    }

    fn row(&mut self) -> io::Result<Option<Row>> {
        // Flexible rows of bytes: the only error left is an I/O error.
        let more = match self.reader.read_byte_record(&mut self.record) {
            Ok(more) => more,
            Err(e) => return Err(csv_io(e)),
        };
        let (start, line) = self
            .record
            .position()
            .map_or((0, 1), |p| (p.byte(), p.line()));
        let end = self.reader.position().byte();
        let bytes = self.reader.get_mut().take(start, end);
        if !more {
            return Ok(None);
        }
        let (raw, blank_lines) = trim_row(bytes);
        let event = match csv::StringRecord::from_byte_record(self.record.clone()) {
            Ok(row) => self.layout.event(&row),
            Err(_) => Err("the row is not valid UTF-8".to_owned()),
        };
        Ok(Some(Row {
            line: line + blank_lines,
            raw,
            event,
        }))
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = io::Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        self.row().transpose()
    }
}

/// The I/O error inside a CSV error (the only kind flexible byte records can fail with).
fn csv_io(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io,
        kind => io::Error::new(io::ErrorKind::InvalidData, format!("{kind:?}")),
    }
}

/// A row's bytes without the blank lines the CSV reader skipped before it and without its line
/// ending, and how many lines were skipped.
fn trim_row(mut bytes: Vec<u8>) -> (Piece, u64) {
    let lead = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let skipped = bytes[..lead].iter().filter(|&&b| b == b'\n').count() as u64;
    bytes.drain(..lead);
    while matches!(bytes.last(), Some(b'\r' | b'\n')) {
        bytes.pop();
    }
    let len = bytes.len();
    (Piece { bytes, len }, skipped)
}

/// A reader that keeps what it hands out, so that the bytes of each CSV row can be taken
/// back by the row's start and end offsets (which the `csv` reader reports).
struct Tee<R> {
    inner: R,
    kept: Vec<u8>,
    /// Stream offset of `kept[0]`.
    base: u64,
}

impl<R> Tee<R> {
    fn new(inner: R) -> Self {
        Tee {
            inner,
            kept: Vec::new(),
            base: 0,
        }
    }

    /// The bytes of `[start, end)` (stream offsets); forgets everything before `end`.
    fn take(&mut self, start: u64, end: u64) -> Vec<u8> {
        let offset = |at: u64| (at.saturating_sub(self.base) as usize).min(self.kept.len());
        let (from, to) = (offset(start), offset(end));
        let out = self.kept[from..to].to_vec();
        self.kept.drain(..to);
        self.base += to as u64;
        out
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(data: &str, mapping: &Mapping) -> Vec<(u64, String, Result<Value, String>)> {
        let reader = io::BufReader::with_capacity(5, data.as_bytes());
        Rows::new(reader, mapping)
            .expect("read")
            .expect("header")
            .map(|r| r.expect("read"))
            .map(|r| {
                (
                    r.line,
                    String::from_utf8_lossy(&r.raw.bytes).into_owned(),
                    r.event,
                )
            })
            .collect()
    }

    #[test]
    fn rows_map_columns_and_keep_the_rest_as_metadata() {
        let mapping = Mapping::parse(&["event_type=event".into()]).expect("map");
        let data = "event,user_id,timestamp,session_id,page,note\r\n\
                    click,u1,1710320400000,,/home,\"a, \"\"quoted\"\" note\"\r\n\
                    \r\n\
                    view,u2,2024-03-13T10:00:00Z,s2,,\"multi\nline\"\r\n";
        let got = rows(data, &mapping);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 2);
        assert_eq!(
            got[0].1,
            "click,u1,1710320400000,,/home,\"a, \"\"quoted\"\" note\""
        );
        assert_eq!(
            got[0].2,
            Ok(
                json!({"event_type": "click", "user_id": "u1", "timestamp": 1_710_320_400_000u64,
                      "metadata": {"page": "/home", "note": "a, \"quoted\" note"}})
            )
        );
        assert_eq!(got[1].0, 4, "the blank line is skipped but counted");
        assert_eq!(got[1].1, "view,u2,2024-03-13T10:00:00Z,s2,,\"multi\nline\"");
        assert_eq!(
            got[1].2,
            Ok(
                json!({"event_type": "view", "user_id": "u2", "timestamp": "2024-03-13T10:00:00Z",
                      "session_id": "s2", "metadata": {"note": "multi\nline"}})
            )
        );
    }

    #[test]
    fn bad_rows_are_reported_with_their_line() {
        let data = "event_type,user_id,timestamp,metadata\nx,u,1,\"{\"\"a\"\":1}\"\nx,u\ny,,2,\n";
        let got = rows(data, &Mapping::default());
        assert_eq!(
            got[0].2,
            Ok(json!({"event_type": "x", "user_id": "u", "timestamp": 1, "metadata": {"a": 1}}))
        );
        assert_eq!(
            (got[1].0, got[1].1.as_str(), got[1].2.clone()),
            (
                3,
                "x,u",
                Err("the row has 2 cells; the header has 4".to_owned())
            )
        );
        assert_eq!(
            got[2].2,
            Ok(json!({"event_type": "y", "user_id": "", "timestamp": 2}))
        );
    }

    #[test]
    fn a_mapped_column_must_exist() {
        let mapping = Mapping::parse(&["user_id=uid".into()]).expect("map");
        let err = Rows::new("event_type,user\n".as_bytes(), &mapping)
            .expect("read")
            .err()
            .expect("no column");
        assert!(
            err.contains("--map user_id=uid: the header has no column `uid`"),
            "{err}"
        );
    }
}
