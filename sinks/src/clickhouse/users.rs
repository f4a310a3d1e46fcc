//! The tracked users: the `user_activity` aggregate the pipeline maintains, and the reads behind
//! `GET /users` and the dashboard's top event types.
//!
//! `user_activity` (`AggregatingMergeTree`, one row per `(user_id, day, event_type)` per insert
//! until merged, `PARTITION BY toYYYYMM(day)`) holds aggregate *states*: `minState` and
//! `maxState` of `timestamp_ms`, `uniqExactState(event_id)` and `uniqExactIfState(session_id,
//! session_id != '')`. A materialized view (`user_activity_mv ... TO user_activity`) feeds it
//! from every insert into `events`; a backfill after the view exists adds the events stored
//! before. All four states absorb duplicates (the same event stored twice, by an at-least-once
//! sink write, a retried insert or the backfill overlapping the view), so the aggregate stays
//! equal to a computation over the distinct raw events. `day` is the UTC day of the event.
//!
//! A read merges whole UTC days from the aggregate with the partial days at the edges of the
//! range from raw `events` (as the same states), so any `[from, to)` is exact to the
//! millisecond. Values are bound by the client (18.16 has no server-side parameters); the
//! API's client ([`super::connect_reader`]) sends every read with `readonly=2` and the
//! configured time and memory limits. Everything runs on ClickHouse 18.16 and current releases.

use clickhouse::query::Query;
use clickhouse::Client;
use serde::Deserialize;

use super::client::Features;
use super::config::ClickHouseConfig;
use super::read::datetime_secs;

/// A day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// `CREATE TABLE user_activity` (with a TTL one day past the events' where the server has TTL,
/// so a day's row outlives none of its raw events; elsewhere the retention job drops its
/// monthly partitions with the events').
pub fn user_activity_ddl(config: &ClickHouseConfig, features: &Features) -> String {
    let ttl = if features.ttl {
        format!(
            "TTL day + INTERVAL {} DAY",
            u64::from(config.retention_days) + 1
        )
    } else {
        String::new()
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.user_activity (
            user_id String,
            day Date,
            event_type String,
            first_ms AggregateFunction(min, Int64),
            last_ms AggregateFunction(max, Int64),
            events AggregateFunction(uniqExact, String),
            sessions AggregateFunction(uniqExactIf, String, UInt8)
        ) ENGINE = AggregatingMergeTree
        PARTITION BY toYYYYMM(day)
        ORDER BY (user_id, day, event_type)
        {ttl}",
        db = config.database
    )
}

/// The states of `user_activity` over raw events, grouped by `group` (`SELECT` list only).
const STATES: &str = "minState(timestamp_ms) AS first_ms, maxState(timestamp_ms) AS last_ms, \
     uniqExactState(event_id) AS events, \
     uniqExactIfState(session_id, session_id != '') AS sessions";

/// The `SELECT` that turns raw events into `user_activity` rows (the view's and the
/// backfill's).
fn activity_select(db: &str) -> String {
    format!(
        "SELECT user_id, toDate(timestamp, 'UTC') AS day, event_type, {STATES}
         FROM {db}.events
         GROUP BY user_id, day, event_type"
    )
}

/// `CREATE MATERIALIZED VIEW user_activity_mv TO user_activity`: every insert into `events`
/// also inserts its states.
pub fn user_activity_view_ddl(config: &ClickHouseConfig, _features: &Features) -> String {
    let db = &config.database;
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.user_activity_mv TO {db}.user_activity AS {}",
        activity_select(db)
    )
}

/// Backfills `user_activity` from the events stored before the view existed. Run after the
/// view is created; running it again (or overlapping the view) changes no answer.
pub fn user_activity_backfill_sql(config: &ClickHouseConfig, _features: &Features) -> String {
    let db = &config.database;
    format!(
        "INSERT INTO {db}.user_activity (user_id, day, event_type, first_ms, last_ms, events, \
         sessions) {}",
        activity_select(db)
    )
}

/// How `/users` orders users (descending, then by `user_id` ascending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserSort {
    /// Most recently seen first.
    LastSeen,
    /// Most events first.
    Events,
}

impl UserSort {
    /// The name clients send.
    pub fn name(self) -> &'static str {
        match self {
            UserSort::LastSeen => "last_seen",
            UserSort::Events => "events",
        }
    }

    /// The sort named `name`.
    pub fn parse(name: &str) -> Option<UserSort> {
        match name {
            "last_seen" => Some(UserSort::LastSeen),
            "events" => Some(UserSort::Events),
            _ => None,
        }
    }

    /// The sort key of `row`.
    pub fn key(self, row: &UserRow) -> i64 {
        match self {
            UserSort::LastSeen => row.last_seen_ms,
            UserSort::Events => i64::try_from(row.events).unwrap_or(i64::MAX),
        }
    }

    fn column(self) -> &'static str {
        match self {
            UserSort::LastSeen => "last_seen_ms",
            UserSort::Events => "n_events",
        }
    }
}

/// Where a page starts: after the user with this sort key and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct After {
    /// The sort key of the last user of the previous page (ms since the epoch, or events).
    pub key: i64,
    /// Its id.
    pub user_id: String,
}

/// A validated users read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserQuery {
    /// Only activity at or after this time (ms since the epoch); `None`: from the start.
    pub from_ms: Option<u64>,
    /// Only activity before this time (ms since the epoch); `None`: up to now.
    pub to_ms: Option<u64>,
    /// Only users whose id starts with this (bytes, compared exactly).
    pub search: Option<String>,
    /// The order.
    pub sort: UserSort,
    /// Where the page starts (`None`: the first page).
    pub after: Option<After>,
    /// Most users returned (the query asks for one more, to tell whether a next page exists).
    pub limit: u64,
}

/// One user over the range.
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct UserRow {
    /// The user's id.
    pub user_id: String,
    /// Time of their first event in the range, ms since the epoch.
    pub first_seen_ms: i64,
    /// Time of their last event in the range, ms since the epoch.
    pub last_seen_ms: i64,
    /// Distinct event ids.
    pub events: u64,
    /// Distinct non-empty client `session_id`s.
    pub sessions: u64,
    /// The event type with the most events (ties: the smallest name).
    pub top_event_type: String,
}

/// Which stored data answers a range: whole UTC days `[first_day, end_day)` of the aggregate
/// (`None` bounds are open; `None` overall: no whole day) and raw `[from, to)` millisecond
/// ranges for the partial days at the edges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Whole days from `user_activity`, as day numbers since the epoch.
    pub days: Option<(Option<u64>, Option<u64>)>,
    /// Ranges read from raw events, ms since the epoch.
    pub raw: Vec<(u64, u64)>,
}

/// Splits `[from, to)` into whole days and edge ranges (see [`Plan`]).
pub fn plan(from_ms: Option<u64>, to_ms: Option<u64>) -> Plan {
    let first_day = from_ms.map(|f| f.div_ceil(DAY_MS));
    let end_day = to_ms.map(|t| t / DAY_MS);
    if let (Some(a), Some(b), Some(f), Some(t)) = (first_day, end_day, from_ms, to_ms) {
        if a >= b {
            let raw = if f < t { vec![(f, t)] } else { Vec::new() };
            return Plan { days: None, raw };
        }
    }
    let mut raw = Vec::new();
    if let (Some(f), Some(a)) = (from_ms, first_day) {
        if f < a * DAY_MS {
            raw.push((f, a * DAY_MS));
        }
    }
    if let (Some(t), Some(b)) = (to_ms, end_day) {
        if b * DAY_MS < t {
            raw.push((b * DAY_MS, t));
        }
    }
    Plan {
        days: Some((first_day, end_day)),
        raw,
    }
}

/// `YYYY-MM-DD` of a day number since the epoch.
fn date(day: u64) -> String {
    let secs = i64::try_from(day.saturating_mul(86_400)).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The users of `q`, ordered by `q.sort` (descending, then `user_id` ascending), at most
/// `q.limit + 1` rows (a row past `limit` means a next page exists). Columns as [`UserRow`].
///
/// Per user: events are the sum over event types of the distinct event ids of that type;
/// sessions the distinct non-empty session ids over all rows; first/last seen the min/max of
/// `timestamp_ms`; the top type the one with most events (ties: the smallest name).
pub fn users(client: &Client, q: &UserQuery) -> Query {
    let p = plan(q.from_ms, q.to_ms);
    let search = if q.search.is_some() {
        "AND startsWith(user_id, ?)"
    } else {
        ""
    };
    let mut parts = Vec::new();
    if let Some((first, end)) = p.days {
        let mut filter = String::new();
        if first.is_some() {
            filter.push_str(" AND day >= toDate(?)");
        }
        if end.is_some() {
            filter.push_str(" AND day < toDate(?)");
        }
        parts.push(format!(
            "SELECT user_id, event_type, first_ms, last_ms, events, sessions
             FROM user_activity WHERE 1 {filter} {search}"
        ));
    }
    if !p.raw.is_empty() {
        let ranges: Vec<&str> = p
            .raw
            .iter()
            .map(|_| {
                "(timestamp >= toDateTime(?) AND timestamp <= toDateTime(?) \
                 AND timestamp_ms >= ? AND timestamp_ms < ?)"
            })
            .collect();
        parts.push(format!(
            "SELECT user_id, event_type, {STATES}
             FROM events WHERE ({}) {search}
             GROUP BY user_id, event_type",
            ranges.join(" OR ")
        ));
    }
    if parts.is_empty() {
        // An empty range: the same columns, no rows.
        parts.push(format!(
            "SELECT user_id, event_type, {STATES} FROM events WHERE 0 GROUP BY user_id, event_type"
        ));
    }
    let col = q.sort.column();
    let after = if q.after.is_some() {
        format!("HAVING {col} < ? OR ({col} = ? AND user_id > ?)")
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT user_id, min(f) AS first_seen_ms, max(l) AS last_seen_ms, sum(n) AS n_events,
                uniqExactIfMerge(s) AS n_sessions,
                argMin(event_type, (-toInt64(n), event_type)) AS top_event_type
         FROM (
             SELECT user_id, event_type, minMerge(first_ms) AS f, maxMerge(last_ms) AS l,
                    uniqExactMerge(events) AS n, uniqExactIfMergeState(sessions) AS s
             FROM ({})
             GROUP BY user_id, event_type
         )
         GROUP BY user_id
         {after}
         ORDER BY {col} DESC, user_id ASC
         LIMIT ?",
        parts.join(" UNION ALL ")
    );
    let mut query = client.query(&sql);
    if let Some((first, end)) = p.days {
        if let Some(a) = first {
            query = query.bind(date(a));
        }
        if let Some(b) = end {
            query = query.bind(date(b));
        }
        if let Some(s) = &q.search {
            query = query.bind(s.as_str());
        }
    }
    if !p.raw.is_empty() {
        for (f, t) in &p.raw {
            query = query
                .bind(datetime_secs(f / 1000))
                .bind(datetime_secs(t / 1000))
                .bind(*f)
                .bind(*t);
        }
        if let Some(s) = &q.search {
            query = query.bind(s.as_str());
        }
    }
    if let Some(a) = &q.after {
        query = match q.sort {
            UserSort::LastSeen => query.bind(a.key).bind(a.key),
            UserSort::Events => query
                .bind(u64::try_from(a.key).unwrap_or(0))
                .bind(u64::try_from(a.key).unwrap_or(0)),
        }
        .bind(a.user_id.as_str());
    }
    query.bind(q.limit.saturating_add(1))
}

/// One event type's share of a range (see [`top_event_types`]).
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct EventTypeRow {
    /// The event type.
    pub event_type: String,
    /// Distinct event ids of this type.
    pub events: u64,
    /// Distinct users with an event of this type.
    pub unique_users: u64,
}

/// The `limit` event types with the most events with `from_ms <= timestamp_ms < to_ms` (ties:
/// the smallest name), exact over raw events with each id counted once as in
/// [`super::read::summary`] (its first stored copy decides type and user).
pub fn top_event_types(client: &Client, from_ms: u64, to_ms: u64, limit: u64) -> Query {
    let sql = "SELECT first_type AS event_type, count() AS n_events,
                uniqExact(first_user) AS n_users
         FROM (
             SELECT argMin(event_type, (kafka_partition, kafka_offset)) AS first_type,
                    argMin(user_id, (kafka_partition, kafka_offset)) AS first_user
             FROM events
             WHERE timestamp >= toDateTime(?) AND timestamp <= toDateTime(?)
               AND timestamp_ms >= ? AND timestamp_ms < ?
             GROUP BY event_id
         )
         GROUP BY event_type
         ORDER BY n_events DESC, event_type ASC
         LIMIT ?";
    client
        .query(sql)
        .bind(datetime_secs(from_ms / 1000))
        .bind(datetime_secs(to_ms / 1000))
        .bind(from_ms)
        .bind(to_ms)
        .bind(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: u64 = DAY_MS;

    #[test]
    fn plans_split_whole_days_from_edges() {
        // All time: the aggregate only.
        assert_eq!(
            plan(None, None),
            Plan {
                days: Some((None, None)),
                raw: vec![]
            }
        );
        // Aligned bounds: whole days only.
        assert_eq!(
            plan(Some(10 * D), Some(12 * D)),
            Plan {
                days: Some((Some(10), Some(12))),
                raw: vec![]
            }
        );
        // Partial edges on both sides.
        assert_eq!(
            plan(Some(10 * D + 5), Some(12 * D + 7)),
            Plan {
                days: Some((Some(11), Some(12))),
                raw: vec![(10 * D + 5, 11 * D), (12 * D, 12 * D + 7)]
            }
        );
        // Within one day, or across one midnight with no whole day: raw only.
        assert_eq!(
            plan(Some(10 * D + 5), Some(10 * D + 9)),
            Plan {
                days: None,
                raw: vec![(10 * D + 5, 10 * D + 9)]
            }
        );
        assert_eq!(
            plan(Some(10 * D + 5), Some(11 * D + 9)),
            Plan {
                days: None,
                raw: vec![(10 * D + 5, 11 * D + 9)]
            }
        );
        // One open side.
        assert_eq!(
            plan(None, Some(3 * D + 1)),
            Plan {
                days: Some((None, Some(3))),
                raw: vec![(3 * D, 3 * D + 1)]
            }
        );
        assert_eq!(
            plan(Some(3 * D - 1), None),
            Plan {
                days: Some((Some(3), None)),
                raw: vec![(3 * D - 1, 3 * D)]
            }
        );
    }

    #[test]
    fn values_are_bound_and_settings_attached() {
        let client = Client::default();
        let q = UserQuery {
            from_ms: Some(19_795 * D + 1),
            to_ms: Some(19_797 * D),
            search: Some("it's%_".into()),
            sort: UserSort::Events,
            after: Some(After {
                key: 7,
                user_id: "u'1".into(),
            }),
            limit: 100,
        };
        let sql = users(&client, &q).sql_display().to_string();
        assert!(sql.contains("startsWith(user_id, 'it\\'s%_')"), "{sql}");
        assert!(sql.contains("day >= toDate('2024-03-14')"), "{sql}");
        assert!(sql.contains("day < toDate('2024-03-15')"), "{sql}");
        assert!(sql.contains("timestamp_ms >= 1710288000001"), "{sql}");
        assert!(
            sql.contains("n_events < 7 OR (n_events = 7 AND user_id > 'u\\'1')"),
            "{sql}"
        );
        assert!(sql.contains("LIMIT 101"), "{sql}");
        assert!(!sql.contains('?'), "{sql}");
    }

    #[test]
    fn ddl_has_ttl_only_where_supported() {
        let config = ClickHouseConfig::default();
        let mut f = Features {
            version: "x".into(),
            ttl: false,
        };
        assert!(!user_activity_ddl(&config, &f).contains("TTL"));
        f.ttl = true;
        assert!(user_activity_ddl(&config, &f).contains("TTL day + INTERVAL 366 DAY"));
        let view = user_activity_view_ddl(&config, &f);
        assert!(
            view.contains("TO tally.user_activity") && view.contains("FROM tally.events"),
            "{view}"
        );
    }
}
