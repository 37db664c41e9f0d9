//! Back-channel logout token claims (OpenID Connect Back-Channel Logout 1.0, §2.4 and §2.6).
//! Pure: the caller reads the header under the access-token rules (`Verifier::read_jws`),
//! runs these checks, and only then verifies the signature with the realm's keys (§2.6 steps
//! 1-2, `Verifier::verify_jws`), so only a plausible token can cause a JWKS refetch.
//!
//! - header `typ`: `logout+jwt` (Keycloak since PR #29260, with or without `application/`)
//!   or `JWT` (older Keycloak), or absent (explicit typing is only RECOMMENDED by §2.4);
//!   anything else (`at+jwt`, ...) is refused so no other JWT of the realm is taken as one;
//! - `iss` exactly the host's realm issuer; `aud` names a configured client;
//! - `iat` present, not in the future beyond leeway, not older than `max_age`;
//!   `exp` honoured when present;
//! - `jti` present (its replay is checked by the caller, [`super::replay`]);
//! - `events` is an object with the member `http://schemas.openid.net/event/backchannel-logout`
//!   whose value is a JSON object;
//! - `sid` or `sub` (or both); **no** `nonce` (it would make it an ID token, §2.4).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// The event member a logout token must carry.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Longest `jti`, `sid` and `sub` accepted (Keycloak's are UUIDs).
pub const MAX_VALUE_LEN: usize = 512;

/// Why a logout token was refused (400 `invalid_request` with this code as the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogoutError {
    #[error("the logout token is not a signed JWT with valid JSON claims")]
    Malformed,
    #[error("the logout token's typ header is not logout+jwt")]
    WrongType,
    #[error("the logout token was not issued by this tenant's realm")]
    Issuer,
    #[error("the logout token's aud names no configured client")]
    Audience,
    #[error("the logout token has no iat, or it is in the future or too old")]
    Time,
    #[error("the logout token expired")]
    Expired,
    #[error("the logout token has no jti")]
    MissingJti,
    #[error("the logout token has no backchannel-logout event")]
    Events,
    #[error("the logout token names neither sid nor sub")]
    NoSubject,
    #[error("a logout token must not carry a nonce")]
    Nonce,
    #[error("the logout token was already used")]
    Replayed,
}

impl LogoutError {
    /// Stable reason code (logs, the JSON body's `reason`).
    pub fn code(self) -> &'static str {
        match self {
            LogoutError::Malformed => "malformed",
            LogoutError::WrongType => "wrong_type",
            LogoutError::Issuer => "issuer_mismatch",
            LogoutError::Audience => "audience_mismatch",
            LogoutError::Time => "bad_iat",
            LogoutError::Expired => "expired",
            LogoutError::MissingJti => "missing_jti",
            LogoutError::Events => "missing_event",
            LogoutError::NoSubject => "missing_sid_and_sub",
            LogoutError::Nonce => "nonce_present",
            LogoutError::Replayed => "replayed_jti",
        }
    }
}

/// What a logout token must be checked against.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [Box<str>],
    pub now: u64,
    pub leeway: u64,
    pub max_age: u64,
}

/// A valid logout token's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    pub jti: String,
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub iat: u64,
    /// Until when this token could be accepted (for the replay set).
    pub fresh_until: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Aud {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Raw {
    iss: Option<String>,
    aud: Option<Aud>,
    iat: Option<u64>,
    exp: Option<u64>,
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
    #[serde(default)]
    events: Events,
    #[serde(default, deserialize_with = "present")]
    nonce: bool,
}

/// Whether `events` holds the back-channel logout member with an object value.
#[derive(Default)]
struct Events(bool);

impl<'de> Deserialize<'de> for Events {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Events;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an events object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Events, A::Error> {
                let mut found = false;
                while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if k == BACKCHANNEL_EVENT {
                        let v: serde_json::Value = map.next_value()?;
                        if found {
                            return Err(de::Error::custom("duplicate event"));
                        }
                        found = v.is_object();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Events(found))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Events, E> {
                Ok(Events(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// True when the member is present at all (even `null`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// The header `typ` values a logout token may carry (case-insensitive, RFC 7515 §4.1.9).
pub fn typ_accepted(typ: Option<&str>) -> bool {
    match typ {
        None => true,
        Some(t) => {
            let t = t.strip_prefix("application/").unwrap_or(t);
            t.eq_ignore_ascii_case("logout+jwt") || t.eq_ignore_ascii_case("JWT")
        }
    }
}

fn bounded(v: Option<String>) -> Result<Option<String>, LogoutError> {
    match v {
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.len() > MAX_VALUE_LEN || s.chars().any(char::is_control) => {
            Err(LogoutError::Malformed)
        }
        other => Ok(other),
    }
}

/// Validates a logout token's verified header `typ` and claims (§2.6 steps 3-6).
pub fn validate(
    typ: Option<&str>,
    payload: &[u8],
    x: &Expect<'_>,
) -> Result<LogoutToken, LogoutError> {
    if !typ_accepted(typ) {
        return Err(LogoutError::WrongType);
    }
    let raw: Raw = serde_json::from_slice(payload).map_err(|_| LogoutError::Malformed)?;
    if raw.iss.as_deref() != Some(x.issuer) {
        return Err(LogoutError::Issuer);
    }
    let accepted = |a: &str| x.audiences.iter().any(|c| **c == *a);
    let aud_ok = match &raw.aud {
        Some(Aud::One(a)) => accepted(a),
        Some(Aud::Many(v)) => v.iter().any(|a| accepted(a)),
        None => false,
    };
    if !aud_ok {
        return Err(LogoutError::Audience);
    }
    let iat = raw.iat.ok_or(LogoutError::Time)?;
    if iat > x.now.saturating_add(x.leeway)
        || iat.saturating_add(x.max_age).saturating_add(x.leeway) < x.now
    {
        return Err(LogoutError::Time);
    }
    let mut fresh_until = iat.saturating_add(x.max_age).saturating_add(x.leeway);
    if let Some(exp) = raw.exp {
        if x.now >= exp.saturating_add(x.leeway) {
            return Err(LogoutError::Expired);
        }
        fresh_until = fresh_until.min(exp.saturating_add(x.leeway));
    }
    if raw.nonce {
        return Err(LogoutError::Nonce);
    }
    if !raw.events.0 {
        return Err(LogoutError::Events);
    }
    let jti = bounded(raw.jti)?.ok_or(LogoutError::MissingJti)?;
    let sid = bounded(raw.sid)?;
    let sub = bounded(raw.sub)?;
    if sid.is_none() && sub.is_none() {
        return Err(LogoutError::NoSubject);
    }
    Ok(LogoutToken {
        jti,
        sid,
        sub,
        iat,
        fresh_until,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const ISS: &str = "https://kc/realms/acme";

    fn good() -> Value {
        json!({
            "iss": ISS, "aud": "backend", "iat": 1000, "exp": 1120, "jti": "j1",
            "sid": "s1", "sub": "u1", "typ": "Logout",
            "events": {BACKCHANNEL_EVENT: {"revoke_offline_access": true}},
        })
    }

    fn check(v: &Value) -> Result<LogoutToken, LogoutError> {
        let aud: Vec<Box<str>> = vec!["backend".into()];
        let x = Expect {
            issuer: ISS,
            audiences: &aud,
            now: 1010,
            leeway: 5,
            max_age: 120,
        };
        validate(Some("logout+jwt"), v.to_string().as_bytes(), &x)
    }

    fn with(k: &str, v: Value) -> Value {
        let mut c = good();
        c[k] = v;
        c
    }

    fn without(k: &str) -> Value {
        let mut c = good();
        c.as_object_mut().unwrap().remove(k);
        c
    }

    #[test]
    fn a_keycloak_logout_token_is_accepted() {
        let t = check(&good()).unwrap();
        assert_eq!(
            (t.jti.as_str(), t.sid.as_deref(), t.sub.as_deref(), t.iat),
            ("j1", Some("s1"), Some("u1"), 1000)
        );
        assert_eq!(
            t.fresh_until, 1125,
            "exp + leeway is sooner than iat + max_age"
        );
        assert!(check(&without("sid")).is_ok());
        assert!(check(&without("sub")).is_ok());
        assert!(check(&without("exp")).is_ok());
        assert!(check(&with("aud", json!(["other", "backend"]))).is_ok());
    }

    #[test]
    fn every_rule_of_section_2_6_is_enforced() {
        use LogoutError::*;
        for (c, want) in [
            (with("nonce", json!("n")), Nonce),
            (with("nonce", json!(null)), Nonce),
            (without("events"), Events),
            (with("events", json!({})), Events),
            (with("events", json!({BACKCHANNEL_EVENT: "yes"})), Events),
            (with("events", json!([BACKCHANNEL_EVENT])), Malformed),
            (with("aud", json!("other")), Audience),
            (without("aud"), Audience),
            (with("iss", json!("https://kc/realms/other")), Issuer),
            (without("iss"), Issuer),
            (with("iat", json!(1016)), Time),
            (with("iat", json!(800)), Time),
            (without("iat"), Time),
            (with("exp", json!(1005)), Expired),
            (without("jti"), MissingJti),
            (with("jti", json!("")), MissingJti),
            (with("sid", json!("x".repeat(600))), Malformed),
            (with("sub", json!(5)), Malformed),
        ] {
            assert_eq!(check(&c), Err(want), "{c}");
        }
        let mut neither = without("sid");
        neither.as_object_mut().unwrap().remove("sub");
        assert_eq!(check(&neither), Err(NoSubject));
        assert_eq!(
            validate(
                Some("at+jwt"),
                good().to_string().as_bytes(),
                &Expect {
                    issuer: ISS,
                    audiences: &["backend".into()],
                    now: 1010,
                    leeway: 5,
                    max_age: 120,
                }
            ),
            Err(WrongType)
        );
        let dup = r#"{"iss":"a","iss":"b"}"#;
        assert_eq!(
            validate(
                None,
                dup.as_bytes(),
                &Expect {
                    issuer: ISS,
                    audiences: &[],
                    now: 0,
                    leeway: 0,
                    max_age: 0,
                }
            ),
            Err(Malformed)
        );
    }

    #[test]
    fn typ_values() {
        for t in [
            None,
            Some("logout+jwt"),
            Some("application/logout+jwt"),
            Some("JWT"),
            Some("jwt"),
        ] {
            assert!(typ_accepted(t), "{t:?}");
        }
        for t in [Some("at+jwt"), Some(""), Some("secevent+jwt")] {
            assert!(!typ_accepted(t), "{t:?}");
        }
    }
}
