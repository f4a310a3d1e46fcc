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
    Ok(MIGRATIONS
        .iter()
        .filter(|(id, _, _)| !done.contains(id))
        .map(|&(_, name, _)| name)
        .collect())
}
