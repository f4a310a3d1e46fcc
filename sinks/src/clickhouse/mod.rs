//! ClickHouse: connection, feature detection, schema migrations, row types, the batch writer and
//! the read queries shared by the API and the jobs ([`read`]).
//!
//! Everything here runs on ClickHouse 18.16 (what Debian ships) and on current releases. What
//! differs is detected by asking the server, never assumed from a version number.

mod client;
mod config;
pub mod read;
pub mod recompute;
pub mod rollup_rows;
mod rows;
mod schema;
pub mod topology_schema;
pub mod users;
mod writer;

pub use client::{connect, connect_reader, ttl_probe_sql, Features};
pub use config::ClickHouseConfig;
pub use rows::EventRow;
pub use schema::{
    bootstrap_sql, drop_expired_partitions, drop_expired_partitions_of, migrate, migrations_sql,
    pending_migrations, MigrationReport, LIST_PARTITIONS_SQL, LIST_TABLE_PARTITIONS_SQL,
    RETAINED_TABLES,
};
pub use writer::ClickHouseWriter;
