//! The key format, its hash, and where a request carries it.

use axum::http::HeaderMap;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::Refusal;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "tly_";
/// Characters of a key after [`KEY_PREFIX`]: base64url (no padding) of 32 bytes.
const SECRET_CHARS: usize = 43;
/// Characters of a key kept for display (`api_keys.key_prefix`), e.g. `tly_AbCdEfGh`.
const DISPLAY_CHARS: usize = 12;

/// A freshly generated key: show `key` once, store `key_hash` and `key_prefix`.
pub struct NewSecret {
    /// The key, `tly_` + 43 base64url characters. Never log or store it.
    pub key: String,
    /// SHA-256 of `key`.
    pub key_hash: [u8; 32],
    /// Its first 12 characters.
    pub key_prefix: String,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// A new key from 32 bytes of the operating system's random generator. Fails only when the
/// OS cannot give randomness (then no key can be made safely).
pub fn generate() -> Result<NewSecret, std::io::Error> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| std::io::Error::other(format!("the OS random generator failed: {e}")))?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    Ok(NewSecret {
        key_hash: hash(&key),
        key_prefix: key[..DISPLAY_CHARS].to_owned(),
        key,
    })
}

/// SHA-256 of a key, as stored in `api_keys.key_hash`.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `key` has the shape of a Tally key (no lookup).
fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|s| {
        s.len() == SECRET_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// What a request's headers carry.
pub(super) enum Sent {
    /// Neither `Authorization` nor `X-API-Key`.
    Nothing,
    /// A well-formed key, as its SHA-256.
    Key([u8; 32]),
    /// Something unusable.
    Refused(Refusal),
}

/// Reads `Authorization: Bearer <key>` (scheme case-insensitive) and `X-API-Key: <key>`.
/// Both may be sent only with the same key; any other `Authorization` scheme, or a header
/// sent twice, is malformed.
pub(super) fn from_headers(headers: &HeaderMap) -> Sent {
    let bearer = match one(headers, "authorization") {
        Ok(None) => None,
        Ok(Some(v)) => match v.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => Some(key.trim()),
            _ => return Sent::Refused(Refusal::Malformed),
        },
        Err(r) => return Sent::Refused(r),
    };
    let header = match one(headers, "x-api-key") {
        Ok(v) => v.map(str::trim),
        Err(r) => return Sent::Refused(r),
    };
    let key = match (bearer, header) {
        (None, None) => return Sent::Nothing,
        (Some(a), Some(b)) if a != b => return Sent::Refused(Refusal::Conflicting),
        (Some(k), _) | (None, Some(k)) => k,
    };
    if well_formed(key) {
        Sent::Key(hash(key))
    } else {
        Sent::Refused(Refusal::Malformed)
    }
}

fn one<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::Malformed);
    }
    first.to_str().map(Some).map_err(|_| Refusal::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let (a, b) = (generate().expect("rng"), generate().expect("rng"));
        assert!(
            well_formed(&a.key) && well_formed(&b.key),
            "{}",
            a.key.len()
        );
        assert_ne!(a.key, b.key);
        assert_eq!(a.key_hash, hash(&a.key));
        assert!(a.key.starts_with(&a.key_prefix) && a.key_prefix.len() == 12);
        assert!(!format!("{a:?}").contains(&a.key));
    }

    #[test]
    fn headers_are_read() {
        let k = generate().expect("rng").key;
        let digest = hash(&k);
        let bearer = format!("Bearer {k}");
        let lower = format!("bearer {k}");
        let key = |s: Sent| match s {
            Sent::Key(d) => Some(d),
            _ => None,
        };
        let refused = |s: Sent| match s {
            Sent::Refused(r) => Some(r),
            _ => None,
        };
        assert!(matches!(from_headers(&headers(&[])), Sent::Nothing));
        assert_eq!(
            key(from_headers(&headers(&[("authorization", &bearer)]))),
            Some(digest)
        );
        assert_eq!(
            key(from_headers(&headers(&[("authorization", &lower)]))),
            Some(digest)
        );
        assert_eq!(
            key(from_headers(&headers(&[("x-api-key", &k)]))),
            Some(digest)
        );
        let both = [
            ("authorization", bearer.as_str()),
            ("x-api-key", k.as_str()),
        ];
        assert_eq!(key(from_headers(&headers(&both))), Some(digest));
        let other = generate().expect("rng").key;
        let differ = [
            ("authorization", bearer.as_str()),
            ("x-api-key", other.as_str()),
        ];
        assert_eq!(
            refused(from_headers(&headers(&differ))),
            Some(Refusal::Conflicting)
        );
        let basic = format!("Basic {k}");
        let twice = [("x-api-key", k.as_str()), ("x-api-key", k.as_str())];
        for h in [
            headers(&[("authorization", &basic)]),
            headers(&[("authorization", &k)]),
            headers(&[("x-api-key", "tly_short")]),
            headers(&[("x-api-key", &k[..k.len() - 1])]),
            headers(&[("x-api-key", &format!("{k}="))]),
            headers(&twice),
        ] {
            assert_eq!(refused(from_headers(&h)), Some(Refusal::Malformed), "{h:?}");
        }
    }
}
