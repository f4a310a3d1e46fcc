//! The key cache against a scripted source and clock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

#[derive(Default)]
struct Fake {
    keys: Mutex<HashMap<[u8; 32], KeyRecord>>,
    down: AtomicBool,
    hang: AtomicBool,
    calls: AtomicUsize,
}

#[derive(Clone, Default)]
struct Shared(Arc<Fake>);

impl KeySource for Shared {
    fn find(&self, key_hash: [u8; 32]) -> BoxFuture<'_, Result<Option<KeyRecord>, SourceError>> {
        Box::pin(async move {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            if self.0.down.load(Ordering::SeqCst) {
                return Err(SourceError("connection refused".into()));
            }
            if self.0.hang.load(Ordering::SeqCst) {
                // A PostgreSQL that accepts connections and never answers.
                std::future::pending::<()>().await;
            }
            let keys = self.0.keys.lock().expect("lock");
            Ok(keys.get(&key_hash).cloned())
        })
    }
}

struct Harness {
    fake: Shared,
    store: KeyStore,
    clock: Arc<Mutex<Instant>>,
}

impl Harness {
    fn new(capacity: usize) -> Harness {
        let fake = Shared::default();
        let clock = Arc::new(Mutex::new(Instant::now()));
        let c = Arc::clone(&clock);
        let policy = CachePolicy {
            capacity,
            ..CachePolicy::default()
        };
        let store = KeyStore::with_clock(
            fake.clone(),
            policy,
            Arc::new(move || *c.lock().expect("clock")),
        );
        Harness { fake, store, clock }
    }

    fn add(&self, id: i64, role: Role) -> [u8; 32] {
        let h = crate::auth::hash(&format!("key-{id}"));
        let record = KeyRecord {
            id,
            name: format!("k{id}"),
            role,
            key_hash: h,
            revoked: false,
        };
        self.fake.0.keys.lock().expect("lock").insert(h, record);
        h
    }

    fn revoke(&self, h: &[u8; 32]) {
        if let Some(r) = self.fake.0.keys.lock().expect("lock").get_mut(h) {
            r.revoked = true;
        }
    }

    fn advance(&self, ms: u64) {
        *self.clock.lock().expect("clock") += Duration::from_millis(ms);
    }

    fn calls(&self) -> usize {
        self.fake.0.calls.load(Ordering::SeqCst)
    }

    fn down(&self, down: bool) {
        self.fake.0.down.store(down, Ordering::SeqCst);
    }
}

fn kind(l: &Lookup) -> &'static str {
    match l {
        Lookup::Valid(_) => "valid",
        Lookup::Revoked => "revoked",
        Lookup::Unknown => "unknown",
        Lookup::Unavailable => "unavailable",
    }
}

#[tokio::test]
async fn a_revocation_is_seen_once_the_entry_is_two_seconds_old() {
    let h = Harness::new(100);
    let key = h.add(1, Role::Read);
    match h.store.lookup(key).await {
        Lookup::Valid(c) => assert_eq!((c.key_id, c.name.as_str(), c.role), (1, "k1", Role::Read)),
        other => panic!("{other:?}"),
    }
    h.revoke(&key);
    h.advance(1_999);
    assert_eq!(kind(&h.store.lookup(key).await), "valid", "fresh for 2 s");
    assert_eq!(h.calls(), 1, "answered from the cache");
    h.advance(1);
    assert_eq!(kind(&h.store.lookup(key).await), "revoked");
    assert_eq!(h.calls(), 2);
}

#[tokio::test]
async fn unknown_keys_are_remembered_for_two_seconds() {
    let h = Harness::new(100);
    let key = crate::auth::hash("key-9");
    assert_eq!(kind(&h.store.lookup(key).await), "unknown");
    h.add(9, Role::Admin);
    h.advance(1_000);
    assert_eq!(
        kind(&h.store.lookup(key).await),
        "unknown",
        "negative entry"
    );
    assert_eq!(h.calls(), 1);
    h.advance(1_000);
    assert_eq!(kind(&h.store.lookup(key).await), "valid");
    assert_eq!(h.calls(), 2);
}

#[tokio::test]
async fn a_valid_key_keeps_working_while_the_source_is_down_for_ten_minutes() {
    let h = Harness::new(100);
    let key = h.add(2, Role::Ingest);
    let revoked = h.add(3, Role::Admin);
    h.revoke(&revoked);
    assert_eq!(kind(&h.store.lookup(key).await), "valid");
    assert_eq!(kind(&h.store.lookup(revoked).await), "revoked");
    h.down(true);
    let before = stale_uses().get();
    h.advance(5_000);
    assert_eq!(kind(&h.store.lookup(key).await), "valid", "stale if error");
    assert!(stale_uses().get() > before, "stale uses are counted");
    assert_eq!(kind(&h.store.lookup(revoked).await), "unavailable");
    let never_seen = crate::auth::hash("key-77");
    assert_eq!(kind(&h.store.lookup(never_seen).await), "unavailable");
    h.advance(600_000);
    assert_eq!(
        kind(&h.store.lookup(key).await),
        "unavailable",
        "stale period over"
    );
    h.down(false);
    assert_eq!(kind(&h.store.lookup(key).await), "valid");
}

#[tokio::test]
async fn a_hash_that_does_not_match_the_stored_one_is_unknown() {
    let h = Harness::new(100);
    let key = crate::auth::hash("key-5");
    let mut record = KeyRecord {
        id: 5,
        name: "k5".into(),
        role: Role::Admin,
        key_hash: key,
        revoked: false,
    };
    record.key_hash[0] ^= 1;
    h.fake.0.keys.lock().expect("lock").insert(key, record);
    assert_eq!(kind(&h.store.lookup(key).await), "unknown");
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let h = Harness::new(4);
    let valid: Vec<_> = (0..3).map(|i| h.add(i, Role::Read)).collect();
    for k in &valid {
        h.store.lookup(*k).await;
    }
    for i in 100..110 {
        h.store.lookup(crate::auth::hash(&format!("key-{i}"))).await;
        let len = h.store.inner.cache.lock().expect("lock").len();
        assert!(len <= 4, "{len} entries");
    }
    // The fresh valid keys stayed cached.
    let calls = h.calls();
    for k in &valid {
        assert_eq!(kind(&h.store.lookup(*k).await), "valid");
    }
    assert_eq!(h.calls(), calls);
}

/// A source that hangs costs a request at most `lookup_timeout`; a failing source is asked at
/// most once per key per freshness period, the stale entry answering in between.
#[tokio::test(start_paused = true)]
async fn a_hanging_source_costs_one_timeout_per_freshness_period() {
    let h = Harness::new(100);
    let key = h.add(5, Role::Ingest);
    assert_eq!(kind(&h.store.lookup(key).await), "valid");
    h.fake.0.hang.store(true, Ordering::SeqCst);
    h.advance(2_000);
    let started = tokio::time::Instant::now();
    assert_eq!(kind(&h.store.lookup(key).await), "valid", "stale entry");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "waited the lookup timeout"
    );
    assert_eq!(h.calls(), 2);
    for _ in 0..10 {
        h.advance(100);
        let started = tokio::time::Instant::now();
        assert_eq!(kind(&h.store.lookup(key).await), "valid");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no second wait within 2 s"
        );
    }
    assert_eq!(h.calls(), 2, "the source was not asked again");
    h.advance(1_000);
    assert_eq!(kind(&h.store.lookup(key).await), "valid");
    assert_eq!(h.calls(), 3, "asked again once the period passed");
    // An unknown key with the source hanging: 503 after the timeout, not a hang.
    let unknown = crate::auth::hash("key-77");
    assert_eq!(kind(&h.store.lookup(unknown).await), "unavailable");
}
