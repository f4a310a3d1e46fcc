//! Splitting a byte stream into records without holding more than one record in memory:
//! [`Lines`] for JSON lines, [`ArrayElements`] for the elements of one JSON array.
//!
//! Both work on any [`BufRead`] (a file, a gzip decoder) and keep at most [`MAX_RECORD_BYTES`]
//! of one record; a longer record is still skipped over whole and reported with its length,
//! so a file without line breaks (or an unclosed string in an array) cannot exhaust memory.

use std::io::{self, BufRead};

/// The most bytes of one record kept in memory (64 MiB); a longer one is rejected.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// One record's bytes as found in the file, without line ending or surrounding whitespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Piece {
    /// The bytes; only the first [`MAX_RECORD_BYTES`] (or the splitter's limit) of a longer
    /// record.
    pub bytes: Vec<u8>,
    /// The record's full length, in bytes.
    pub len: usize,
}

impl Piece {
    /// Whether only a prefix of the record was kept.
    pub fn is_cut(&self) -> bool {
        self.len > self.bytes.len()
    }

    fn push(&mut self, chunk: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.len += chunk.len();
    }

    fn trim_end(&mut self) {
        if self.is_cut() {
            return;
        }
        while self.bytes.last().is_some_and(u8::is_ascii_whitespace) {
            self.bytes.pop();
            self.len -= 1;
        }
    }
}

/// The non-blank lines of a stream, each with its 1-based line number. `\n` and `\r\n` end a
/// line; a line of only whitespace is skipped (but counted).
pub struct Lines<R> {
    reader: R,
    line: u64,
    limit: usize,
}

impl<R: BufRead> Lines<R> {
    /// The lines of `reader`, keeping at most `limit` bytes of each.
    pub fn new(reader: R, limit: usize) -> Self {
        Lines {
            reader,
            line: 0,
            limit,
        }
    }

    /// The next line, or `None` at the end of the stream.
    fn next_line(&mut self) -> io::Result<Option<Piece>> {
        let mut piece = Piece::default();
        let mut any = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(any.then_some(piece));
            }
            any = true;
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    piece.push(&buf[..i], self.limit);
                    self.reader.consume(i + 1);
                    return Ok(Some(piece));
                }
                None => {
                    let n = buf.len();
                    piece.push(buf, self.limit);
                    self.reader.consume(n);
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = io::Result<(u64, Piece)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut piece = match self.next_line() {
                Ok(Some(piece)) => piece,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            self.line += 1;
            piece.trim_end();
            if piece.is_cut() || !piece.bytes.iter().all(u8::is_ascii_whitespace) {
                return Some(Ok((self.line, piece)));
            }
        }
    }
}

/// What [`ArrayElements`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Element {
    /// An element's bytes, with its 0-based index (not checked to be valid JSON).
    Value(u64, Piece),
    /// Something that is not an element where one was expected, with the index it would
    /// have had, what was found there and why it is wrong.
    Malformed(u64, Piece, &'static str),
}

const UNCLOSED: &str = "the array is not closed: the file ends before `]`";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the opening `[`.
    Start,
    /// Inside the array, before an element.
    Elements,
    /// After the closing `]`.
    After,
    /// The stream ended inside the array, after an element.
    Unclosed,
    Done,
}

/// The elements of one JSON array, streamed: the splitter tracks nesting, strings and escapes,
/// and cuts at the commas between top-level elements. A malformed element does not stop it;
/// an element it cannot delimit (an unclosed string or bracket) runs to the end of the stream.
pub struct ArrayElements<R> {
    reader: R,
    state: State,
    index: u64,
    limit: usize,
}

/// Where an element ends, as the scanner saw it.
enum End {
    Comma,
    Bracket,
    Eof,
}

impl<R: BufRead> ArrayElements<R> {
    /// The elements of the array `reader` holds, keeping at most `limit` bytes of each.
    pub fn new(reader: R, limit: usize) -> Self {
        ArrayElements {
            reader,
            state: State::Start,
            index: 0,
            limit,
        }
    }

    /// Skips whitespace; returns the next byte without consuming it (`None` at the end).
    fn peek_non_blank(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => {
                    let b = buf[i];
                    self.reader.consume(i);
                    return Ok(Some(b));
                }
                None => {
                    let n = buf.len();
                    self.reader.consume(n);
                }
            }
        }
    }

    /// Reads one element up to (and consuming) the `,` or `]` that ends it at depth 0.
    fn scan_element(&mut self) -> io::Result<(Piece, End)> {
        self.peek_non_blank()?; // leading whitespace is not part of the element
        let mut piece = Piece::default();
        let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                piece.trim_end();
                return Ok((piece, End::Eof));
            }
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if in_string {
                    match (escaped, b) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b',' if depth == 0 => end = Some((i, End::Comma)),
                    b']' => end = Some((i, End::Bracket)),
                    _ => {}
                }
                if end.is_some() {
                    break;
                }
            }
            match end {
                Some((i, how)) => {
                    piece.push(&buf[..i], self.limit);
                    self.reader.consume(i + 1);
                    piece.trim_end();
                    return Ok((piece, how));
                }
                None => {
                    let n = buf.len();
                    piece.push(buf, self.limit);
                    self.reader.consume(n);
                }
            }
        }
    }

    /// The first bytes of what is left (at most 1 KiB), for a report.
    fn rest_prefix(&mut self) -> io::Result<Piece> {
        let buf = self.reader.fill_buf()?;
        let n = buf.len().min(1024);
        Ok(Piece {
            bytes: buf[..n].to_vec(),
            len: n,
        })
    }

    fn step(&mut self) -> io::Result<Option<Element>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Start => match self.peek_non_blank()? {
                    None => self.state = State::Done, // an empty file holds no events
                    Some(b'[') => {
                        self.reader.consume(1);
                        self.state = State::Elements;
                        if self.peek_non_blank()? == Some(b']') {
                            self.reader.consume(1);
                            self.state = State::After;
                        }
                    }
                    Some(_) => {
                        self.state = State::Done;
                        let found = self.rest_prefix()?;
                        return Ok(Some(Element::Malformed(
                            0,
                            found,
                            "not a JSON array: the file must start with `[` (for one event a \
                             line, use --format jsonl)",
                        )));
                    }
                },
                State::Elements => {
                    let index = self.index;
                    self.index += 1;
                    let (piece, end) = self.scan_element()?;
                    self.state = match end {
                        End::Comma => State::Elements,
                        End::Bracket => State::After,
                        End::Eof => State::Unclosed,
                    };
                    return Ok(Some(match (piece.len, end) {
                        (0, End::Eof) => {
                            self.state = State::Done;
                            Element::Malformed(index, piece, UNCLOSED)
                        }
                        (0, _) => Element::Malformed(
                            index,
                            piece,
                            "empty element (two commas, or a comma before `]`)",
                        ),
                        _ => Element::Value(index, piece),
                    }));
                }
                State::Unclosed => {
                    self.state = State::Done;
                    let empty = Piece::default();
                    return Ok(Some(Element::Malformed(self.index, empty, UNCLOSED)));
                }
                State::After => {
                    self.state = State::Done;
                    if self.peek_non_blank()?.is_some() {
                        let found = self.rest_prefix()?;
                        return Ok(Some(Element::Malformed(
                            self.index,
                            found,
                            "content after the array's closing `]`",
                        )));
                    }
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for ArrayElements<R> {
    type Item = io::Result<Element>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// A reader that hands out `n` bytes at a time, to cross every buffer boundary.
    fn chunked(data: &[u8], n: usize) -> io::BufReader<&[u8]> {
        io::BufReader::with_capacity(n, data)
    }

    fn lines(data: &str, limit: usize) -> Vec<(u64, String, usize)> {
        Lines::new(chunked(data.as_bytes(), 3), limit)
            .map(|r| r.expect("read"))
            .map(|(n, p)| (n, String::from_utf8_lossy(&p.bytes).into_owned(), p.len))
            .collect()
    }

    #[test]
    fn lines_skip_blanks_keep_numbers_and_drop_crlf() {
        let got = lines("a\r\n\n  \r\nbb\n\nccc", 100);
        let want = [(1, "a", 1), (4, "bb", 2), (6, "ccc", 3)];
        let want: Vec<_> = want.iter().map(|&(n, s, l)| (n, s.to_owned(), l)).collect();
        assert_eq!(got, want);
        assert!(lines("", 100).is_empty());
        assert!(lines("\n\n", 100).is_empty());
    }

    #[test]
    fn long_lines_are_cut_but_measured() {
        let got = lines("0123456789\nok\n", 4);
        assert_eq!(got[0], (1, "0123".to_owned(), 10));
        assert_eq!(got[1], (2, "ok".to_owned(), 2));
    }

    fn elements(data: &str, chunk: usize) -> Vec<Element> {
        ArrayElements::new(chunked(data.as_bytes(), chunk), MAX_RECORD_BYTES)
            .map(|r| r.expect("read"))
            .collect()
    }

    fn value(index: u64, s: &str) -> Element {
        Element::Value(
            index,
            Piece {
                bytes: s.as_bytes().to_vec(),
                len: s.len(),
            },
        )
    }

    #[test]
    fn arrays_split_at_top_level_commas_only() {
        let data = r#" [ {"a":"x],y","b":[1,[2,3]]} , "s\"],", [] ,{} ]
"#;
        for chunk in [1, 2, 7, 4096] {
            assert_eq!(
                elements(data, chunk),
                [
                    value(0, r#"{"a":"x],y","b":[1,[2,3]]}"#),
                    value(1, r#""s\"],""#),
                    value(2, "[]"),
                    value(3, "{}"),
                ],
                "chunk {chunk}"
            );
        }
        assert!(elements("[]", 1).is_empty());
        assert!(elements(" [ \n ] \n", 1).is_empty());
        assert!(elements("", 1).is_empty());
    }

    #[test]
    fn malformed_arrays_are_reported_where_they_break() {
        let kinds = |data: &str| -> Vec<(u64, &'static str)> {
            elements(data, 5)
                .into_iter()
                .map(|e| match e {
                    Element::Value(i, _) => (i, "value"),
                    Element::Malformed(i, _, why) => (i, why.split(':').next().unwrap_or("")),
                })
                .collect()
        };
        assert_eq!(kinds(r#"{"a":1}"#), [(0, "not a JSON array")]);
        assert_eq!(
            kinds("[1,,2]"),
            [
                (0, "value"),
                (1, "empty element (two commas, or a comma before `]`)"),
                (2, "value")
            ]
        );
        assert_eq!(
            kinds("[1, 2"),
            [(0, "value"), (1, "value"), (2, "the array is not closed")]
        );
        assert_eq!(kinds("[1,"), [(0, "value"), (1, "the array is not closed")]);
        assert_eq!(
            kinds("[1] x"),
            [(0, "value"), (1, "content after the array's closing `]`")]
        );
        // An extra closing brace stays inside its element; the next one is intact.
        assert_eq!(
            elements(r#"[{"a":1}},{"b":2}]"#, 3),
            [value(0, r#"{"a":1}}"#), value(1, r#"{"b":2}"#)]
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[\\[\\]{},:\"\\\\ a-z\u{e9}\u{1F600}\n\t]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\\],\"{]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Splitting then parsing each element gives what serde_json gives for the whole
        /// array, compact or pretty, whatever the read size.
        #[test]
        fn splitting_agrees_with_serde_json(
            items in prop::collection::vec(json_value(), 0..8),
            pretty in any::<bool>(),
            chunk in 1usize..64,
        ) {
            let array = Value::Array(items.clone());
            let text = if pretty {
                serde_json::to_string_pretty(&array)
            } else {
                serde_json::to_string(&array)
            }.expect("serialize");
            let whole: Vec<Value> = serde_json::from_str(&text).expect("parse");
            let mut split = Vec::new();
            for e in ArrayElements::new(chunked(text.as_bytes(), chunk), MAX_RECORD_BYTES) {
                match e.expect("read") {
                    Element::Value(i, p) => {
                        prop_assert_eq!(i, split.len() as u64);
                        split.push(serde_json::from_slice::<Value>(&p.bytes).expect("element"));
                    }
                    Element::Malformed(i, _, why) => prop_assert!(false, "{i}: {why}"),
                }
            }
            prop_assert_eq!(&split, &whole);
            prop_assert_eq!(split, items);
        }
    }
}
