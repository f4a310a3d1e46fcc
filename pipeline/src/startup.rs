//! What `run` checks before any worker starts, so that a missing service or schema is named in
//! one clear error instead of surfacing as the first failed write: PostgreSQL reachable and
//! migrated, ClickHouse reachable and migrated, both Kafka topics present, the pipeline's lease
//! free, and no unread messages lost to Kafka retention.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tally_sinks::postgres::{self, Lease, Progress};
use tally_sinks::SinkError;

use crate::kafka::client_config;
use crate::metrics::Metrics;
use crate::run::PipelineSettings;
use crate::{PipelineError, RetentionGapPolicy};

/// What the checks found and hold.
pub(crate) struct Started {
    pub pool: sqlx::PgPool,
    pub progress: Progress,
    pub partitions: Vec<i32>,
    /// Held until the pipeline stops; its epoch fences progress saves.
    pub lease: Lease,
}

/// How long one broker request at startup may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check in order; the first failure is returned.
///
/// Errors: [`PipelineError::Unavailable`] (a service did not answer),
/// [`PipelineError::NotMigrated`] (run `tally migrate`), [`PipelineError::Locked`] (another
/// process runs this pipeline), [`PipelineError::RetentionGap`] (unread messages deleted).
pub(crate) async fn check(s: &PipelineSettings) -> Result<Started, PipelineError> {
    let pg_address = postgres::redact(&s.postgres.url);
    let pool = check_postgres(&s.postgres).await?;
    let pending = tally_sinks::clickhouse::pending_migrations(&s.clickhouse)
        .await
        .map_err(|e| unavailable("clickhouse", &s.clickhouse.url, e))?;
    not_migrated(
        &format!("ClickHouse schema of database `{}`", s.clickhouse.database),
        &pending,
    )?;
    let kafka = s.kafka.clone();
    let partitions = tokio::task::spawn_blocking(move || topic_partitions(&kafka))
        .await
        .map_err(|e| PipelineError::Dataflow(e.to_string()))??;
    let holder = format!(
        "{} pid {}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned()),
        std::process::id()
    );
    let lease = postgres::acquire_lease(&pool, &s.pipeline.name, &holder)
        .await
        .map_err(|e| match e {
            SinkError::Fenced { pipeline, reason } => PipelineError::Locked { pipeline, reason },
            e => unavailable("postgres", &pg_address, e),
        })?;
    let mut progress = postgres::load_progress(&pool, &s.pipeline.name).await?;
    let (kafka, policy) = (s.kafka.clone(), s.pipeline.on_retention_gap);
    progress = tokio::task::spawn_blocking(move || retention_gaps(&kafka, progress, policy))
        .await
        .map_err(|e| PipelineError::Dataflow(e.to_string()))??;
    Ok(Started {
        pool,
        progress,
        partitions,
        lease,
    })
}

/// Connects to PostgreSQL and checks its schema is migrated.
async fn check_postgres(
    config: &tally_sinks::postgres::PostgresConfig,
) -> Result<sqlx::PgPool, PipelineError> {
    let pg_address = postgres::redact(&config.url);
    let pool = postgres::connect(config)
        .await
        .map_err(|e| unavailable("postgres", &pg_address, e))?;
    let pending = postgres::pending_migrations(&pool)
        .await
        .map_err(|e| unavailable("postgres", &pg_address, e))?;
    not_migrated("PostgreSQL schema", &pending)?;
    Ok(pool)
}

/// The topologies with their tables resolved to the versions `tally migrate` created
/// (`tally_sinks::clickhouse::topology_schema::current_tables`), checked like the rest of the
/// startup: a wrong password is a configuration error naming `clickhouse.user/clickhouse.password`
/// (exit 78), a missing schema or a topology changed since `tally migrate` says to run it (exit
/// 78), an unreachable server is unavailable (exit 69).
/// PostgreSQL is checked first, as `tally run` does.
pub async fn resolve_topologies(
    postgres: &tally_sinks::postgres::PostgresConfig,
    clickhouse: &tally_sinks::clickhouse::ClickHouseConfig,
    topologies: &[tally_core::Topology],
) -> Result<Vec<tally_core::Topology>, PipelineError> {
    check_postgres(postgres).await?.close().await;
    let pending = tally_sinks::clickhouse::pending_migrations(clickhouse)
        .await
        .map_err(|e| unavailable("clickhouse", &clickhouse.url, e))?;
    not_migrated(
        &format!("ClickHouse schema of database `{}`", clickhouse.database),
        &pending,
    )?;
    tally_sinks::clickhouse::topology_schema::current_tables(clickhouse, topologies)
        .await
        .map_err(|e| unavailable("clickhouse", &clickhouse.url, e))
}

fn unavailable(service: &'static str, address: &str, e: SinkError) -> PipelineError {
    if e.is_missing_schema() {
        return PipelineError::NotMigrated {
            what: format!("{service} schema ({e})"),
        };
    }
    if e.is_auth_error() {
        let field = match service {
            "clickhouse" => "clickhouse.user/clickhouse.password",
            _ => "postgres.url",
        };
        return PipelineError::Config {
            field,
            reason: format!("{service} at {address} refused the credentials or database: {e}"),
        };
    }
    match e {
        e @ SinkError::Config { .. } => PipelineError::Sink(e),
        e => PipelineError::Unavailable {
            service,
            address: address.to_owned(),
            reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        },
    }
}

fn not_migrated(what: &str, pending: &[&str]) -> Result<(), PipelineError> {
    if pending.is_empty() {
        return Ok(());
    }
    Err(PipelineError::NotMigrated {
        what: format!("{what} (migrations not applied: {})", pending.join(", ")),
    })
}

fn kafka_unavailable(config: &crate::kafka::KafkaConfig, e: KafkaError) -> PipelineError {
    PipelineError::Unavailable {
        service: "kafka",
        address: config.brokers.clone(),
        reason: e.to_string(),
    }
}

/// The partitions of the events topic; both topics must exist.
fn topic_partitions(config: &crate::kafka::KafkaConfig) -> Result<Vec<i32>, PipelineError> {
    let consumer: BaseConsumer = client_config(config)
        .create()
        .map_err(|e| PipelineError::kafka("creating a metadata client", e))?;
    let metadata = consumer
        .fetch_metadata(None, KAFKA_TIMEOUT)
        .map_err(|e| kafka_unavailable(config, e))?;
    let partitions = |name: &str| -> Vec<i32> {
        metadata
            .topics()
            .iter()
            .filter(|t| t.name() == name && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect()
    };
    for topic in [&config.topic, &config.dlq_topic] {
        if partitions(topic).is_empty() {
            return Err(PipelineError::NotMigrated {
                what: format!("Kafka topic `{topic}`"),
            });
        }
    }
    Ok(partitions(&config.topic))
}

/// Compares each saved offset with the earliest offset the broker still holds. A saved offset
/// below it means Kafka retention deleted messages the pipeline never read: an error, or with
/// `skip` a logged and counted jump to the earliest offset.
fn retention_gaps(
    config: &crate::kafka::KafkaConfig,
    mut progress: Progress,
    policy: RetentionGapPolicy,
) -> Result<Progress, PipelineError> {
    let consumer: BaseConsumer = client_config(config)
        .create()
        .map_err(|e| PipelineError::kafka("creating a metadata client", e))?;
    let mut gaps: Vec<(i32, i64, i64)> = Vec::new();
    for ((topic, partition), saved) in progress.offsets.iter_mut() {
        if *topic != config.topic {
            continue;
        }
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, KAFKA_TIMEOUT)
            .map_err(|e| kafka_unavailable(config, e))?;
        if saved.next_offset > high {
            tracing::warn!(
                partition,
                saved = saved.next_offset,
                high,
                "saved offset is past the end of the partition (topic recreated?)"
            );
        }
        if saved.next_offset >= low {
            continue;
        }
        gaps.push((*partition, saved.next_offset, low));
        if policy == RetentionGapPolicy::Skip {
            tracing::error!(
                partition,
                saved = saved.next_offset,
                earliest = low,
                lost = low - saved.next_offset,
                "skipping messages deleted by Kafka retention before they were read (pipeline.on_retention_gap = skip)"
            );
            Metrics::get()
                .retention_gap
                .with_label_values(&[&partition.to_string()])
                .inc_by(u64::try_from(low - saved.next_offset).unwrap_or(0));
            saved.next_offset = low;
            saved.read_until = saved.read_until.max(low);
            saved.dlq_until = saved.dlq_until.max(low);
        }
    }
    gaps.sort_unstable();
    if let (RetentionGapPolicy::Fail, Some(&(partition, saved, earliest))) = (policy, gaps.first())
    {
        let others: Vec<String> = gaps[1..]
            .iter()
            .map(|(p, s, e)| format!("{p} ({} messages)", e - s))
            .collect();
        return Err(PipelineError::RetentionGap {
            partition,
            saved,
            earliest,
            lost: earliest - saved,
            others: if others.is_empty() {
                String::new()
            } else {
                format!(" (also partitions {})", others.join(", "))
            },
        });
    }
    Ok(progress)
}
