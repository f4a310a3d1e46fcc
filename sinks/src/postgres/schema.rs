//! PostgreSQL schema, as versioned migrations recorded in `tally_migrations`.

use sqlx::PgPool;

use crate::SinkError;

const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "pipeline progress",
        "CREATE TABLE IF NOT EXISTS pipeline_offsets (
                pipeline    TEXT        NOT NULL,
                topic       TEXT        NOT NULL,
                partition   INTEGER     NOT NULL,
                next_offset BIGINT      NOT NULL,
                updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (pipeline, topic, partition)
            );
            CREATE TABLE IF NOT EXISTS pipeline_frontiers (
                pipeline          TEXT        PRIMARY KEY,
                acked_frontier_ms BIGINT      NOT NULL,
                updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
            );",
    ),
    (
        2,
        "offsets read before a stop",
        // Messages below `read_until` were read before the pipeline stopped; reading them again
        // after a restart is replay, which the pipeline tells apart from new late data.
        "ALTER TABLE pipeline_offsets ADD COLUMN IF NOT EXISTS read_until BIGINT NOT NULL DEFAULT 0",
    ),
    (
        3,
        "pipeline leases",
        // One row per pipeline name: `epoch` grows by one each time a process takes the
        // pipeline over; progress saves check it, so an older process cannot write after a
        // newer one started (fencing, as Kafka does with producer epochs).
        "CREATE TABLE IF NOT EXISTS pipeline_leases (
                pipeline    TEXT        PRIMARY KEY,
                epoch       BIGINT      NOT NULL,
                holder      TEXT        NOT NULL,
                acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
    ),
    (
        4,
        "dead letters acknowledged before a stop",
        // Invalid messages below `dlq_until` were dead-lettered (and acknowledged) before the
        // pipeline stopped; a replay skips them instead of dead-lettering them again.
        "ALTER TABLE pipeline_offsets ADD COLUMN IF NOT EXISTS dlq_until BIGINT NOT NULL DEFAULT 0",
    ),
    (
        5,
        "late-event ledger, job runs and rebuilds",
        // `late_windows`: one row per closed window of a pipeline that received late events
        // (see `postgres::ledger`). `pending_since` is set while a correction is owed.
        // `job_runs`: every run of a queued job (graphile_worker deletes finished jobs).
        // `rebuilds`: progress of `tally rebuild`.
        "CREATE TABLE IF NOT EXISTS late_windows (
                pipeline          TEXT        NOT NULL,
                topology          TEXT        NOT NULL,
                window_name       TEXT        NOT NULL,
                window_start_ms   BIGINT      NOT NULL,
                late_events       BIGINT      NOT NULL DEFAULT 0,
                first_late_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
                last_late_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                pending_since     TIMESTAMPTZ,
                generation        BIGINT      NOT NULL DEFAULT 0,
                corrections       INTEGER     NOT NULL DEFAULT 0,
                last_corrected_at TIMESTAMPTZ,
                PRIMARY KEY (pipeline, topology, window_name, window_start_ms)
            );
            CREATE INDEX IF NOT EXISTS late_windows_pending
                ON late_windows (pipeline, topology, window_name, window_start_ms)
                WHERE pending_since IS NOT NULL;
            CREATE TABLE IF NOT EXISTS job_runs (
                id           BIGSERIAL   PRIMARY KEY,
                pipeline     TEXT        NOT NULL,
                job_id       BIGINT      NOT NULL,
                kind         TEXT        NOT NULL,
                payload      JSONB       NOT NULL,
                attempt      INTEGER     NOT NULL,
                max_attempts INTEGER     NOT NULL,
                worker       TEXT        NOT NULL,
                state        TEXT        NOT NULL DEFAULT 'running',
                error        TEXT,
                summary      TEXT,
                started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
                finished_at  TIMESTAMPTZ
            );
            CREATE TABLE IF NOT EXISTS rebuilds (
                id            BIGSERIAL   PRIMARY KEY,
                pipeline      TEXT        NOT NULL,
                from_ms       BIGINT      NOT NULL,
                to_ms         BIGINT      NOT NULL,
                done_until_ms BIGINT      NOT NULL,
                rows_written  BIGINT      NOT NULL DEFAULT 0,
                state         TEXT        NOT NULL DEFAULT 'queued',
                error         TEXT,
                created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
            );",
    ),
    (
        6,
        "late_windows per rollup table",
        // A topology has two rollup tables (window metrics, session metrics) whose windows
        // close at different times: the ledger keys its rows by table too. Existing rows are
        // window-metric rows.
        "ALTER TABLE late_windows ADD COLUMN IF NOT EXISTS table_kind TEXT NOT NULL DEFAULT 'windows';
         ALTER TABLE late_windows DROP CONSTRAINT IF EXISTS late_windows_pkey;
         ALTER TABLE late_windows
             ADD PRIMARY KEY (pipeline, topology, table_kind, window_name, window_start_ms);
         DROP INDEX IF EXISTS late_windows_pending;
         CREATE INDEX IF NOT EXISTS late_windows_pending
             ON late_windows (pipeline, topology, table_kind, window_name, window_start_ms)
             WHERE pending_since IS NOT NULL;",
    ),
    (
        7,
        "api keys, saved resources, audit and request logs",
        // `api_keys`: SHA-256 of each key (never the key), its role and lifecycle.
        // `resources`: saved reports and dashboards (`kind` 'report' | 'dashboard').
        // `audit_log`: admin actions, written in the transaction of the action.
        // `request_log`: every API request, range-partitioned by month on `at` (the writer
        // creates partitions ahead and drops the expired ones); the default partition catches
        // rows whose month has no partition yet, so an insert never fails for lack of one.
        "CREATE TABLE IF NOT EXISTS api_keys (
                id           BIGSERIAL   PRIMARY KEY,
                name         TEXT        NOT NULL UNIQUE,
                role         TEXT        NOT NULL CHECK (role IN ('ingest', 'read', 'admin')),
                key_hash     BYTEA       NOT NULL UNIQUE,
                key_prefix   TEXT        NOT NULL,
                created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
                last_used_at TIMESTAMPTZ,
                revoked_at   TIMESTAMPTZ
            );
            CREATE TABLE IF NOT EXISTS resources (
                id           BIGSERIAL   PRIMARY KEY,
                kind         TEXT        NOT NULL CHECK (kind IN ('report', 'dashboard')),
                name         TEXT        NOT NULL,
                description  TEXT        NOT NULL DEFAULT '',
                definition   JSONB       NOT NULL,
                owner_key_id BIGINT      REFERENCES api_keys (id),
                created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            CREATE TABLE IF NOT EXISTS audit_log (
                id         BIGSERIAL   PRIMARY KEY,
                at         TIMESTAMPTZ NOT NULL DEFAULT now(),
                key_id     BIGINT,
                actor      TEXT        NOT NULL,
                action     TEXT        NOT NULL,
                target     TEXT        NOT NULL,
                details    JSONB       NOT NULL DEFAULT '{}'::jsonb
            );
            CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at DESC, id DESC);
            CREATE TABLE IF NOT EXISTS request_log (
                at             TIMESTAMPTZ      NOT NULL,
                method         TEXT             NOT NULL,
                route          TEXT             NOT NULL,
                status         SMALLINT         NOT NULL,
                latency_ms     DOUBLE PRECISION NOT NULL,
                key_id         BIGINT,
                request_bytes  BIGINT           NOT NULL,
                response_bytes BIGINT           NOT NULL,
                client_ip      TEXT,
                user_agent     TEXT
            ) PARTITION BY RANGE (at);
            CREATE TABLE IF NOT EXISTS request_log_default PARTITION OF request_log DEFAULT;
            CREATE INDEX IF NOT EXISTS request_log_at ON request_log (at DESC);",
    ),
    (
        8,
        "request_log ids",
        // A unique, increasing id per logged request: the paging cursor of
        // `GET /admin/requests` (times can repeat within a microsecond).
        "ALTER TABLE request_log ADD COLUMN IF NOT EXISTS id BIGSERIAL;
         CREATE INDEX IF NOT EXISTS request_log_id ON request_log (id DESC);",
    ),
];

/// Applies every migration not yet recorded, each in its own transaction. Idempotent.
pub async fn migrate(pool: &PgPool) -> Result<Vec<&'static str>, SinkError> {
    let ctx = |what: &'static str| move |e| SinkError::postgres(what, e);
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tally_migrations (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(pool)
    .await
    .map_err(ctx("creating tally_migrations"))?;
    let done: Vec<i32> = sqlx::query_scalar("SELECT id FROM tally_migrations")
        .fetch_all(pool)
        .await
        .map_err(ctx("reading applied migrations"))?;
    let mut applied = Vec::new();
    for &(id, name, sql) in MIGRATIONS.iter().filter(|(id, _, _)| !done.contains(id)) {
        let mut tx = pool.begin().await.map_err(ctx("starting a migration"))?;
        // Two `migrate` calls at once (two processes starting together) take turns; the second
        // finds the migration recorded and skips it.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tally.migrations', 0))")
            .execute(&mut *tx)
            .await
            .map_err(ctx("locking the migrations"))?;
        let recorded: Option<i32> =
            sqlx::query_scalar("SELECT id FROM tally_migrations WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(ctx("reading applied migrations"))?;
        if recorded.is_some() {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(ctx("applying a migration"))?;
        sqlx::query("INSERT INTO tally_migrations (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(ctx("recording a migration"))?;
        tx.commit().await.map_err(ctx("committing a migration"))?;
        applied.push(name);
    }
    Ok(applied)
}

/// The migrations this build knows that the database has not applied (all of them when
/// `tally_migrations` does not exist). Empty means the schema is current.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<&'static str>, SinkError> {
    let done: Vec<i32> = match sqlx::query_scalar("SELECT id FROM tally_migrations")
        .fetch_all(pool)
        .await
    {
        Ok(done) => done,
        Err(e) => {
            let e = SinkError::postgres("reading applied migrations", e);
            if e.is_missing_schema() {
                Vec::new()
            } else {
                return Err(e);
            }
        }
    };
    let mut pending: Vec<&'static str> = MIGRATIONS
        .iter()
        .filter(|(id, _, _)| !done.contains(id))
        .map(|&(_, name, _)| name)
        .collect();
    // The job queue's own schema (graphile_worker), which the sink queues corrections in.
    let queue: bool =
        sqlx::query_scalar("SELECT to_regprocedure('graphile_worker.add_job(text, json, text, timestamptz, integer, text, integer, text[], text)') IS NOT NULL")
            .fetch_one(pool)
            .await
            .map_err(|e| SinkError::postgres("looking for the job queue schema", e))?;
    if !queue {
        pending.push("job queue schema (graphile_worker)");
    }
    Ok(pending)
}
