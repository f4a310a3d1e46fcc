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
