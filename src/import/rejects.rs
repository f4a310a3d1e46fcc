//! The rejects file: one JSON object a line per rejected record,
//! `{"file", "line", "reason", "input"}`, created (truncating an older one) at the first
//! rejection only.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::record::Reject;
use super::ImportError;

/// One line of the rejects file.
#[derive(Serialize)]
struct Line<'a> {
    /// The input file, as given on the command line.
    file: &'a str,
    /// 1-based line (JSON lines, CSV: where the row starts), or 0-based element index (JSON
    /// array).
    line: u64,
    reason: &'a str,
    /// The record as in the file, at most 1 KiB.
    input: &'a str,
}

/// Writes rejected records to a file opened at the first one.
pub struct RejectsFile {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    /// The input files' names, by index.
    files: Vec<String>,
    written: u64,
}

impl RejectsFile {
    /// A rejects file at `path` (not created yet) for records of `files`.
    pub fn new(path: &Path, files: &[PathBuf]) -> Self {
        RejectsFile {
            path: path.to_owned(),
            out: None,
            files: files.iter().map(|f| f.display().to_string()).collect(),
            written: 0,
        }
    }

    /// Appends `reject`, creating the file first if needed.
    ///
    /// # Errors
    /// [`ImportError::Rejects`] when the file cannot be created or written.
    pub fn write(&mut self, reject: &Reject) -> Result<(), ImportError> {
        let line = Line {
            file: self.files.get(reject.at.file).map_or("", String::as_str),
            line: reject.at.position,
            reason: &reject.reason,
            input: &reject.input,
        };
        let failed = |source| ImportError::Rejects {
            path: self.path.clone(),
            source,
        };
        let out = match &mut self.out {
            Some(out) => out,
            None => self
                .out
                .insert(BufWriter::new(File::create(&self.path).map_err(failed)?)),
        };
        serde_json::to_writer(&mut *out, &line).map_err(|e| failed(e.into()))?;
        out.write_all(b"\n").map_err(failed)?;
        self.written += 1;
        Ok(())
    }

    /// Flushes what was written; returns the file's path when anything was.
    ///
    /// # Errors
    /// [`ImportError::Rejects`] when the file cannot be written.
    pub fn finish(&mut self) -> Result<Option<&Path>, ImportError> {
        match &mut self.out {
            Some(out) => {
                out.flush().map_err(|source| ImportError::Rejects {
                    path: self.path.clone(),
                    source,
                })?;
                Ok(Some(&self.path))
            }
            None => Ok(None),
        }
    }
}
