//! `tally.toml` plus `TALLY_<SECTION>__<KEY>` environment overrides, validated before anything
//! starts. Every section's struct lives in the crate that uses it; this file only assembles them.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use serde::de::DeserializeOwned;
use tally_api::ApiConfig;
use tally_pipeline::kafka::KafkaConfig;
use tally_pipeline::PipelineConfig;
use tally_sinks::clickhouse::ClickHouseConfig;
use tally_sinks::postgres::PostgresConfig;

/// The whole configuration.
#[derive(Clone, Debug)]
pub struct TallyConfig {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub postgres: PostgresConfig,
    pub pipeline: PipelineConfig,
    pub api: ApiConfig,
}

const SECTIONS: [&str; 5] = ["kafka", "clickhouse", "postgres", "pipeline", "api"];

/// Loads `path` (or `./tally.toml` when it exists, or defaults), applies environment overrides
/// and validates every section.
pub fn load(
    path: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<TallyConfig> {
    let mut table = match path {
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
        let value = parse_env_value(&raw);
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = entry else {
            bail!("config: `{section}` must be a table")
        };
        t.insert(key, value);
    }
    let config = TallyConfig {
        kafka: section(&table, "kafka")?,
        clickhouse: section(&table, "clickhouse")?,
        postgres: section(&table, "postgres")?,
        pipeline: section(&table, "pipeline")?,
        api: section(&table, "api")?,
    };
    config.kafka.validate()?;
    config.clickhouse.validate()?;
    config.postgres.validate()?;
    config.pipeline.validate()?;
    config
        .api
        .validate()
        .map_err(|(field, reason)| anyhow!("config: `{field}`: {reason}"))?;
    Ok(config)
}

fn read(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow!("config: {}: {e}", path.display()))
}

/// An override is a TOML value when it parses as one (numbers, booleans), else a string.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn section<T: DeserializeOwned + Default>(table: &toml::Table, name: &str) -> anyhow::Result<T> {
    match table.get(name) {
        None => Ok(T::default()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| anyhow!("config: [{name}]: {}", e.message())),
    }
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
        assert!(e.contains("brokerz") && e.contains("[kafka]"), "{e}");
        let e = load_str("[pipeline]\nworkers = \"two\"\n", &[])
            .expect_err("bad type")
            .to_string();
        assert!(e.contains("[pipeline]"), "{e}");
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
}
