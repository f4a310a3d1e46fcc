//! The `retention` job: on servers without TTL, drops monthly partitions of `events` and of the
//! `user_activity` aggregate past `clickhouse.retention_days` (the same months of both); deletes job runs older than 14 days and settled ledger rows
//! older than the retention; then queues itself again (job key `retention`).

use graphile_worker::{IntoTaskHandlerResult, TaskHandler, WorkerContext};
use serde::{Deserialize, Serialize};

use crate::run::tracked;

/// Drops expired partitions (a no-op where ClickHouse applies the table's TTL itself).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Retention {}

impl TaskHandler for Retention {
    const IDENTIFIER: &'static str = "retention";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        tracked(Self::IDENTIFIER, ctx, |job, pool| async move {
            let s = &job.settings;
            let client = &job.clickhouse.0;
            let mut summaries = Vec::new();
            for table in tally_sinks::clickhouse::RETAINED_TABLES {
                let show = format!("SHOW CREATE TABLE {}.{table}", s.clickhouse.database);
                let ddl: String = client
                    .query(&show)
                    .fetch_one()
                    .await
                    .map_err(|e| format!("reading the {table} table: {e}"))?;
                if ddl.contains("TTL") {
                    summaries.push(format!("{table}: the server applies the table's TTL"));
                    continue;
                }
                let now = chrono::Utc::now().timestamp();
                let dropped = tally_sinks::clickhouse::drop_expired_partitions_of(
                    client,
                    &s.clickhouse,
                    table,
                    now,
                )
                .await
                .map_err(|e| e.to_string())?;
                if !dropped.is_empty() {
                    tracing::info!(table, ?dropped, "dropped expired partitions");
                }
                summaries.push(format!(
                    "{table}: dropped {} partitions {dropped:?}",
                    dropped.len()
                ));
            }
            let summary = summaries.join("; ");
            let pruned = tally_sinks::postgres::jobs::prune(
                &pool,
                &s.pipeline,
                14,
                s.clickhouse.retention_days,
            )
            .await
            .map_err(|e| e.to_string())?;
            let summary = format!("{summary}; pruned {pruned} old job runs and ledger rows");
            let every = i64::try_from(s.retention_check_secs).unwrap_or(3600);
            let next = chrono::Utc::now() + chrono::Duration::seconds(every);
            crate::enqueue(
                &pool,
                &s.pipeline,
                Retention {},
                Some("retention"),
                Some(next),
            )
            .await
            .map_err(|e| format!("scheduling the next retention run: {e}"))?;
            Ok(summary)
        })
        .await
    }
}
