//! `GET /users` (admin): the tracked users with first/last seen, events, sessions and top
//! event type, exact over the range (see `tally_sinks::clickhouse::users`), keyset-paged.
//!
//! The cursor (`next`) is the base64url (no padding) of JSON `{"sort", "key", "user_id"}`: the
//! sort it was made for, and the sort key (last seen in ms, or events) and id of the last user
//! of the page. The next page starts strictly after that user in the order, so paging through
//! an unchanging range returns every user exactly once; while events arrive a user may move
//! across pages (their last seen or events grew).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tally_core::event::MAX_ID_LEN;
use tally_sinks::clickhouse::users::{self, After, UserQuery, UserRow, UserSort};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::csv::{Cell, Format};
use crate::{ApiError, AppState};

/// Users per page when `limit` is not given.
pub const DEFAULT_USERS_LIMIT: u64 = 100;
/// Largest `limit`.
pub const MAX_USERS_LIMIT: u64 = 1000;
/// The header carrying the next page's cursor in a CSV answer (absent on the last page).
pub const NEXT_HEADER: &str = "x-next-cursor";

/// One tracked user over the range.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// The user's id.
    pub user_id: String,
    /// Their first event in the range (event time), RFC 3339 UTC with milliseconds.
    pub first_seen: String,
    /// Their last event in the range, RFC 3339 UTC with milliseconds.
    pub last_seen: String,
    /// Their events (distinct event ids).
    pub events: u64,
    /// Their distinct non-empty client `session_id`s (not the sessions a topology derives
    /// from event time).
    pub sessions: u64,
    /// The event type they sent most (ties: the smallest name).
    pub top_event_type: String,
}

/// The `/users` answer.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UsersPage {
    /// Up to `limit` users in the requested order.
    pub users: Vec<User>,
    /// Pass back as `?next=` for the following page; `null` on the last page.
    pub next: Option<String>,
}

/// What a cursor holds.
#[derive(Debug, Deserialize, Serialize)]
struct Cursor {
    sort: String,
    key: i64,
    user_id: String,
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest(reason.into())
}

/// The cursor continuing after `row` in `sort`.
pub fn encode_cursor(sort: UserSort, row: &UserRow) -> String {
    let c = Cursor {
        sort: sort.name().to_owned(),
        key: sort.key(row),
        user_id: row.user_id.clone(),
    };
    let json = serde_json::to_vec(&c).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// A cursor made by [`encode_cursor`] for `sort`; anything else is a 400.
fn decode_cursor(raw: &str, sort: UserSort) -> Result<After, ApiError> {
    let invalid = || bad("`next` is not a cursor from a /users answer: pass `next` back as is");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| invalid())?;
    let c: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if c.sort != sort.name() {
        return Err(bad(format!(
            "`next` continues sort={}, not sort={}: keep the parameters of the first page",
            c.sort,
            sort.name()
        )));
    }
    if c.key < 0 || c.user_id.len() > MAX_ID_LEN * 4 {
        return Err(invalid());
    }
    Ok(After {
        key: c.key,
        user_id: c.user_id,
    })
}

/// An optional time parameter (RFC 3339, as `/reports` takes it).
fn optional_time(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    if !params.contains_key(name) {
        return Ok(None);
    }
    crate::reports::time_param(params, name).map(|t| Some(crate::reports::ms(t)))
}

/// Validates `/users` parameters.
pub fn parse_users_query(params: &HashMap<String, String>) -> Result<UserQuery, ApiError> {
    const KNOWN: [&str; 7] = ["from", "to", "search", "sort", "limit", "next", "format"];
    if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(bad(format!(
            "unknown parameter `{shown}` (expected {})",
            KNOWN.join(", ")
        )));
    }
    let from_ms = optional_time(params, "from")?;
    let to_ms = optional_time(params, "to")?;
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f >= t {
            return Err(bad("`from` must be before `to` (the range is [from, to))"));
        }
    }
    let search = match params.get("search") {
        None => None,
        Some(s) if s.is_empty() => return Err(bad("`search` must not be empty")),
        Some(s) if s.chars().count() > MAX_ID_LEN => {
            return Err(bad(format!(
                "`search` must be at most {MAX_ID_LEN} characters (a user id prefix)"
            )))
        }
        Some(s) => Some(s.clone()),
    };
    let sort = match params.get("sort") {
        None => UserSort::LastSeen,
        Some(s) => UserSort::parse(s).ok_or_else(|| {
            let shown: String = s.chars().take(32).collect();
            bad(format!("unknown sort `{shown}`: use last_seen or events"))
        })?,
    };
    let limit = match params.get("limit") {
        None => DEFAULT_USERS_LIMIT,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_USERS_LIMIT).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "`limit` must be a whole number from 1 to {MAX_USERS_LIMIT}"
                ))
            })?,
    };
    let after = match params.get("next") {
        None => None,
        Some(raw) => Some(decode_cursor(raw, sort)?),
    };
    Ok(UserQuery {
        from_ms,
        to_ms,
        search,
        sort,
        after,
        limit,
    })
}

/// RFC 3339 (UTC, milliseconds) of ms since the epoch.
fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The page of `q` from the rows the query returned (at most `limit + 1`).
pub fn page(q: &UserQuery, mut rows: Vec<UserRow>) -> UsersPage {
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|r| encode_cursor(q.sort, r))
    } else {
        None
    };
    let users = rows
        .into_iter()
        .map(|r| User {
            first_seen: rfc3339_ms(r.first_seen_ms),
            last_seen: rfc3339_ms(r.last_seen_ms),
            user_id: r.user_id,
            events: r.events,
            sessions: r.sessions,
            top_event_type: r.top_event_type,
        })
        .collect();
    UsersPage { users, next }
}

/// A page as CSV: a header row, one row per user; the cursor in [`NEXT_HEADER`].
pub fn page_csv(page: &UsersPage) -> Result<Response, ApiError> {
    let rows = page.users.iter().map(|u| {
        vec![
            Cell::Text(u.user_id.clone()),
            Cell::Plain(u.first_seen.clone()),
            Cell::Plain(u.last_seen.clone()),
            Cell::Plain(u.events.to_string()),
            Cell::Plain(u.sessions.to_string()),
            Cell::Text(u.top_event_type.clone()),
        ]
    });
    let header = [
        "user_id",
        "first_seen",
        "last_seen",
        "events",
        "sessions",
        "top_event_type",
    ];
    let mut response = crate::csv::response(crate::csv::body(&header, rows)?);
    if let Some(next) = page
        .next
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        response.headers_mut().insert(NEXT_HEADER, next);
    }
    Ok(response)
}

/// `GET /users`.
#[utoipa::path(get, path = "/users", tag = "users",
    params(
        ("from" = Option<String>, Query, description = "Only activity at or after this time, RFC 3339 (default: all time)"),
        ("to" = Option<String>, Query, description = "Only activity before this time, RFC 3339 (default: all time)"),
        ("search" = Option<String>, Query, description = "Only users whose id starts with this (exact prefix, no wildcards)"),
        ("sort" = Option<String>, Query, description = "last_seen (default) or events; descending, ties by user_id"),
        ("limit" = Option<u64>, Query, description = "Users per page, 1..=1000, default 100"),
        ("next" = Option<String>, Query, description = "The `next` cursor of the previous page (same sort)"),
        ("format" = Option<String>, Query, description = "json (default) or csv (a header row, one row per user; the cursor in the x-next-cursor header)")),
    responses(
        (status = 200, description = "A page of users", content((UsersPage = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A parameter is unknown or invalid, or `next` is not a cursor for this sort", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::openapi::ErrorBody),
        (status = 503, description = "ClickHouse unavailable or the query hit its time or memory limit; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_users(
    _caller: crate::auth::Admin,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let format = crate::csv::format_param(&params)?;
    let q = parse_users_query(&params)?;
    let rows: Vec<UserRow> = users::users(&state.clickhouse, &q)
        .fetch_all()
        .await
        .map_err(|e| {
            crate::reports::clickhouse_unavailable(tally_sinks::SinkError::clickhouse(
                "users query",
                e,
            ))
        })?;
    let page = page(&q, rows);
    match format {
        Format::Json => Ok(Json(page).into_response()),
        Format::Csv => page_csv(&page),
    }
}

/// `GET /users`.
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_users))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, last: i64, events: u64) -> UserRow {
        UserRow {
            user_id: user.into(),
            first_seen_ms: 1_000,
            last_seen_ms: last,
            events,
            sessions: 1,
            top_event_type: "click".into(),
        }
    }

    #[test]
    fn cursors_round_trip_and_check_the_sort() {
        let r = row("u'1", 1_710_324_000_123, 7);
        let c = encode_cursor(UserSort::Events, &r);
        assert_eq!(
            decode_cursor(&c, UserSort::Events).ok(),
            Some(After {
                key: 7,
                user_id: "u'1".into()
            })
        );
        assert!(decode_cursor(&c, UserSort::LastSeen).is_err());
        assert!(decode_cursor("not a cursor", UserSort::Events).is_err());
        assert!(decode_cursor("e30", UserSort::Events).is_err()); // `{}`
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_came() {
        let q = parse_users_query(&HashMap::from([("limit".into(), "2".into())])).expect("valid");
        let p = page(&q, vec![row("a", 3, 1), row("b", 2, 1)]);
        assert_eq!(p.next, None);
        let p = page(&q, vec![row("a", 3, 1), row("b", 2, 1), row("c", 1, 1)]);
        assert_eq!(p.users.len(), 2);
        let after = decode_cursor(p.next.as_deref().unwrap_or(""), UserSort::LastSeen);
        assert_eq!(
            after.ok(),
            Some(After {
                key: 2,
                user_id: "b".into()
            })
        );
        assert_eq!(p.users[0].last_seen, "1970-01-01T00:00:00.003Z");
    }
}
