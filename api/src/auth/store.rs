//! [`KeyStore`]: keys looked up by hash in a [`KeySource`] (PostgreSQL), behind a short cache.
//!
//! The cache is a `Mutex<HashMap>` rather than a TTL-cache crate: each entry needs two ages
//! (fresh for 2 s, then usable only while the source is down, up to 10 min), negative entries
//! have their own age, and the clock must be injectable for tests; TTL caches expire an entry
//! at one age on the system clock. The lock is held only to read or write one entry, never
//! across a lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus::IntCounter;
use subtle::ConstantTimeEq;

use super::{Caller, Role};

/// Requests let through with a cached key while the key source (PostgreSQL) was unreachable.
pub const STALE_KEY_USES: &str = "tally_api_stale_key_uses_total";

fn stale_uses() -> &'static IntCounter {
    static COUNTER: OnceLock<IntCounter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        let c = IntCounter::new(
            STALE_KEY_USES,
            "Requests authenticated from the key cache while PostgreSQL was unreachable.",
        )
        .unwrap_or_else(|e| panic!("metric {STALE_KEY_USES}: {e}"));
        // Registration fails only for a duplicate name.
        let _ = prometheus::default_registry().register(Box::new(c.clone()));
        c
    })
}

/// A stored key as authentication sees it.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// `api_keys.id`.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The stored SHA-256 of the key.
    pub key_hash: [u8; 32],
    /// Whether it was revoked.
    pub revoked: bool,
}

/// The key source could not answer (PostgreSQL unreachable); the text is for the log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Where keys are found by the SHA-256 of the key. PostgreSQL in production
/// ([`KeyStore::postgres`]); tests may supply their own.
pub trait KeySource: Send + Sync + 'static {
    /// The key with this hash (revoked or not), `None` if there is none. A source may record
    /// the key's use here (PostgreSQL sets `last_used_at` at most once a minute).
    fn find(&self, key_hash: [u8; 32]) -> BoxFuture<'_, Result<Option<KeyRecord>, SourceError>>;
}

struct Postgres(sqlx::PgPool);

impl KeySource for Postgres {
    fn find(&self, key_hash: [u8; 32]) -> BoxFuture<'_, Result<Option<KeyRecord>, SourceError>> {
        Box::pin(async move {
            let found = tally_sinks::postgres::keys::find_by_hash(&self.0, &key_hash)
                .await
                .map_err(|e| SourceError(e.to_string()))?;
            let Some(row) = found else {
                return Ok(None);
            };
            let role = Role::parse(&row.role).map_err(SourceError)?;
            let stored: [u8; 32] = row.key_hash.as_slice().try_into().map_err(|_| {
                SourceError(format!(
                    "api_keys.key_hash of key {} is not 32 bytes",
                    row.id
                ))
            })?;
            Ok(Some(KeyRecord {
                id: row.id,
                name: row.name,
                role,
                key_hash: stored,
                revoked: row.revoked,
            }))
        })
    }
}

/// How long lookups are remembered.
#[derive(Clone, Copy, Debug)]
pub struct CachePolicy {
    /// A found key (valid or revoked) is used without asking the source for this long. Default
    /// 2 s: a revocation takes effect within this plus one lookup.
    pub fresh: Duration,
    /// An unknown key is answered 401 without asking the source for this long. Default 2 s.
    pub negative: Duration,
    /// While the source fails, a key that was valid keeps working for this long after its last
    /// successful lookup (each use counted in [`STALE_KEY_USES`]). Default 10 min.
    pub stale_if_error: Duration,
    /// Most keys remembered. Default 10 000.
    pub capacity: usize,
    /// Longest a request waits for the source (PostgreSQL) before the stale entry (or 503)
    /// answers it. Default 1 s.
    pub lookup_timeout: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            fresh: Duration::from_secs(2),
            negative: Duration::from_secs(2),
            stale_if_error: Duration::from_secs(600),
            capacity: 10_000,
            lookup_timeout: Duration::from_secs(1),
        }
    }
}

/// What a key turned out to be.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// A valid key.
    Valid(Caller),
    /// A revoked key.
    Revoked,
    /// No key has this hash.
    Unknown,
    /// The source failed and the key is not cached (or its stale period ended).
    Unavailable,
}

#[derive(Clone)]
struct Entry {
    /// The last successful lookup (bounds the stale-if-error period).
    at: Instant,
    /// The last time the source was asked, successfully or not (bounds freshness, so a failing
    /// source is asked at most once per `fresh` per key, not on every request).
    checked: Instant,
    /// `None`: no such key.
    record: Option<KeyRecord>,
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

struct Inner {
    source: Box<dyn KeySource>,
    policy: CachePolicy,
    cache: Mutex<HashMap<[u8; 32], Entry>>,
    now: Clock,
}

/// Keys by hash, from a [`KeySource`] behind a cache (see [`CachePolicy`]). Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<Inner>,
}

impl KeyStore {
    /// Keys in PostgreSQL's `api_keys`, with the default [`CachePolicy`].
    pub fn postgres(pool: sqlx::PgPool) -> KeyStore {
        KeyStore::new(Postgres(pool), CachePolicy::default())
    }

    /// Keys from `source`, cached as `policy` says.
    pub fn new(source: impl KeySource, policy: CachePolicy) -> KeyStore {
        KeyStore::with_clock(source, policy, Arc::new(Instant::now))
    }

    /// As [`KeyStore::new`], reading time from `now` (tests move it).
    pub fn with_clock(
        source: impl KeySource,
        policy: CachePolicy,
        now: Arc<dyn Fn() -> Instant + Send + Sync>,
    ) -> KeyStore {
        KeyStore {
            inner: Arc::new(Inner {
                source: Box::new(source),
                policy,
                cache: Mutex::new(HashMap::new()),
                now,
            }),
        }
    }

    /// What the key with SHA-256 `key_hash` is: from the cache while fresh, else from the
    /// source (falling back to a stale valid entry when the source fails).
    pub async fn lookup(&self, key_hash: [u8; 32]) -> Lookup {
        let inner = &self.inner;
        let now = (inner.now)();
        let cached = self.cached(&key_hash);
        if let Some(entry) = &cached {
            let ttl = if entry.record.is_some() {
                inner.policy.fresh
            } else {
                inner.policy.negative
            };
            if now.saturating_duration_since(entry.checked) < ttl {
                return answer(entry.record.as_ref(), &key_hash);
            }
        }
        let found = tokio::time::timeout(inner.policy.lookup_timeout, inner.source.find(key_hash))
            .await
            .unwrap_or_else(|_| Err(SourceError("timed out".to_owned())));
        match found {
            Ok(record) => {
                let result = answer(record.as_ref(), &key_hash);
                self.store(
                    key_hash,
                    Entry {
                        at: now,
                        checked: now,
                        record,
                    },
                );
                result
            }
            Err(e) => {
                let stale = cached.filter(|c| {
                    now.saturating_duration_since(c.at) < inner.policy.stale_if_error
                        && c.record.as_ref().is_some_and(|r| !r.revoked)
                });
                match stale {
                    Some(entry) => {
                        tracing::warn!(error = %e, "key store unreachable; using a cached key");
                        stale_uses().inc();
                        let result = answer(entry.record.as_ref(), &key_hash);
                        self.store(
                            key_hash,
                            Entry {
                                checked: now,
                                ..entry
                            },
                        );
                        result
                    }
                    None => {
                        tracing::warn!(error = %e, "key store unreachable; key not cached");
                        Lookup::Unavailable
                    }
                }
            }
        }
    }

    fn cached(&self, key_hash: &[u8; 32]) -> Option<Entry> {
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key_hash).cloned()
    }

    /// Remembers `entry`; when full, first forgets entries past every use (older than the
    /// stale period, or unknown keys older than the negative period), then, if still full,
    /// everything but fresh valid keys.
    fn store(&self, key_hash: [u8; 32], entry: Entry) {
        let policy = self.inner.policy;
        let now = (self.inner.now)();
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= policy.capacity && !cache.contains_key(&key_hash) {
            let age = |e: &Entry| now.saturating_duration_since(e.at);
            cache.retain(|_, e| match &e.record {
                Some(_) => age(e) < policy.stale_if_error,
                None => age(e) < policy.negative,
            });
            if cache.len() >= policy.capacity {
                cache.retain(|_, e| e.record.is_some() && age(e) < policy.fresh);
            }
            if cache.len() >= policy.capacity {
                return;
            }
        }
        cache.insert(key_hash, entry);
    }
}

/// The answer for `record`, after comparing its stored hash in constant time.
fn answer(record: Option<&KeyRecord>, key_hash: &[u8; 32]) -> Lookup {
    match record {
        Some(r) if bool::from(r.key_hash.ct_eq(key_hash)) => {
            if r.revoked {
                Lookup::Revoked
            } else {
                Lookup::Valid(Caller {
                    key_id: r.id,
                    name: r.name.clone(),
                    role: r.role,
                })
            }
        }
        _ => Lookup::Unknown,
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
