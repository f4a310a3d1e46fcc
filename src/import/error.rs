//! What stops `tally import`, and the exit code of each (sysexits.h).

use std::path::PathBuf;

/// Why an import stopped before its end, or could not start.
///
/// `Display` says what happened and what to do; it does not repeat the `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A flag or a file's shape is unusable (`--map`, `--format`, a CSV header without a
    /// mapped column): exit 78 (`EX_CONFIG`), before anything is sent.
    #[error("{0}")]
    Config(String),
    /// A path cannot be opened or is not a file: exit 66 (`EX_NOINPUT`), before anything is
    /// sent.
    #[error("cannot open {}", path.display())]
    NoInput {
        /// The path as given.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A file ended early or could not be read (a truncated or corrupt gzip stream, an I/O
    /// error): exit 65 (`EX_DATAERR`). The records before the point named were sent.
    #[error(
        "{}: reading failed after {records} records ({bytes} of {len} bytes of the file \
         read); the records before were imported, re-run once the file is whole",
        path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Records read from this file before the failure.
        records: u64,
        /// Bytes of the file (compressed, for gzip) consumed before the failure.
        bytes: u64,
        /// The file's size, in bytes.
        len: u64,
        /// What the decoder or the system said.
        #[source]
        source: std::io::Error,
    },
    /// Kafka did not acknowledge a record after librdkafka's retries
    /// (`kafka.produce_timeout_ms`), or refused it for a reason other than its size: exit 69
    /// (`EX_UNAVAILABLE`). Re-running the import sends everything again without counting
    /// anything twice (stable event ids).
    #[error("kafka did not acknowledge record {position} of {}; re-run the import when Kafka is back", path.display())]
    Kafka {
        /// The file of the record.
        path: PathBuf,
        /// Its line (element index for a JSON array).
        position: u64,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The rejects file cannot be written: exit 73 (`EX_CANTCREAT`).
    #[error("cannot write the rejects file {}", path.display())]
    Rejects {
        /// The rejects file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

impl ImportError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ImportError::Config(_) => 78,
            ImportError::NoInput { .. } => 66,
            ImportError::Unreadable { .. } => 65,
            ImportError::Kafka { .. } => 69,
            ImportError::Rejects { .. } => 73,
        }
    }
}
