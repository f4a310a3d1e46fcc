//! The input side of `tally import`: checking every path before anything is sent, opening a
//! file (gzip by extension or magic bytes, all members; a UTF-8 byte order mark dropped), and
//! the reader thread that turns files into checked records for the sender.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use tokio::sync::mpsc;

use super::args::{Format, Mapping};
use super::record::{check, At, Body, Limits, RawRecord, Reject, Valid};
use super::split::{ArrayElements, Element, Lines, MAX_RECORD_BYTES};
use super::table::Rows;
use super::ImportError;

/// Records handed to the sender at once.
const BATCH: usize = 256;
/// Read buffer of a file and of its decompressed stream, in bytes.
const BUFFER_BYTES: usize = 256 << 10;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One input file, checked.
#[derive(Clone, Debug)]
pub struct Source {
    /// The path as given.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its size, in bytes.
    pub len: u64,
}

type Input = Box<dyn BufRead + Send>;

impl Source {
    /// Checks that `path` has a known format, opens as a file, and (CSV) has a header row with
    /// every mapped column, without reading further.
    ///
    /// # Errors
    /// [`ImportError::Config`] (unknown format, bad header), [`ImportError::NoInput`] (cannot
    /// be opened, not a file) or [`ImportError::Unreadable`] (the start cannot be decoded).
    pub fn check(
        path: &Path,
        flag: Option<Format>,
        mapping: &Mapping,
    ) -> Result<Self, ImportError> {
        let format = Format::of(path, flag)?;
        let no_input = |source| ImportError::NoInput {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(no_input)?;
        if !meta.is_file() {
            return Err(no_input(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let source = Source {
            path: path.to_owned(),
            format,
            len: meta.len(),
        };
        if format == Format::Csv {
            let input = source.open(&Arc::default())?;
            Rows::new(input, mapping)
                .map_err(|e| source.unreadable(0, 0, e))?
                .map_err(|e| ImportError::Config(format!("{}: {e}", path.display())))?;
        }
        Ok(source)
    }

    /// The file's content, decompressed, without a byte order mark; every byte read from the
    /// file itself is added to `read.bytes`.
    fn open(&self, read: &Arc<ReadCount>) -> Result<Input, ImportError> {
        let file = File::open(&self.path).map_err(|source| ImportError::NoInput {
            path: self.path.clone(),
            source,
        })?;
        let counted = Counted {
            inner: file,
            read: Arc::clone(read),
        };
        let mut raw = BufReader::with_capacity(BUFFER_BYTES, counted);
        let head = raw.fill_buf().map_err(|e| self.unreadable(0, 0, e))?;
        let gz_name = self
            .path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        let mut input: Input = if gz_name || head.starts_with(&GZIP_MAGIC) {
            Box::new(BufReader::with_capacity(
                BUFFER_BYTES,
                MultiGzDecoder::new(raw),
            ))
        } else {
            Box::new(raw)
        };
        if input
            .fill_buf()
            .map_err(|e| self.unreadable(0, 0, e))?
            .starts_with(BOM)
        {
            input.consume(BOM.len());
        }
        Ok(input)
    }

    fn unreadable(&self, records: u64, bytes: u64, source: io::Error) -> ImportError {
        ImportError::Unreadable {
            path: self.path.clone(),
            records,
            bytes,
            len: self.len,
            source,
        }
    }
}

/// How far the reader thread got; the progress display and the summary read it.
#[derive(Debug, Default)]
pub struct ReadCount {
    /// Bytes read from the files (compressed bytes for gzip).
    pub bytes: AtomicU64,
    /// Files opened.
    pub files: AtomicUsize,
}

/// Counts the bytes read from a file (progress is shown in bytes of the files).
struct Counted<R> {
    inner: R,
    read: Arc<ReadCount>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The records of one file, in order.
type Records = Box<dyn Iterator<Item = io::Result<RawRecord>> + Send>;

/// The records of one opened file; the inner error says why a CSV header row is unusable.
fn records(
    format: Format,
    input: Input,
    file: usize,
    mapping: &Mapping,
) -> io::Result<Result<Records, String>> {
    let at = move |position| At { file, position };
    Ok(Ok(match format {
        Format::Jsonl => Box::new(Lines::new(input, MAX_RECORD_BYTES).map(move |r| {
            r.map(|(line, raw)| RawRecord {
                at: at(line),
                raw,
                body: Body::Json,
            })
        })),
        Format::Json => Box::new(ArrayElements::new(input, MAX_RECORD_BYTES).map(move |r| {
            r.map(|element| match element {
                Element::Value(index, raw) => RawRecord {
                    at: at(index),
                    raw,
                    body: Body::Json,
                },
                Element::Malformed(index, raw, why) => RawRecord {
                    at: at(index),
                    raw,
                    body: Body::Built(Err(why.to_owned())),
                },
            })
        })),
        Format::Csv => match Rows::new(input, mapping)? {
            Ok(rows) => Box::new(rows.map(move |r| {
                r.map(|row| RawRecord {
                    at: at(row.line),
                    raw: row.raw,
                    body: Body::Built(row.event),
                })
            })),
            Err(why) => return Ok(Err(why)),
        },
    }))
}

/// What the reader thread hands to the sender.
pub type Checked = Result<Valid, Reject>;

/// What the reader thread needs.
pub struct ReadPlan {
    /// The files, checked, in order.
    pub sources: Vec<Source>,
    /// `--map`.
    pub mapping: Mapping,
    /// What records are checked against.
    pub limits: Limits,
}

/// Reads every file in order, checks each record, and sends them in batches to `tx`, counting
/// files and bytes in `read`. Stops early, without error, when `stop` is set or the receiver
/// is gone.
///
/// # Errors
/// [`ImportError::Unreadable`] when a file cannot be read to its end (a truncated gzip
/// stream), [`ImportError::NoInput`] when a file vanished since it was checked,
/// [`ImportError::Config`] when a CSV header changed since.
pub fn read_all(
    plan: &ReadPlan,
    read: &Arc<ReadCount>,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Vec<Checked>>,
) -> Result<(), ImportError> {
    for (file, source) in plan.sources.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let start = read.bytes.load(Ordering::Relaxed);
        let input = source.open(read)?;
        read.files.fetch_add(1, Ordering::Relaxed);
        let (mut count, mut batch) = (0u64, Vec::with_capacity(BATCH));
        let unreadable = |count, e| {
            let bytes = read.bytes.load(Ordering::Relaxed) - start;
            source.unreadable(count, bytes, e)
        };
        let rows = records(source.format, input, file, &plan.mapping)
            .map_err(|e| unreadable(0, e))?
            .map_err(|e| ImportError::Config(format!("{}: {e}", source.path.display())))?;
        for record in rows {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    // What was read before the failure is sent, as the error says.
                    if !batch.is_empty() {
                        let _ = tx.blocking_send(std::mem::take(&mut batch));
                    }
                    return Err(unreadable(count, e));
                }
            };
            count += 1;
            batch.push(check(record, &plan.mapping, plan.limits));
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if stop.load(Ordering::SeqCst) || tx.blocking_send(full).is_err() {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() && tx.blocking_send(batch).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
