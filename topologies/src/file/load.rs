//! Loading topology files: a folder, a list of files, or the files shipped in the binary; and
//! the `[topologies]` settings that choose between them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tally_core::{RowTable, Topology};

use super::{parse, FileError};

/// The topology files shipped with Tally (`topologies/*.toml` of the source tree), built into
/// the binary: `(file name, text)`.
pub const SHIPPED: [(&str, &str); 2] = [
    (
        "product_analytics.toml",
        include_str!("../../product_analytics.toml"),
    ),
    ("web_sessions.toml", include_str!("../../web_sessions.toml")),
];

/// A topology and the file it was read from.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyFile {
    /// The file (`topologies/web_sessions.toml`, or `<built-in>/web_sessions.toml`).
    pub path: String,
    /// The topology.
    pub topology: Topology,
}

/// The shipped topologies ([`SHIPPED`]), named `<built-in>/<file>` in errors.
///
/// Errors: none for the files this build ships (a test parses them); the type allows for a
/// broken build.
pub fn shipped() -> Result<Vec<TopologyFile>, FileError> {
    let files = SHIPPED
        .iter()
        .map(|(name, text)| {
            let path = format!("<built-in>/{name}");
            parse(&path, text).map(|topology| TopologyFile { path, topology })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_unique(&files)?;
    Ok(files)
}

/// Reads and parses one file. Errors: [`FileError::Io`] when it cannot be read, else as
/// [`parse`].
pub fn load_file(path: &Path) -> Result<TopologyFile, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
        path: shown.clone(),
        source,
    })?;
    let topology = parse(&shown, &text)?;
    Ok(TopologyFile {
        path: shown,
        topology,
    })
}

/// Reads and parses files, in the order given. Errors: the first file's error, or
/// [`FileError::DuplicateName`] / [`FileError::DuplicateTable`] when two files define one name
/// or write one table.
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<TopologyFile>, FileError> {
    let files = paths
        .iter()
        .map(|p| load_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique(&files)?;
    Ok(files)
}

/// Every `*.toml` file of `dir` except `Cargo.toml` (the shipped folder is also the source
/// of the `tally-topologies` crate), sorted by file name. An empty result is not an error
/// here.
pub fn load_dir(dir: &Path) -> Result<Vec<TopologyFile>, FileError> {
    load_files(&topology_paths(dir)?)
}

/// The topology files of `dir` (see [`load_dir`]), sorted. Errors: [`FileError::Io`] when
/// the folder cannot be listed.
pub fn topology_paths(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let io = |source| FileError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        if is_toml && !is_manifest(&path) && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Whether `path` is a Cargo manifest (`Cargo.toml`), never a topology file.
pub fn is_manifest(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "Cargo.toml")
}

/// Two topologies may share neither a name nor a table.
fn check_unique(files: &[TopologyFile]) -> Result<(), FileError> {
    for (i, f) in files.iter().enumerate() {
        let t = &f.topology;
        if let Some(first) = files[..i].iter().find(|o| o.topology.name == t.name) {
            return Err(FileError::DuplicateName {
                name: t.name.clone(),
                first: first.path.clone(),
                second: f.path.clone(),
            });
        }
        let mine = [t.table_name(RowTable::Windows), t.sessions_table()];
        for other in &files[..i] {
            let theirs = [
                other.topology.table_name(RowTable::Windows),
                other.topology.sessions_table(),
            ];
            if let Some(table) = mine.iter().find(|m| theirs.contains(m)) {
                return Err(FileError::DuplicateTable {
                    table: table.clone(),
                    first: other.topology.name.clone(),
                    second: f.path.clone(),
                });
            }
        }
    }
    Ok(())
}

/// `[topologies]` in tally.toml: which topology files to load and which of them run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologiesConfig {
    /// Folder of topology files (every `*.toml` but `Cargo.toml`), relative to the working
    /// directory. Unset: `topologies` when that folder exists, else the topologies shipped in
    /// the binary ([`SHIPPED`]). Set: the folder must exist.
    pub dir: Option<PathBuf>,
    /// The topologies to run, by name: a list, or a comma-separated string (handy in
    /// `TALLY_TOPOLOGIES__ENABLED=a,b`). Unset: every topology in the folder.
    #[serde(deserialize_with = "names")]
    pub enabled: Option<Vec<String>>,
}

/// A list of names, or one string of comma-separated names (brackets and quotes around them
/// ignored, so a TOML array written in an environment variable reads the same).
fn names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Text(String),
    }
    Ok(Some(
        match Names::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a list of topology names, or a comma-separated string",
            )
        })? {
            Names::List(list) => list,
            // `a,b`, and also `["a", "b"]` as an environment variable's text.
            Names::Text(text) => text
                .split(',')
                .map(|n| n.trim_matches(|c: char| c.is_whitespace() || "[]\"'".contains(c)))
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        },
    ))
}

impl TopologiesConfig {
    /// The folder used when `dir` is unset.
    pub const DEFAULT_DIR: &'static str = "topologies";

    /// Checks the settings without reading any file. Errors: [`FileError::Config`] naming
    /// `topologies.dir` (empty) or `topologies.enabled` (empty list, a name listed twice).
    pub fn validate(&self) -> Result<(), FileError> {
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(FileError::Config {
                field: "topologies.dir",
                reason: "must be a folder; remove the key for the default".to_owned(),
            });
        }
        if let Some(enabled) = &self.enabled {
            if enabled.is_empty() {
                return Err(FileError::Config {
                    field: "topologies.enabled",
                    reason: "lists no topology; remove the key to run every topology".to_owned(),
                });
            }
            if let Some((i, name)) = enabled
                .iter()
                .enumerate()
                .find(|(i, n)| enabled[..*i].contains(n))
            {
                return Err(FileError::Config {
                    field: "topologies.enabled",
                    reason: format!("{name:?} is listed twice (entry {i})"),
                });
            }
        }
        Ok(())
    }

    /// Every topology available: the folder's files, or the shipped ones (see
    /// [`TopologiesConfig::dir`]), enabled or not. Errors: as [`load_dir`];
    /// [`FileError::Config`] naming `topologies.dir` when it is set and does not exist or
    /// when the folder holds no topology file.
    pub fn available(&self) -> Result<Vec<TopologyFile>, FileError> {
        let dir = match &self.dir {
            Some(dir) if !dir.is_dir() => {
                return Err(FileError::Config {
                    field: "topologies.dir",
                    reason: format!("{} is not a folder", dir.display()),
                })
            }
            Some(dir) => dir.clone(),
            None if Path::new(Self::DEFAULT_DIR).is_dir() => PathBuf::from(Self::DEFAULT_DIR),
            None => return shipped(),
        };
        let files = load_dir(&dir)?;
        if files.is_empty() {
            return Err(FileError::Config {
                field: "topologies.dir",
                reason: format!("{} holds no topology file (*.toml)", dir.display()),
            });
        }
        Ok(files)
    }

    /// The enabled topologies with their files, in the order of `enabled` (else of the
    /// folder). Errors: as [`TopologiesConfig::available`]; [`FileError::Config`] naming
    /// `topologies.enabled` for a name no file defines (the message lists those found).
    pub fn load_files(&self) -> Result<Vec<TopologyFile>, FileError> {
        self.validate()?;
        let available = self.available()?;
        let Some(enabled) = &self.enabled else {
            return Ok(available);
        };
        enabled
            .iter()
            .map(|name| {
                available
                    .iter()
                    .find(|f| &f.topology.name == name)
                    .cloned()
                    .ok_or_else(|| FileError::Config {
                        field: "topologies.enabled",
                        reason: format!(
                            "no topology {name:?}; found: {}",
                            available
                                .iter()
                                .map(|f| format!("{} ({})", f.topology.name, f.path))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
            })
            .collect()
    }

    /// The enabled topologies (see [`TopologiesConfig::load_files`]).
    pub fn load(&self) -> Result<Vec<Topology>, FileError> {
        Ok(self.load_files()?.into_iter().map(|f| f.topology).collect())
    }
}
