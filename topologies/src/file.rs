//! Topology files: one topology per TOML file (`topologies/<name>.toml`), parsed into
//! [`TopologyBuilder`], so a file and the Rust builder give the same topology through the same
//! checks. The format, every key with its default and allowed values, is in
//! `docs/topologies.md`; a short example:
//!
//! ```
//! let text = r#"
//! name = "signups"
//! metrics = ["events", "unique_users"]
//! [[windows]]
//! name = "1h"
//! size = "1h"
//! [filters]
//! event_type_in = ["signup"]
//! "#;
//! let t = tally_topologies::file::parse("signups.toml", text).unwrap();
//! assert_eq!(t.table, "rollups_signups");
//! // Errors name the file, the line and column, and the key.
//! let e = tally_topologies::file::parse("signups.toml", &text.replace("\"1h\"\n[", "\"1x\"\n["))
//!     .unwrap_err();
//! assert!(e.to_string().starts_with("signups.toml:6:8: `windows[0].size`"), "{e}");
//! ```
//!
//! Errors ([`FileError`]) carry the file, line, column and key (`windows[1].slide`) and say
//! what is allowed; errors of [`TopologyBuilder::build`] are mapped back to the line of the
//! key they name. Loading a folder, the shipped files and the `[topologies]` settings are in
//! [`TopologiesConfig`], [`load_dir`], [`load_files`] and [`shipped`].

mod error;
mod load;

use std::ops::Range;
use std::path::Path;

use tally_core::{
    Dimension, DistinctMode, FieldPath, Filter, Metric, SessionSpec, Topology, TopologyBuilder,
    TopologyError, WindowSpec,
};
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

pub use error::{FileError, Location};
pub use load::{
    is_manifest, load_dir, load_file, load_files, shipped, topology_paths, TopologiesConfig,
    TopologyFile, SHIPPED,
};

use error::did_you_mean;

/// Keys of the top-level table.
pub const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "table",
    "distinct",
    "windows",
    "sessions",
    "dimensions",
    "filters",
    "metrics",
];
const WINDOW_KEYS: &[&str] = &["name", "kind", "size", "slide"];
const SESSION_KEYS: &[&str] = &["gap", "max_duration"];
const DIMENSION_KEYS: &[&str] = &["name", "max_values"];
const FILTER_KEYS: &[&str] = &["event_type_in", "event_type_not_in", "metadata"];

type Item<'i> = Spanned<DeValue<'i>>;

/// Parses one topology file. `file` names it in errors; its stem (`web_sessions` of
/// `topologies/web_sessions.toml`) must equal the topology's `name`.
///
/// Errors: every [`FileError`] variant about a file's content (syntax, unknown key, missing
/// key, wrong type, invalid value, name mismatch), each with its location and key.
pub fn parse(file: &str, text: &str) -> Result<Topology, FileError> {
    let root = DeTable::parse(text).map_err(|e| FileError::Syntax {
        at: Location::of(file, text, e.span().map_or(0, |s| s.start)),
        message: e.message().to_owned(),
    })?;
    let mut walk = Walk {
        file,
        text,
        spans: Vec::new(),
    };
    let topology = walk
        .topology(root.get_ref())?
        .build()
        .map_err(|e| walk.builder_error(e))?;
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem != topology.name {
        return Err(FileError::NameMismatch {
            at: walk.locate("name"),
            name: topology.name,
            stem,
        });
    }
    Ok(topology)
}

/// One pass over a parsed file, remembering where each key is (for the builder's errors).
struct Walk<'f> {
    file: &'f str,
    text: &'f str,
    /// Key path (`windows[1].slide`) → span of its value.
    spans: Vec<(String, Range<usize>)>,
}

/// What the top-level table declares, before it goes into the builder.
#[derive(Default)]
struct Declared {
    name: Option<String>,
    description: Option<String>,
    table: Option<String>,
    distinct: DistinctMode,
    windows: Vec<WindowSpec>,
    sessions: Option<SessionSpec>,
    dimensions: Vec<Dimension>,
    filters: Vec<Filter>,
    metrics: Vec<Metric>,
}

impl<'f> Walk<'f> {
    fn at(&self, span: &Range<usize>) -> Location {
        Location::of(self.file, self.text, span.start)
    }

    /// Where `key` is, or its closest written ancestor (`windows[1].slide` → `windows[1]`),
    /// or the top of the file.
    fn locate(&self, key: &str) -> Location {
        let mut k = key;
        loop {
            if let Some((_, span)) = self.spans.iter().find(|(p, _)| p == k) {
                return self.at(span);
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => return Location::of(self.file, self.text, 0),
            }
        }
    }

    fn builder_error(&self, e: TopologyError) -> FileError {
        FileError::InvalidValue {
            at: self.locate(&e.key),
            key: e.key,
            message: e.message,
        }
    }

    fn remember(&mut self, path: &str, item: &Item<'_>) {
        self.spans.push((path.to_owned(), item.span()));
    }

    /// The entries of `table` (whose path is `prefix`, empty at the top) in file order, after
    /// checking that every key is one of `allowed`: `(path, key, value)`.
    fn entries<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        prefix: &str,
        allowed: &[&str],
    ) -> Result<Vec<(String, &'t str, &'t Item<'i>)>, FileError> {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut out = Vec::new();
        for (k, v) in entries {
            let key: &str = k.get_ref();
            let path = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            if !allowed.contains(&key) {
                return Err(FileError::UnknownKey {
                    at: self.at(&k.span()),
                    key: path,
                    hint: did_you_mean(key, allowed.iter().copied()),
                    allowed: allowed.join(", "),
                });
            }
            self.remember(&path, v);
            out.push((path, key, v));
        }
        Ok(out)
    }

    fn wrong_type(&self, path: &str, item: &Item<'_>, expected: &str) -> FileError {
        FileError::WrongType {
            at: self.at(&item.span()),
            key: path.to_owned(),
            expected: expected.to_owned(),
            found: item.get_ref().type_str(),
        }
    }

    fn invalid(&self, path: &str, item: &Item<'_>, message: String) -> FileError {
        FileError::InvalidValue {
            at: self.at(&item.span()),
            key: path.to_owned(),
            message,
        }
    }

    fn string<'t>(&self, path: &str, item: &'t Item<'_>, what: &str) -> Result<&'t str, FileError> {
        item.get_ref()
            .as_str()
            .ok_or_else(|| self.wrong_type(path, item, what))
    }

    fn array<'t, 'i>(
        &self,
        path: &str,
        item: &'t Item<'i>,
        what: &str,
    ) -> Result<&'t DeArray<'i>, FileError> {
        item.get_ref()
            .as_array()
            .ok_or_else(|| self.wrong_type(path, item, what))
    }

    fn table<'t, 'i>(
        &self,
        path: &str,
        item: &'t Item<'i>,
        what: &str,
    ) -> Result<&'t DeTable<'i>, FileError> {
        item.get_ref()
            .as_table()
            .ok_or_else(|| self.wrong_type(path, item, what))
    }

    fn duration(&self, path: &str, item: &Item<'_>) -> Result<u64, FileError> {
        let text = self.string(path, item, "a duration string such as \"15m\"")?;
        WindowSpec::parse_duration(text).ok_or_else(|| {
            self.invalid(
                path,
                item,
                format!(
                    "{text:?} is not a duration: write a whole number followed by ms, s, m, h \
                     or d, e.g. \"90s\", \"15m\", \"1h\", \"1d\""
                ),
            )
        })
    }

    fn count(&self, path: &str, item: &Item<'_>) -> Result<usize, FileError> {
        let n = item
            .get_ref()
            .as_integer()
            .ok_or_else(|| self.wrong_type(path, item, "a whole number"))?;
        u64::from_str_radix(n.as_str(), n.radix())
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.invalid(path, item, format!("{n} is not a positive number")))
    }

    /// Strings of an array, each remembered as `path[i]`.
    fn strings(&mut self, path: &str, item: &Item<'_>) -> Result<Vec<String>, FileError> {
        let list = self.array(path, item, "an array of strings")?;
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.remember(&p, v);
            out.push(self.string(&p, v, "a string")?.to_owned());
        }
        Ok(out)
    }

    fn topology(&mut self, root: &DeTable<'_>) -> Result<TopologyBuilder, FileError> {
        let entries = self.entries(root, "", TOP_KEYS)?;
        let present: Vec<&str> = entries.iter().map(|(_, k, _)| *k).collect();
        let mut d = Declared::default();
        for (path, key, v) in entries {
            match key {
                "name" => d.name = Some(self.string(&path, v, "a string")?.to_owned()),
                "description" => {
                    d.description = Some(self.string(&path, v, "a string")?.to_owned())
                }
                "table" => d.table = Some(self.string(&path, v, "a string")?.to_owned()),
                "distinct" => d.distinct = self.distinct(&path, v)?,
                "windows" => d.windows = self.windows(&path, v)?,
                "sessions" => d.sessions = Some(self.sessions(&path, v)?),
                "dimensions" => d.dimensions = self.dimensions(&path, v)?,
                "filters" => d.filters = self.filters(&path, v)?,
                _ => d.metrics = self.metrics(&path, v)?,
            }
        }
        for (required, help) in [
            ("name", "the topology's name, e.g. name = \"web_sessions\""),
            (
                "windows",
                "at least one window, e.g. [[windows]] name = \"1h\" size = \"1h\"",
            ),
            (
                "metrics",
                "a list of metrics, e.g. metrics = [\"events\", \"unique_users\"]",
            ),
        ] {
            if !present.contains(&required) {
                return Err(FileError::MissingKey {
                    at: Location::of(self.file, self.text, 0),
                    key: required.to_owned(),
                    help: help.to_owned(),
                });
            }
        }
        let mut b = Topology::builder(d.name.unwrap_or_default()).distinct(d.distinct);
        if let Some(text) = d.description {
            b = b.description(text);
        }
        if let Some(table) = d.table {
            b = b.table(table);
        }
        if let Some(s) = d.sessions {
            b = b.sessions(s);
        }
        b = d.windows.into_iter().fold(b, TopologyBuilder::window);
        b = d.dimensions.into_iter().fold(b, TopologyBuilder::dimension);
        b = d.filters.into_iter().fold(b, TopologyBuilder::filter);
        Ok(d.metrics.into_iter().fold(b, TopologyBuilder::metric))
    }

    fn distinct(&self, path: &str, item: &Item<'_>) -> Result<DistinctMode, FileError> {
        match self.string(path, item, "a string: \"exact\" or \"approx\"")? {
            "exact" => Ok(DistinctMode::Exact),
            "approx" => Ok(DistinctMode::Approx),
            other => Err(self.invalid(
                path,
                item,
                format!(
                    "unknown mode {other:?}; allowed: \"exact\" (default) or \"approx\" \
                     (HyperLogLog, relative standard error 1.6 %)"
                ),
            )),
        }
    }

    fn windows(&mut self, path: &str, item: &Item<'_>) -> Result<Vec<WindowSpec>, FileError> {
        let what = "an array of tables ([[windows]] sections)";
        let list = self.array(path, item, what)?;
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.remember(&p, v);
            let table = self.table(&p, v, "a table such as { name = \"1h\", size = \"1h\" }")?;
            out.push(self.window(&p, v, table)?);
        }
        Ok(out)
    }

    fn window(
        &mut self,
        path: &str,
        item: &Item<'_>,
        table: &DeTable<'_>,
    ) -> Result<WindowSpec, FileError> {
        let (mut name, mut kind, mut size, mut slide) = (None, None, None, None);
        for (p, key, v) in self.entries(table, path, WINDOW_KEYS)? {
            match key {
                "name" => name = Some(self.string(&p, v, "a string")?.to_owned()),
                "kind" => kind = Some((p.clone(), v)),
                "size" => size = Some(self.duration(&p, v)?),
                _ => slide = Some((p.clone(), v, self.duration(&p, v)?)),
            }
        }
        let Some(size) = size else {
            return Err(FileError::MissingKey {
                at: self.at(&item.span()),
                key: format!("{path}.size"),
                help: "the window's length, e.g. size = \"1h\"".to_owned(),
            });
        };
        let slide_ms = slide.as_ref().map_or(size, |(_, _, ms)| *ms);
        if let Some((p, v)) = kind {
            let kind = self.string(&p, v, "a string: \"tumbling\" or \"hopping\"")?;
            match (kind, &slide) {
                ("tumbling", Some((sp, sv, ms))) if *ms != size => {
                    return Err(self.invalid(
                        sp,
                        sv,
                        "a tumbling window's slide equals its size: remove `slide`, or set \
                         kind = \"hopping\""
                            .to_owned(),
                    ));
                }
                ("hopping", None) => {
                    return Err(FileError::MissingKey {
                        at: self.at(&item.span()),
                        key: format!("{path}.slide"),
                        help: "a hopping window needs a slide shorter than its size, e.g. \
                               slide = \"15m\""
                            .to_owned(),
                    });
                }
                ("hopping", Some((sp, sv, ms))) if *ms >= size => {
                    return Err(self.invalid(
                        sp,
                        sv,
                        "a hopping window's slide is shorter than its size (and divides it)"
                            .to_owned(),
                    ));
                }
                ("tumbling" | "hopping", _) => {}
                (other, _) => {
                    return Err(self.invalid(
                        &p,
                        v,
                        format!(
                            "unknown window kind {other:?}; allowed: \"tumbling\", \"hopping\""
                        ),
                    ))
                }
            }
        }
        let name = name.unwrap_or_else(|| {
            if slide_ms == size {
                WindowSpec::format_duration(size)
            } else {
                format!(
                    "{}_{}",
                    WindowSpec::format_duration(size),
                    WindowSpec::format_duration(slide_ms)
                )
            }
        });
        Ok(WindowSpec::hopping(name, size, slide_ms))
    }

    fn sessions(&mut self, path: &str, item: &Item<'_>) -> Result<SessionSpec, FileError> {
        let table = self.table(path, item, "a table ([sessions] with gap and max_duration)")?;
        let mut spec = SessionSpec::default();
        for (p, key, v) in self.entries(table, path, SESSION_KEYS)? {
            match key {
                "gap" => spec.gap_ms = self.duration(&p, v)?,
                _ => spec.max_duration_ms = self.duration(&p, v)?,
            }
        }
        Ok(spec)
    }

    fn dimensions(&mut self, path: &str, item: &Item<'_>) -> Result<Vec<Dimension>, FileError> {
        let list = self.array(path, item, "an array ([[dimensions]] sections or names)")?;
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.remember(&p, v);
            let (name, max_values) = match v.get_ref() {
                DeValue::String(name) => ((p.clone(), v, name.as_ref()), None),
                DeValue::Table(table) => {
                    let (mut name, mut max) = (None, None);
                    for (q, key, w) in self.entries(table, &p, DIMENSION_KEYS)? {
                        match key {
                            "name" => name = Some((q.clone(), w, self.string(&q, w, "a string")?)),
                            _ => max = Some(self.count(&q, w)?),
                        }
                    }
                    let Some(name) = name else {
                        return Err(FileError::MissingKey {
                            at: self.at(&v.span()),
                            key: format!("{p}.name"),
                            help: "event_type or metadata.<field>, e.g. name = \
                                   \"metadata.platform\""
                                .to_owned(),
                        });
                    };
                    (name, max)
                }
                _ => {
                    return Err(self.wrong_type(
                        &p,
                        v,
                        "a dimension name or a table { name = \"...\", max_values = N }",
                    ))
                }
            };
            let (name_path, name_item, name) = name;
            let Some(mut dimension) = Dimension::parse(name) else {
                return Err(self.invalid(
                    &name_path,
                    name_item,
                    format!(
                        "unknown dimension {name:?}; allowed: event_type, or metadata.<field> \
                         (keys of letters, digits, `_` and `-`, e.g. metadata.platform)"
                    ),
                ));
            };
            if let Some(max) = max_values {
                dimension.max_values = max;
            }
            out.push(dimension);
        }
        Ok(out)
    }

    fn filters(&mut self, path: &str, item: &Item<'_>) -> Result<Vec<Filter>, FileError> {
        let table = self.table(path, item, "a table ([filters])")?;
        let (mut type_in, mut type_not_in, mut metadata) = (None, None, Vec::new());
        for (p, key, v) in self.entries(table, path, FILTER_KEYS)? {
            match key {
                "event_type_in" | "event_type_not_in" => {
                    let types = self.strings(&p, v)?;
                    if types.is_empty() {
                        return Err(self.invalid(
                            &p,
                            v,
                            "an empty list: list event types or remove the key".to_owned(),
                        ));
                    }
                    if key == "event_type_in" {
                        type_in = Some(Filter::EventTypeIn(types));
                    } else {
                        type_not_in = Some(Filter::EventTypeNotIn(types));
                    }
                }
                _ => self.metadata_filters(&p, v, &mut Vec::new(), &mut metadata)?,
            }
        }
        Ok(type_in
            .into_iter()
            .chain(type_not_in)
            .chain(metadata)
            .collect())
    }

    /// `filters.metadata`: nested tables are nested fields, each leaf a value to equal.
    fn metadata_filters(
        &mut self,
        path: &str,
        item: &Item<'_>,
        keys: &mut Vec<String>,
        out: &mut Vec<Filter>,
    ) -> Result<(), FileError> {
        let leaf = "a string, number or boolean to compare with (or a table of them)";
        let value = match item.get_ref() {
            DeValue::Table(table) => {
                let mut entries: Vec<_> = table.iter().collect();
                entries.sort_by_key(|(k, _)| k.span().start);
                for (k, v) in entries {
                    let key: &str = k.get_ref();
                    let p = format!("{path}.{key}");
                    self.remember(&p, v);
                    let ok = !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if !ok {
                        return Err(FileError::InvalidValue {
                            at: self.at(&k.span()),
                            key: p,
                            message: format!(
                                "{key:?} is not a metadata key: use letters, digits, `_` and \
                                 `-`; nest keys as metadata.a.b = ..."
                            ),
                        });
                    }
                    keys.push(key.to_owned());
                    self.metadata_filters(&p, v, keys, out)?;
                    keys.pop();
                }
                return Ok(());
            }
            DeValue::String(s) => serde_json::Value::String(s.to_string()),
            DeValue::Boolean(b) => serde_json::Value::Bool(*b),
            DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
                .map(serde_json::Value::from)
                .map_err(|_| self.invalid(path, item, format!("{n} is out of range")))?,
            DeValue::Float(x) => x
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(serde_json::Value::Number)
                .ok_or_else(|| self.invalid(path, item, format!("{x} is not a finite number")))?,
            _ => return Err(self.wrong_type(path, item, leaf)),
        };
        if keys.is_empty() {
            return Err(self.wrong_type(path, item, "a table of metadata fields"));
        }
        out.push(Filter::MetadataEquals(FieldPath(keys.clone()), value));
        Ok(())
    }

    fn metrics(&mut self, path: &str, item: &Item<'_>) -> Result<Vec<Metric>, FileError> {
        let list = self.array(path, item, "an array of metric names")?;
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.remember(&p, v);
            let name = self.string(&p, v, "a metric name (a string)")?;
            let Some(metric) = Metric::parse(name) else {
                let hint = did_you_mean(name, Metric::NAMES.iter().copied());
                return Err(self.invalid(
                    &p,
                    v,
                    format!(
                        "unknown metric {name:?}{hint}; allowed: {}, sum(metadata.<field>), \
                         avg(metadata.<field>), max(metadata.<field>)",
                        Metric::NAMES.join(", ")
                    ),
                ));
            };
            out.push(metric);
        }
        Ok(out)
    }
}
