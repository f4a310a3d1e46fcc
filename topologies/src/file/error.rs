//! What can be wrong with a topology file, each error naming the file, the line and the key.

use std::fmt;

/// A place in a topology file: `file:line:column` (1-based; the column counts characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file as given (a path, or `<built-in>/name.toml` for a shipped file).
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `text` (clamped to the text).
    pub fn of(file: &str, text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            file: file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A topology file (or the set of them) is unusable. Every variant about a file's content
/// carries its [`Location`] and the key at fault, written as in the file (`windows[1].slide`,
/// `metrics[3]`, `filters.metadata.plan`), and says what is allowed.
///
/// Classification: [`FileError::Io`] means the input is missing (exit 66, `EX_NOINPUT`);
/// [`FileError::Config`] is an error in `tally.toml` (exit 78, `EX_CONFIG`); every other
/// variant is bad data (exit 65, `EX_DATAERR`). None is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A file or directory cannot be read.
    #[error("{path}: cannot read")]
    Io {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("{at}: invalid TOML: {message}")]
    Syntax {
        /// Where the parser stopped.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A key the format does not have.
    #[error("{at}: unknown key `{key}`{hint}; allowed here: {allowed}")]
    UnknownKey {
        /// Where the key is.
        at: Location,
        /// The full key (`windows[0].sizee`).
        key: String,
        /// ` (did you mean `size`?)` or empty.
        hint: String,
        /// The keys allowed in that table.
        allowed: String,
    },
    /// A required key is missing.
    #[error("{at}: missing key `{key}`: {help}")]
    MissingKey {
        /// The table that lacks it.
        at: Location,
        /// The full key.
        key: String,
        /// What to write.
        help: String,
    },
    /// A value of the wrong TOML type.
    #[error("{at}: `{key}` must be {expected}, not {found}")]
    WrongType {
        /// Where the value is.
        at: Location,
        /// The full key.
        key: String,
        /// What is allowed (`a string such as "15m"`).
        expected: String,
        /// The TOML type found (`integer`).
        found: &'static str,
    },
    /// A value of the right type that is not allowed: an unknown metric, a bad duration, a
    /// slide that does not divide the size, a window declared twice...
    #[error("{at}: `{key}`: {message}")]
    InvalidValue {
        /// Where the value is.
        at: Location,
        /// The full key.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The topology's `name` is not the file's name.
    #[error(
        "{at}: `name`: the topology is called {name:?} but the file is {stem}.toml: rename the \
         file to {name}.toml or set name = {stem:?}"
    )]
    NameMismatch {
        /// Where `name` is.
        at: Location,
        /// The `name` value.
        name: String,
        /// The file name without `.toml`.
        stem: String,
    },
    /// Two files define topologies with one name.
    #[error("topology {name:?} is defined twice: in {first} and in {second}")]
    DuplicateName {
        /// The name.
        name: String,
        /// The first file.
        first: String,
        /// The second file.
        second: String,
    },
    /// Two topologies would write one ClickHouse table.
    #[error("{second}: `table`: {table:?} is already the table of topology {first:?}; give each topology its own table")]
    DuplicateTable {
        /// The table.
        table: String,
        /// The topology that has it first.
        first: String,
        /// The file of the second one.
        second: String,
    },
    /// A `[topologies]` setting of `tally.toml` is unusable.
    #[error("config: `{field}`: {reason}")]
    Config {
        /// The key, as written in tally.toml (`topologies.enabled`).
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

impl FileError {
    /// Where in a file the error is, when it is about one place.
    pub fn location(&self) -> Option<&Location> {
        match self {
            FileError::Syntax { at, .. }
            | FileError::UnknownKey { at, .. }
            | FileError::MissingKey { at, .. }
            | FileError::WrongType { at, .. }
            | FileError::InvalidValue { at, .. }
            | FileError::NameMismatch { at, .. } => Some(at),
            _ => None,
        }
    }

    /// The key at fault, as written in the file (`name` for a name mismatch).
    pub fn key(&self) -> Option<&str> {
        match self {
            FileError::UnknownKey { key, .. }
            | FileError::MissingKey { key, .. }
            | FileError::WrongType { key, .. }
            | FileError::InvalidValue { key, .. } => Some(key),
            FileError::NameMismatch { .. } => Some("name"),
            FileError::DuplicateTable { .. } => Some("table"),
            FileError::Config { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The process exit code for it (sysexits.h): 66 a path cannot be read, 78 a
    /// `tally.toml` setting is wrong, 65 anything wrong in a topology file.
    pub fn exit_code(&self) -> u8 {
        match self {
            FileError::Io { .. } => 66,
            FileError::Config { .. } => 78,
            _ => 65,
        }
    }
}

/// ` (did you mean `x`?)` when one of `candidates` is close to `word` (edit distance at most
/// 2, or a prefix of at least 3 characters), else empty.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2 || (word.len() >= 3 && c.starts_with(word)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        let at = Location::of("f.toml", text, text.find("\"x\"").unwrap_or(0));
        assert_eq!((at.line, at.column), (2, 6));
        assert_eq!(at.to_string(), "f.toml:2:6");
        assert_eq!(Location::of("f", text, 0).to_string(), "f:1:1");
        assert_eq!(Location::of("f", text, 999).line, 3);
    }

    #[test]
    fn suggestions_are_close_names_only() {
        assert_eq!(
            did_you_mean("bounce", ["events", "bounce_rate"]),
            " (did you mean `bounce_rate`?)"
        );
        assert_eq!(
            did_you_mean("sizee", ["name", "size"]),
            " (did you mean `size`?)"
        );
        assert_eq!(did_you_mean("zzz", ["name", "size"]), "");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
