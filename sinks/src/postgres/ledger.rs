//! The late-event ledger (`late_windows`): which closed windows received late events, and
//! whether their correction is still pending.
//!
//! One row per (pipeline, topology, rollup table kind, window name, window start): pipelines sharing a PostgreSQL
//! database (each writing its own ClickHouse database) keep separate ledgers and jobs. The pipeline's sink upserts a row for every
//! window a late event falls in ([`mark_late`]) *after* ClickHouse acknowledged the batch that
//! holds the event's raw row, and before the batch counts as acknowledged, so no Kafka offset is
//! committed past a late event whose window is not marked. The same transaction queues a
//! `correct` job (one waiting at a time per pipeline: graphile_worker job key
//! `correct:<pipeline>`, flag `pipeline:<pipeline>` so that only that pipeline's workers run it),
//! so many late events cause one job, which corrects every pending window with range queries.
//!
//! `generation` grows with every mark: a correction clears a row only if no mark arrived while it
//! ran ([`settle`]); otherwise the row stays pending and the newer mark's job corrects it again.

use sqlx::PgPool;
use tally_core::RowTable;

use crate::SinkError;

/// The topology `/reports` and the jobs assume when none is named.
pub const DEFAULT_TOPOLOGY: &str = "product_analytics";

/// How the ledger's `table_kind` column names a rollup table kind.
pub fn table_kind(table: RowTable) -> &'static str {
    match table {
        RowTable::Windows => "windows",
        RowTable::Sessions => "sessions",
    }
}

/// The inverse of [`table_kind`] (unknown text: `None`).
pub fn parse_table_kind(text: &str) -> Option<RowTable> {
    match text {
        "windows" => Some(RowTable::Windows),
        "sessions" => Some(RowTable::Sessions),
        _ => None,
    }
}

/// Late events received by one window in one sink batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateMark {
    /// Which of the topology's rollup tables the window is in.
    pub table: RowTable,
    /// The window's name as stored and queried (`1m`, `1h`, `1d`).
    pub window: String,
    /// Window start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Late events counted (events read again after a restart are not counted, but still mark
    /// the window).
    pub late_events: i64,
}

/// A window waiting for its correction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWindow {
    /// Which of the topology's rollup tables the window is in (unknown kinds read as
    /// `Windows`; see [`parse_table_kind`]).
    pub table: RowTable,
    /// Window name (`1m`, `1h`, `1d`).
    pub window: String,
    /// Window start, ms since the epoch.
    pub start_ms: i64,
    /// The mark count this correction answers; see [`settle`].
    pub generation: i64,
    /// When the window was first marked since its last correction, ms since the epoch.
    pub pending_since_ms: i64,
}

/// Records `marks` (merged with what the ledger holds) and queues one `correct` job, in one
/// transaction. Errors: [`SinkError::Postgres`] (retryable when PostgreSQL is unavailable;
/// a missing table or job schema means `tally migrate` was not run).
pub async fn mark_late(
    pool: &PgPool,
    pipeline: &str,
    topology: &str,
    marks: &[LateMark],
) -> Result<(), SinkError> {
    if marks.is_empty() {
        return Ok(());
    }
    let ctx = |what: &'static str| move |e| SinkError::postgres(what, e);
    let windows: Vec<&str> = marks.iter().map(|m| m.window.as_str()).collect();
    let tables: Vec<&str> = marks.iter().map(|m| table_kind(m.table)).collect();
    let starts: Vec<i64> = marks.iter().map(|m| m.start_ms).collect();
    let counts: Vec<i64> = marks.iter().map(|m| m.late_events).collect();
    let mut tx = pool
        .begin()
        .await
        .map_err(ctx("starting a ledger update"))?;
    sqlx::query(
        "INSERT INTO late_windows AS l
             (pipeline, topology, table_kind, window_name, window_start_ms, late_events, pending_since)
         SELECT $5, $1, k, w, s, n, now()
         FROM UNNEST($6::text[], $2::text[], $3::bigint[], $4::bigint[]) AS m(k, w, s, n)
         ON CONFLICT (pipeline, topology, table_kind, window_name, window_start_ms) DO UPDATE
         SET late_events = l.late_events + EXCLUDED.late_events,
             last_late_at = now(),
             pending_since = COALESCE(l.pending_since, now()),
             generation = l.generation + 1",
    )
    .bind(topology)
    .bind(&windows)
    .bind(&starts)
    .bind(&counts)
    .bind(pipeline)
    .bind(&tables)
    .execute(&mut *tx)
    .await
    .map_err(ctx("marking late windows"))?;
    queue_correction(&mut tx, pipeline, None).await?;
    tx.commit().await.map_err(ctx("committing late windows"))
}

/// The graphile_worker flag that routes a job to `pipeline`'s workers.
pub fn pipeline_flag(pipeline: &str) -> String {
    format!("pipeline:{pipeline}")
}

/// Queues `pipeline`'s `correct` job (job key `correct:<pipeline>`: at most one waiting; if one
/// is running, a new one is queued, so marks that arrive during a correction are corrected after
/// it; named queue `correct:<pipeline>`: they run one at a time, never two over the same
/// windows). `delay_ms` postpones it (used to retry windows that cannot be corrected yet; an
/// earlier waiting job keeps its time, `preserve_run_at`); without a delay the job runs now,
/// also when a waiting one was scheduled later (`replace`: a new late event is corrected at once
/// even while session windows wait a day for theirs).
pub async fn queue_correction(
    conn: &mut sqlx::PgConnection,
    pipeline: &str,
    delay_ms: Option<u64>,
) -> Result<(), SinkError> {
    let delay = i64::try_from(delay_ms.unwrap_or(0)).unwrap_or(i64::MAX);
    sqlx::query(
        "SELECT graphile_worker.add_job('correct', '{}'::json,
             run_at := now() + make_interval(secs => $1::double precision / 1000),
             queue_name := $2, job_key := $2, flags := ARRAY[$3],
             job_key_mode := $4)",
    )
    .bind(delay)
    .bind(format!("correct:{pipeline}"))
    .bind(pipeline_flag(pipeline))
    .bind(if delay_ms.is_some() {
        "preserve_run_at"
    } else {
        "replace"
    })
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(|e| SinkError::postgres("queueing a correction", e))
}

/// Pending windows of `topology`, oldest start first, at most `limit`.
pub async fn pending(
    pool: &PgPool,
    pipeline: &str,
    topology: &str,
    limit: i64,
) -> Result<Vec<PendingWindow>, SinkError> {
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT table_kind, window_name, window_start_ms, generation,
                (extract(epoch from pending_since) * 1000)::bigint
         FROM late_windows
         WHERE topology = $1 AND pending_since IS NOT NULL AND pipeline = $3
         ORDER BY table_kind, window_name, window_start_ms LIMIT $2",
    )
    .bind(topology)
    .bind(limit)
    .bind(pipeline)
    .fetch_all(pool)
    .await
    .map_err(|e| SinkError::postgres("reading pending corrections", e))?;
    Ok(rows
        .into_iter()
        .map(
            |(table, window, start_ms, generation, pending_since_ms)| PendingWindow {
                table: parse_table_kind(&table).unwrap_or(RowTable::Windows),
                window,
                start_ms,
                generation,
                pending_since_ms,
            },
        )
        .collect())
}

/// Marks `windows` corrected, each only if its generation is unchanged (no newer late event
/// arrived during the correction). Returns how many were cleared.
pub async fn settle(
    pool: &PgPool,
    pipeline: &str,
    topology: &str,
    windows: &[PendingWindow],
) -> Result<u64, SinkError> {
    let names: Vec<&str> = windows.iter().map(|w| w.window.as_str()).collect();
    let tables: Vec<&str> = windows.iter().map(|w| table_kind(w.table)).collect();
    let starts: Vec<i64> = windows.iter().map(|w| w.start_ms).collect();
    let generations: Vec<i64> = windows.iter().map(|w| w.generation).collect();
    let done = sqlx::query(
        "UPDATE late_windows AS l
         SET pending_since = NULL, corrections = l.corrections + 1, last_corrected_at = now()
         FROM UNNEST($6::text[], $2::text[], $3::bigint[], $4::bigint[]) AS d(k, w, s, g)
         WHERE l.topology = $1 AND l.table_kind = d.k AND l.window_name = d.w
           AND l.window_start_ms = d.s AND l.generation = d.g AND l.pipeline = $5",
    )
    .bind(topology)
    .bind(&names)
    .bind(&starts)
    .bind(&generations)
    .bind(pipeline)
    .bind(&tables)
    .execute(pool)
    .await
    .map_err(|e| SinkError::postgres("settling corrections", e))?;
    Ok(done.rows_affected())
}

/// Windows of `table` named `window` starting in `[from_ms, to_ms)` whose correction is
/// pending: what `/reports` answers as `pending_corrections`.
#[allow(clippy::too_many_arguments)] // one per column of the ledger's key
pub async fn pending_in_range(
    pool: &PgPool,
    pipeline: &str,
    topology: &str,
    table: RowTable,
    window: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<i64, SinkError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM late_windows
         WHERE topology = $1 AND window_name = $2 AND pending_since IS NOT NULL
           AND window_start_ms >= $3 AND window_start_ms < $4 AND pipeline = $5
           AND table_kind = $6",
    )
    .bind(topology)
    .bind(window)
    .bind(from_ms)
    .bind(to_ms)
    .bind(pipeline)
    .bind(table_kind(table))
    .fetch_one(pool)
    .await
    .map_err(|e| SinkError::postgres("counting pending corrections", e))
}

/// Totals for metrics and `tally jobs`: (pending windows, seconds since the oldest pending mark
/// or 0), for `pipeline`.
pub async fn backlog(pool: &PgPool, pipeline: &str) -> Result<(i64, f64), SinkError> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(extract(epoch from now() - min(pending_since)), 0)::float8
         FROM late_windows WHERE pending_since IS NOT NULL AND pipeline = $1",
    )
    .bind(pipeline)
    .fetch_one(pool)
    .await
    .map_err(|e| SinkError::postgres("reading the correction backlog", e))
}

/// One window's ledger entry, as `tally jobs --late` shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LedgerEntry {
    /// Topology.
    pub topology: String,
    /// `windows` or `sessions`.
    pub table_kind: String,
    /// Window name.
    pub window_name: String,
    /// Window start, ms since the epoch.
    pub window_start_ms: i64,
    /// Late events received (at least once: a crash before a progress save may count again).
    pub late_events: i64,
    /// Corrections done.
    pub corrections: i32,
    /// Whether a correction is pending.
    pub pending: bool,
    /// Last late event, RFC 3339.
    pub last_late_at: chrono::DateTime<chrono::Utc>,
    /// Last correction.
    pub last_corrected_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `pipeline`'s most recently marked windows, newest first.
pub async fn recent(
    pool: &PgPool,
    pipeline: &str,
    limit: i64,
) -> Result<Vec<LedgerEntry>, SinkError> {
    sqlx::query_as(
        "SELECT topology, table_kind, window_name, window_start_ms, late_events, corrections,
                pending_since IS NOT NULL AS pending, last_late_at, last_corrected_at
         FROM late_windows WHERE pipeline = $2 ORDER BY last_late_at DESC LIMIT $1",
    )
    .bind(limit)
    .bind(pipeline)
    .fetch_all(pool)
    .await
    .map_err(|e| SinkError::postgres("reading the late-event ledger", e))
}
