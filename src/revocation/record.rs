//! The wire form of a [`Revocation`] between replicas: one JSON object, the pub/sub message
//! and the sorted-set member alike. Values from Redis are bounded like values from a token.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::logout_token::MAX_VALUE_LEN;
use super::{Kind, Revocation};

/// Longest issuer accepted from Redis.
const MAX_ISSUER_LEN: usize = 2048;

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    kind: Kind,
    #[serde(borrow)]
    iss: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    value: Cow<'a, str>,
    at: u64,
    exp: u64,
    /// The replica that took it (so it does not count its own echo as a replica revocation).
    #[serde(default, borrow)]
    origin: Cow<'a, str>,
}

/// `r` as the JSON replicas exchange.
pub fn encode(r: &Revocation, origin: &str) -> String {
    let w = Wire {
        kind: r.kind,
        iss: Cow::Borrowed(&r.issuer),
        value: Cow::Borrowed(&r.value),
        at: r.at,
        exp: r.expires,
        origin: Cow::Borrowed(origin),
    };
    // Plain strings and integers: serialising cannot fail.
    serde_json::to_string(&w).unwrap_or_default()
}

/// A revocation read from Redis and the replica that took it; None for anything malformed.
pub fn decode(bytes: &[u8]) -> Option<(Revocation, String)> {
    let w: Wire<'_> = serde_json::from_slice(bytes).ok()?;
    let value_ok = match w.kind {
        Kind::NotBefore => w.value.is_empty(),
        Kind::Sid | Kind::Sub => !w.value.is_empty() && w.value.len() <= MAX_VALUE_LEN,
    };
    if !value_ok || w.iss.is_empty() || w.iss.len() > MAX_ISSUER_LEN || w.origin.len() > 128 {
        return None;
    }
    Some((
        Revocation {
            kind: w.kind,
            issuer: (*w.iss).into(),
            value: (*w.value).into(),
            at: w.at,
            expires: w.exp,
        },
        w.origin.into_owned(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_junk() {
        let r = Revocation {
            kind: Kind::Sid,
            issuer: "https://kc/realms/a".into(),
            value: "s\"1".into(),
            at: 5,
            expires: 10,
        };
        let (back, origin) = decode(encode(&r, "me").as_bytes()).unwrap();
        assert_eq!((back, origin.as_str()), (r, "me"));
        for junk in [
            &b"{}"[..],
            b"nope",
            br#"{"kind":"sid","iss":"i","at":1,"exp":2}"#,
            br#"{"kind":"not_before","iss":"i","value":"x","at":1,"exp":2}"#,
            br#"{"kind":"other","iss":"i","value":"x","at":1,"exp":2}"#,
        ] {
            assert!(decode(junk).is_none(), "{}", String::from_utf8_lossy(junk));
        }
    }
}
