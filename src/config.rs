//! `tally.toml` plus `TALLY_<SECTION>__<KEY>` environment overrides, validated before anything
//! starts. Every section's struct lives in the crate that uses it; this file only assembles them.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use serde::de::DeserializeOwned;
use tally_api::ApiConfig;
use tally_pipeline::kafka::KafkaConfig;
use tally_pipeline::{PipelineConfig, PipelineError};
use tally_sinks::clickhouse::ClickHouseConfig;
use tally_sinks::postgres::PostgresConfig;
use tally_sinks::SinkError;
use tally_topologies::file::{FileError, TopologiesConfig};

/// The whole configuration.
#[derive(Clone, Debug)]
pub struct TallyConfig {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub postgres: PostgresConfig,
    pub pipeline: PipelineConfig,
    pub api: ApiConfig,
    pub topologies: TopologiesConfig,
}

const SECTIONS: [&str; 6] = [
    "kafka",
    "clickhouse",
    "postgres",
    "pipeline",
    "api",
    "topologies",
];

/// Loads `path` (or `./tally.toml` when it exists, or defaults), applies environment overrides
/// and validates every section.
pub fn load(
    path: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<TallyConfig> {
    let table = match path {
        Some(p) => read(p)?,
        None if Path::new("tally.toml").exists() => read(Path::new("tally.toml"))?,
        None => toml::Table::new(),
    };
    if let Some(unknown) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        bail!(
            "config: unknown section `[{unknown}]` (expected one of {})",
            SECTIONS.join(", ")
        );
    }
    let mut overrides = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("TALLY_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if !SECTIONS.contains(&section.as_str()) {
            bail!("config: environment variable {name}: unknown section `{section}`");
        }
        overrides.push(EnvOverride {
            section,
            key,
            var: name,
            raw,
        });
    }
    let config = TallyConfig {
        kafka: section(&table, "kafka", &overrides)?,
        clickhouse: section(&table, "clickhouse", &overrides)?,
        postgres: section(&table, "postgres", &overrides)?,
        pipeline: section(&table, "pipeline", &overrides)?,
        api: section(&table, "api", &overrides)?,
        topologies: section(&table, "topologies", &overrides)?,
    };
    // Validation errors name the key; add the variable when the value came from one.
    let origin = |field: &str| {
        overrides
            .iter()
            .rev()
            .find(|o| field.split_once('.') == Some((&o.section, &o.key)))
            .map(|o| format!(" (environment variable {})", o.var))
            .unwrap_or_default()
    };
    let pipeline_err = |e: PipelineError| match &e {
        PipelineError::Config { field, .. } => anyhow!("{e}{}", origin(field)),
        _ => e.into(),
    };
    let sink_err = |e: SinkError| match &e {
        SinkError::Config { field, .. } => anyhow!("{e}{}", origin(field)),
        _ => e.into(),
    };
    config.kafka.validate().map_err(pipeline_err)?;
    config.clickhouse.validate().map_err(sink_err)?;
    config.postgres.validate().map_err(sink_err)?;
    config.pipeline.validate().map_err(pipeline_err)?;
    config
        .api
        .validate()
        .map_err(|(field, reason)| anyhow!("config: `{field}`: {reason}{}", origin(field)))?;
    config.topologies.validate().map_err(|e| match &e {
        FileError::Config { field, .. } => anyhow!("{e}{}", origin(field)),
        _ => e.into(),
    })?;
    Ok(config)
}

/// One `TALLY_<SECTION>__<KEY>` variable (section and key lowercased).
struct EnvOverride {
    section: String,
    key: String,
    var: String,
    raw: String,
}

fn read(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow!("config: {}: {e}", path.display()))
}

/// An override for a key that does not take a string: a TOML value when it parses as one
/// (numbers, booleans), else a string (which the key then rejects).
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Section `name` of the file with the environment overrides applied. A key that takes a string
/// gets the variable's value as written (`TALLY_CLICKHOUSE__PASSWORD=12345` is the string
/// "12345"); any other key gets it parsed as a TOML value. An error names the key and, for an
/// override, the variable.
fn section<T: DeserializeOwned>(
    file: &toml::Table,
    name: &str,
    overrides: &[EnvOverride],
) -> anyhow::Result<T> {
    let mut table = match file.get(name) {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(other) => bail!("config: `{name}` must be a table, not {}", other.type_str()),
    };
    let mut from_env = std::collections::HashMap::new();
    for o in overrides.iter().filter(|o| o.section == name) {
        let as_string = toml::Value::String(o.raw.clone());
        let value = if deserialize::<T>(&o.key, &as_string).is_ok() {
            as_string
        } else {
            parse_env_value(&o.raw)
        };
        table.insert(o.key.clone(), value);
        from_env.insert(o.key.as_str(), o.var.as_str());
    }
    let error = match toml::Value::Table(table.clone()).try_into::<T>() {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    // Find the key at fault: the first one that does not deserialize on its own.
    for (key, value) in &table {
        if let Err(e) = deserialize::<T>(key, value) {
            let origin = from_env
                .get(key.as_str())
                .map(|var| format!(" (environment variable {var})"))
                .unwrap_or_default();
            bail!("config: `{name}.{key}`{origin}: {}", e.message());
        }
    }
    bail!("config: [{name}]: {}", error.message())
}

/// Deserializes a section holding only `key = value` (every other key at its default).
fn deserialize<T: DeserializeOwned>(key: &str, value: &toml::Value) -> Result<T, toml::de::Error> {
    let mut table = toml::Table::new();
    table.insert(key.to_owned(), value.clone());
    toml::Value::Table(table).try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml_text: &str, env: &[(&str, &str)]) -> anyhow::Result<TallyConfig> {
        let dir = std::env::temp_dir().join(format!("tally-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("tally.toml");
        std::fs::write(&path, toml_text)?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = load(Some(&path), env);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn defaults_file_and_env_layer() {
        let c = load_str(
            "[pipeline]\nworkers = 3\n",
            &[("TALLY_PIPELINE__GRACE_MS", "7000"), ("TALLY_HOME", "/x")],
        )
        .expect("valid");
        assert_eq!(c.pipeline.workers, 3);
        assert_eq!(c.pipeline.grace_ms, 7000);
        assert_eq!(c.kafka.topic, "events");
        let c = load_str(
            "",
            &[("TALLY_KAFKA__BROKERS", "10.0.0.1:9092,10.0.0.2:9092")],
        )
        .expect("valid");
        assert_eq!(c.kafka.brokers, "10.0.0.1:9092,10.0.0.2:9092");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_str("[kafka]\nbrokerz = \"x\"\n", &[])
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("kafka.brokerz"), "{e}");
        let e = load_str("[pipeline]\nworkers = \"two\"\n", &[])
            .expect_err("bad type")
            .to_string();
        assert!(e.contains("pipeline.workers"), "{e}");
        let e = load_str("[pipeline]\nworkers = 0\n", &[])
            .expect_err("bad value")
            .to_string();
        assert!(e.contains("pipeline.workers"), "{e}");
        let e = load_str("[nope]\n", &[])
            .expect_err("bad section")
            .to_string();
        assert!(e.contains("[nope]"), "{e}");
        let e = load_str("", &[("TALLY_API__LISTEN", "not-an-address")])
            .expect_err("bad env")
            .to_string();
        assert!(e.contains("api.listen"), "{e}");
        let e = load_str("", &[("TALLY_NOPE__X", "1")])
            .expect_err("bad env section")
            .to_string();
        assert!(e.contains("TALLY_NOPE__X"), "{e}");
    }

    /// `tally.toml.example` is a valid config whose values are the defaults it claims.
    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let text = include_str!("../tally.toml.example");
        let c = load_str(text, &[]).expect("tally.toml.example is valid");
        let d = load_str("", &[]).expect("defaults");
        assert_eq!(format!("{:?}", c.api), format!("{:?}", d.api));
        assert_eq!(format!("{:?}", c.clickhouse), format!("{:?}", d.clickhouse));
    }

    #[test]
    fn api_auth_and_limits_from_the_environment() {
        let c = load_str(
            "",
            &[
                ("TALLY_API__AUTH", "ingest_open"),
                ("TALLY_API__REQUEST_LOG", "false"),
                ("TALLY_API__CORS_ORIGINS", "[\"https://a.example\"]"),
            ],
        )
        .expect("valid");
        assert_eq!(c.api.auth, tally_api::AuthMode::IngestOpen);
        assert!(!c.api.request_log);
        assert_eq!(c.api.cors_origins, vec!["https://a.example".to_owned()]);
        let e = load_str("", &[("TALLY_API__AUTH", "open")])
            .expect_err("bad mode")
            .to_string();
        assert!(e.contains("api.auth") || e.contains("auth"), "{e}");
    }

    #[test]
    fn topologies_section() {
        let c = load_str("[topologies]\ndir = \"x\"\nenabled = [\"a\"]\n", &[]).expect("valid");
        assert_eq!(c.topologies.dir, Some(std::path::PathBuf::from("x")));
        assert_eq!(c.topologies.enabled, Some(vec!["a".to_owned()]));
        assert_eq!(load_str("", &[]).expect("valid").topologies.enabled, None);
        let c = load_str("", &[("TALLY_TOPOLOGIES__ENABLED", "a, b")]).expect("valid");
        assert_eq!(c.topologies.enabled, Some(vec!["a".into(), "b".into()]));
        let e = load_str("[topologies]\nenabled = []\n", &[])
            .expect_err("empty")
            .to_string();
        assert!(e.contains("topologies.enabled"), "{e}");
        let e = load_str("", &[("TALLY_TOPOLOGIES__ENABLED", "a,a")])
            .expect_err("twice")
            .to_string();
        assert!(
            e.contains("topologies.enabled") && e.contains("TALLY_TOPOLOGIES__ENABLED"),
            "{e}"
        );
        let e = load_str("[topologies]\nfolder = \"x\"\n", &[])
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("topologies.folder"), "{e}");
    }

    #[test]
    fn env_values_for_string_fields_stay_strings() {
        let c = load_str(
            "",
            &[
                ("TALLY_CLICKHOUSE__PASSWORD", "12345"),
                ("TALLY_CLICKHOUSE__USER", "true"),
                ("TALLY_PIPELINE__NAME", "2024"),
                ("TALLY_KAFKA__GROUP_ID", "1.5"),
                ("TALLY_CLICKHOUSE__DATABASE", "[x]"),
                // Numbers and booleans for numeric fields keep working next to them.
                ("TALLY_CLICKHOUSE__BATCH_ROWS", "500"),
                ("TALLY_PIPELINE__WORKERS", "4"),
            ],
        );
        let e = c.expect_err("`[x]` is no database name").to_string();
        assert!(
            e.contains("clickhouse.database") && e.contains("TALLY_CLICKHOUSE__DATABASE"),
            "{e}"
        );
        let c = load_str(
            "[clickhouse]\nuser = \"u\"\n",
            &[
                ("TALLY_CLICKHOUSE__PASSWORD", "12345"),
                ("TALLY_CLICKHOUSE__USER", "true"),
                ("TALLY_PIPELINE__NAME", "2024"),
                ("TALLY_KAFKA__GROUP_ID", "1.5"),
                ("TALLY_POSTGRES__URL", "postgres://u:\"x\"@h/db"),
                ("TALLY_CLICKHOUSE__BATCH_ROWS", "500"),
                ("TALLY_PIPELINE__WORKERS", "4"),
                ("TALLY_PIPELINE__ON_RETENTION_GAP", "skip"),
            ],
        )
        .expect("valid");
        assert_eq!(c.clickhouse.password, "12345");
        assert_eq!(c.clickhouse.user, "true");
        assert_eq!(c.pipeline.name, "2024");
        assert_eq!(c.kafka.group_id, "1.5");
        assert_eq!(c.postgres.url, "postgres://u:\"x\"@h/db");
        assert_eq!(c.clickhouse.batch_rows, 500);
        assert_eq!(c.pipeline.workers, 4);
        assert_eq!(
            c.pipeline.on_retention_gap,
            tally_pipeline::RetentionGapPolicy::Skip
        );
    }

    #[test]
    fn env_errors_name_the_key_and_the_variable() {
        let e = load_str("", &[("TALLY_PIPELINE__WORKERS", "two")])
            .expect_err("bad type")
            .to_string();
        assert!(
            e.contains("pipeline.workers") && e.contains("TALLY_PIPELINE__WORKERS"),
            "{e}"
        );
        let e = load_str("", &[("TALLY_CLICKHOUSE__PASSWD", "12345")])
            .expect_err("unknown key")
            .to_string();
        assert!(
            e.contains("clickhouse.passwd") && e.contains("TALLY_CLICKHOUSE__PASSWD"),
            "{e}"
        );
        let e = load_str("", &[("TALLY_CLICKHOUSE__BATCH_ROWS", "true")])
            .expect_err("bad type")
            .to_string();
        assert!(
            e.contains("clickhouse.batch_rows") && e.contains("TALLY_CLICKHOUSE__BATCH_ROWS"),
            "{e}"
        );
        let e = load_str("", &[("TALLY_API__LISTEN", "not-an-address")])
            .expect_err("bad value")
            .to_string();
        assert!(
            e.contains("api.listen") && e.contains("TALLY_API__LISTEN"),
            "{e}"
        );
        // A key from the file is named too, without a variable.
        let e = load_str(
            "[clickhouse]\nbatch_rows = \"many\"\n",
            &[("TALLY_CLICKHOUSE__PASSWORD", "x")],
        )
        .expect_err("bad type")
        .to_string();
        assert!(e.contains("clickhouse.batch_rows"), "{e}");
        assert!(!e.contains("TALLY_"), "{e}");
    }
}
