//! Query parameters shared by the paged admin and resource routes: one wording for every
//! route's refusals.

use std::collections::HashMap;

use crate::ApiError;

/// Refuses parameters other than `known` (400 naming the first, listing the known ones).
pub(crate) fn only(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) if known.is_empty() => Err(ApiError::BadRequest(format!(
            "unknown parameter `{k}` (this route takes none)"
        ))),
        Some(k) => Err(ApiError::BadRequest(format!(
            "unknown parameter `{k}` (expected {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `limit`: 1..=`max`, `default` when absent.
pub(crate) fn limit(
    params: &HashMap<String, String>,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match params.get("limit") {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`limit` must be a whole number from 1 to {max}, got `{}`",
                    shown(raw)
                ))
            }),
    }
}

/// `before`: a positive id (the previous page's `next`), or `None` when absent.
pub(crate) fn before_id(params: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    params
        .get("before")
        .map(|raw| {
            raw.parse::<i64>().ok().filter(|&id| id > 0).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`before` must be a positive whole number (the previous page's `next`), got `{}`",
                    shown(raw)
                ))
            })
        })
        .transpose()
}

/// At most 40 characters of a value, for an error message.
fn shown(raw: &str) -> String {
    raw.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn limits_and_cursors() {
        assert_eq!(limit(&params(&[]), 100, 1000).ok(), Some(100));
        assert_eq!(
            limit(&params(&[("limit", "1000")]), 100, 1000).ok(),
            Some(1000)
        );
        for bad in ["0", "1001", "-1", "x", "99999999999999999999"] {
            let e = limit(&params(&[("limit", bad)]), 100, 1000).expect_err(bad);
            assert!(e.to_string().contains("from 1 to 1000"), "{e}");
        }
        assert_eq!(before_id(&params(&[])).ok(), Some(None));
        assert_eq!(before_id(&params(&[("before", "7")])).ok(), Some(Some(7)));
        for bad in ["0", "-3", "abc"] {
            assert!(before_id(&params(&[("before", bad)])).is_err(), "{bad}");
        }
        assert!(only(&params(&[("limit", "1")]), &["limit"]).is_ok());
        let e = only(&params(&[("x", "1")]), &["limit", "before"]).expect_err("x");
        assert_eq!(
            e.to_string(),
            "unknown parameter `x` (expected limit, before)"
        );
        let e = only(&params(&[("x", "1")]), &[]).expect_err("x");
        assert_eq!(
            e.to_string(),
            "unknown parameter `x` (this route takes none)"
        );
    }
}
