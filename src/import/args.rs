//! The `tally import` flags (clap), the input formats, and the `--map` field mapping.

use std::path::{Path, PathBuf};

use tally_pipeline::event::FIELDS;

use super::ImportError;

/// Where the rejected records go when `--rejects` is not given.
pub const DEFAULT_REJECTS: &str = "tally-import-rejects.jsonl";

/// Import files of historical events through the same validation and Kafka path as
/// `POST /events` (see docs/operations.md, "Importing history").
#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// Files to import, in order: JSON lines (.jsonl, .ndjson), a JSON array (.json) or CSV
    /// with a header row (.csv), each optionally gzip-compressed (.gz; gzip is also recognised
    /// by its magic bytes).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The format of every PATH, instead of guessing it from the extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Take event field FIELD (event_id, event_type, user_id, session_id, timestamp,
    /// metadata) from CSV column (or JSON key) COLUMN; repeatable. Without a mapping a field
    /// comes from the column of its own name. Every other column or key goes into `metadata`
    /// (CSV cells as strings, JSON values as they are); empty CSV cells are absent; CSV
    /// timestamps are RFC 3339 or integer epoch milliseconds.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    pub map: Vec<String>,
    /// Where to write rejected records, one JSON object a line ({"file", "line", "reason",
    /// "input"}); created (or overwritten) only when a record is rejected.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_REJECTS)]
    pub rejects: PathBuf,
    /// Exit 0 even when records were rejected (they are still written to the rejects file).
    #[arg(long)]
    pub allow_rejects: bool,
    /// After the import, wait until the pipeline has counted the imported time range and its
    /// late windows are corrected (a signal stops waiting: exit 130).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 75).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub wait_timeout: u64,
}

/// An input format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON event a line (blank lines are skipped).
    Jsonl,
    /// One JSON array of events, read as a stream (it is never held in memory whole).
    Json,
    /// CSV with a header row naming the columns.
    Csv,
}

impl Format {
    /// The format `--format` names, else the one of `path`'s extension (`.jsonl`, `.ndjson`,
    /// `.json`, `.csv`, each optionally followed by `.gz`).
    ///
    /// # Errors
    /// [`ImportError::Config`] when the extension is none of these and `--format` is absent.
    pub fn of(path: &Path, flag: Option<Format>) -> Result<Format, ImportError> {
        if let Some(format) = flag {
            return Ok(format);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let ext = Path::new(name).extension().and_then(|e| e.to_str());
        match ext {
            Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
            Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            _ => Err(ImportError::Config(format!(
                "{}: unknown format; name the file .jsonl, .ndjson, .json or .csv (optionally \
                 .gz), or pass --format jsonl|json|csv",
                path.display()
            ))),
        }
    }
}

/// Where each event field comes from: the column (CSV) or key (JSON) named by `--map`, else
/// the one of the field's own name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// One source name per field of [`FIELDS`], in that order.
    sources: [String; FIELDS.len()],
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            sources: FIELDS.map(str::to_owned),
        }
    }
}

impl Mapping {
    /// Parses the `--map FIELD=COLUMN` flags.
    ///
    /// # Errors
    /// [`ImportError::Config`] (exit 78) for a flag without `=`, an empty column, a FIELD
    /// outside the event contract, or a FIELD mapped twice.
    pub fn parse(flags: &[String]) -> Result<Mapping, ImportError> {
        let mut mapping = Mapping::default();
        let mut seen = [false; FIELDS.len()];
        for flag in flags {
            let bad = |why: &str| ImportError::Config(format!("--map {flag}: {why}"));
            let (field, column) = flag
                .split_once('=')
                .ok_or_else(|| bad("expected FIELD=COLUMN"))?;
            let i = FIELDS
                .iter()
                .position(|f| *f == field.trim())
                .ok_or_else(|| {
                    bad(&format!(
                        "unknown field `{field}` (fields: {})",
                        FIELDS.join(", ")
                    ))
                })?;
            if column.is_empty() {
                return Err(bad("the column name is empty"));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(bad(&format!("`{}` is mapped twice", FIELDS[i])));
            }
            mapping.sources[i] = column.to_owned();
        }
        Ok(mapping)
    }

    /// The fields with their source names, in [`FIELDS`] order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        FIELDS
            .iter()
            .copied()
            .zip(self.sources.iter().map(String::as_str))
    }

    /// The (field, source) pairs whose source differs from the field's own name.
    pub fn mapped(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.fields().filter(|(f, s)| f != s)
    }

    /// Whether `name` is the source of some field.
    pub fn is_source(&self, name: &str) -> bool {
        self.sources.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ImportArgs,
    }

    fn args(flags: &[&str]) -> Result<ImportArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("import").chain(flags.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_parse_with_defaults() {
        let a = args(&["a.jsonl", "b.csv.gz"]).expect("ok");
        assert_eq!(a.paths.len(), 2);
        assert_eq!(a.rejects, PathBuf::from(DEFAULT_REJECTS));
        assert_eq!((a.format, a.allow_rejects, a.wait), (None, false, false));
        let a = args(&[
            "x",
            "--format",
            "csv",
            "--map",
            "event_type=event",
            "--map",
            "user_id=uid",
            "--rejects",
            "r.jsonl",
            "--allow-rejects",
            "--wait",
        ])
        .expect("ok");
        assert_eq!(a.format, Some(Format::Csv));
        assert_eq!(a.map, ["event_type=event", "user_id=uid"]);
        assert!(a.allow_rejects && a.wait);
        assert!(args(&[]).is_err(), "a path is required");
        assert!(args(&["x", "--format", "xml"]).is_err());
    }

    #[test]
    fn formats_follow_the_extension_unless_given() {
        let of = |p: &str| Format::of(Path::new(p), None).ok();
        assert_eq!(of("a.jsonl"), Some(Format::Jsonl));
        assert_eq!(of("dir/a.NDJSON.gz"), Some(Format::Jsonl));
        assert_eq!(of("a.json"), Some(Format::Json));
        assert_eq!(of("a.json.gz"), Some(Format::Json));
        assert_eq!(of("a.csv.gz"), Some(Format::Csv));
        assert_eq!(of("a.txt"), None);
        assert_eq!(of("a.gz"), None);
        assert_eq!(of("csv"), None);
        let err = Format::of(Path::new("a.txt"), None).expect_err("unknown");
        assert!(err.to_string().contains("--format"), "{err}");
        assert_eq!(err.exit_code(), 78);
        assert_eq!(
            Format::of(Path::new("a.txt"), Some(Format::Csv)).ok(),
            Some(Format::Csv)
        );
    }

    #[test]
    fn mappings_name_known_fields_once() {
        let m = Mapping::parse(&["event_type=event".into(), "timestamp=ts".into()]).expect("ok");
        assert_eq!(
            m.mapped().collect::<Vec<_>>(),
            [("event_type", "event"), ("timestamp", "ts")]
        );
        assert!(m.is_source("user_id") && m.is_source("ts") && !m.is_source("timestamp"));
        for bad in [
            "kind=event",
            "event_type",
            "event_type=",
            "user_id=a,user_id=b",
        ] {
            let flags: Vec<String> = bad.split(',').map(str::to_owned).collect();
            let err = Mapping::parse(&flags).expect_err(bad);
            assert_eq!(err.exit_code(), 78, "{bad}");
            assert!(err.to_string().starts_with("--map "), "{err}");
        }
        assert_eq!(Mapping::parse(&[]).ok(), Some(Mapping::default()));
    }
}
