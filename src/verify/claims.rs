//! The claims realmgate reads, deserialised once with a seed that keeps only what the policy
//! uses, and the issuer, time, type, audience and subject checks.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::error::AuthError;
use super::jose::BStr;
use super::settings::Policy;

#[derive(Default, Debug)]
enum Aud<'a> {
    #[default]
    None,
    One(BStr<'a>),
    Many(Vec<BStr<'a>>),
}

impl<'a> Aud<'a> {
    fn any(&self, mut f: impl FnMut(&str) -> bool) -> bool {
        match self {
            Aud::None => false,
            Aud::One(s) => f(&s.0),
            Aud::Many(v) => v.iter().any(|s| f(&s.0)),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Aud<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Aud<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Aud::One(BStr(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Aud::One(BStr(Cow::Owned(v.to_owned()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Aud::None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<BStr<'de>>()? {
                    out.push(s);
                }
                Ok(Aud::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// NumericDate (RFC 7519 §2): non-negative integer or fraction (floored).
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::custom("negative date"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if (0.0..1.8e19).contains(&v) {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(NumericDate(v.floor() as u64))
                } else {
                    Err(E::custom("bad date"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Access<'a> {
    #[serde(borrow, default)]
    roles: Roles<'a>,
}

/// A role array, pre-sized (JSON gives no length hint; Keycloak tokens carry dozens).
#[derive(Default)]
struct Roles<'a>(Vec<BStr<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Roles<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Roles<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of role names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(256));
                while let Some(s) = seq.next_element::<BStr<'de>>()? {
                    out.push(s);
                }
                Ok(Roles(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `resource_access`, keeping only the configured clients' roles.
struct ResourceAccessSeed<'p, 'c, 'a> {
    clients: &'p [Box<str>],
    out: &'c mut Vec<BStr<'a>>,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for ResourceAccessSeed<'_, '_, 'a> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ResourceAccessSeed<'_, '_, 'a> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("resource_access object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Roles come out in configured-client order, whatever the document order.
        let mut seen: u64 = 0;
        let mut parts: Vec<(usize, Vec<BStr<'a>>)> = Vec::new();
        while let Some(client) = map.next_key::<BStr<'de>>()? {
            match self.clients.iter().position(|c| **c == *client.0) {
                Some(i) => {
                    let dup = if i < 64 {
                        let d = seen & (1 << i) != 0;
                        seen |= 1 << i;
                        d
                    } else {
                        parts.iter().any(|(j, _)| *j == i)
                    };
                    if dup {
                        return Err(de::Error::custom("duplicate client in resource_access"));
                    }
                    let access: Access<'de> = map.next_value()?;
                    if self.clients.len() == 1 {
                        // The common case: one client, nothing to order, no extra Vec.
                        *self.out = access.roles.0;
                    } else {
                        parts.push((i, access.roles.0));
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        parts.sort_by_key(|(i, _)| *i);
        for (_, roles) in parts {
            if self.out.is_empty() {
                *self.out = roles;
            } else {
                self.out.extend(roles);
            }
        }
        Ok(())
    }
}

/// The claims realmgate reads. Known claims are typed; the policy's extra claims are kept as
/// JSON values; everything else is skipped without allocating.
#[derive(Default, Debug)]
pub(super) struct Claims<'a> {
    iss: Option<BStr<'a>>,
    pub(super) sub: Option<BStr<'a>>,
    pub(super) azp: Option<BStr<'a>>,
    /// Keycloak's session id (revocation by session).
    pub(super) sid: Option<BStr<'a>>,
    pub(super) typ: Option<BStr<'a>>,
    pub(super) preferred_username: Option<BStr<'a>>,
    pub(super) email: Option<BStr<'a>>,
    aud: Aud<'a>,
    pub(super) exp: Option<u64>,
    nbf: Option<u64>,
    pub(super) iat: Option<u64>,
    pub(super) realm_roles: Vec<BStr<'a>>,
    pub(super) client_roles: Vec<BStr<'a>>,
    pub(super) captured: Vec<(BStr<'a>, Value)>,
}

pub(super) struct ClaimsSeed<'p> {
    pub(super) policy: &'p Policy,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Claims<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

fn once<T, E: de::Error>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::custom(format_args!("duplicate claim {name}")));
    }
    *slot = Some(v);
    Ok(())
}

/// The typed slot of a string claim, for both ways a claim is read (streamed, or captured as
/// JSON and then filled): the one list of string claims realmgate reads.
fn string_slot<'c, 'a>(c: &'c mut Claims<'a>, name: &str) -> Option<&'c mut Option<BStr<'a>>> {
    Some(match name {
        "iss" => &mut c.iss,
        "sub" => &mut c.sub,
        "azp" => &mut c.azp,
        "sid" => &mut c.sid,
        "typ" => &mut c.typ,
        "preferred_username" => &mut c.preferred_username,
        "email" => &mut c.email,
        _ => return None,
    })
}

/// Fills a typed claim from its JSON value (for claims that are also captured).
fn fill_known<E: de::Error>(
    c: &mut Claims<'_>,
    key: &str,
    v: &Value,
    clients: &[Box<str>],
) -> Result<(), E> {
    let string = |v: &Value| -> Result<Option<BStr<'static>>, E> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(BStr(Cow::Owned(s.clone())))),
            _ => Err(E::custom("claim is not a string")),
        }
    };
    let roles = |v: Option<&Value>| -> Vec<BStr<'static>> {
        v.and_then(|r| r.get("roles"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| BStr(Cow::Owned(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let date = |v: &Value| -> Result<u64, E> {
        NumericDate::deserialize(v)
            .map(|d| d.0)
            .map_err(|_| E::custom("bad date"))
    };
    if let Some(slot) = string_slot(c, key) {
        if let Some(s) = string(v)? {
            once(slot, s, key)?;
        }
        return Ok(());
    }
    match key {
        "aud" => {
            c.aud = match v {
                Value::Null => Aud::None,
                Value::String(s) => Aud::One(BStr(Cow::Owned(s.clone()))),
                Value::Array(a) => Aud::Many(
                    a.iter()
                        .map(|x| {
                            x.as_str()
                                .map(|s| BStr(Cow::Owned(s.to_owned())))
                                .ok_or_else(|| E::custom("aud element is not a string"))
                        })
                        .collect::<Result<_, E>>()?,
                ),
                _ => return Err(E::custom("bad aud")),
            }
        }
        "exp" => once(&mut c.exp, date(v)?, key)?,
        "nbf" => once(&mut c.nbf, date(v)?, key)?,
        "iat" => once(&mut c.iat, date(v)?, key)?,
        "realm_access" => c.realm_roles = roles(Some(v)),
        "resource_access" => {
            for client in clients {
                c.client_roles.extend(roles(v.get(&**client)));
            }
        }
        _ => {}
    }
    Ok(())
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claims object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims<'de>, A::Error> {
        let mut c = Claims::default();
        let mut seen_aud = false;
        let mut seen_roles = false;
        let mut seen_clients = false;
        while let Some(key) = map.next_key::<BStr<'de>>()? {
            let k: &str = &key.0;
            if self.policy.captures(k) {
                let v: Value = map.next_value()?;
                if c.captured.iter().any(|(x, _)| *x.0 == *k) {
                    return Err(de::Error::custom("duplicate claim"));
                }
                fill_known(&mut c, k, &v, &self.policy.clients)?;
                c.captured.push((key, v));
                continue;
            }
            if let Some(slot) = string_slot(&mut c, k) {
                if let Some(v) = map.next_value::<Option<BStr<'de>>>()? {
                    once(slot, v, k)?;
                }
                continue;
            }
            match k {
                "aud" => {
                    if std::mem::replace(&mut seen_aud, true) {
                        return Err(de::Error::custom("duplicate claim aud"));
                    }
                    c.aud = map.next_value()?;
                }
                "exp" => once(&mut c.exp, map.next_value::<NumericDate>()?.0, k)?,
                "nbf" => once(&mut c.nbf, map.next_value::<NumericDate>()?.0, k)?,
                "iat" => once(&mut c.iat, map.next_value::<NumericDate>()?.0, k)?,
                "realm_access" => {
                    if std::mem::replace(&mut seen_roles, true) {
                        return Err(de::Error::custom("duplicate claim realm_access"));
                    }
                    let access: Option<Access<'de>> = map.next_value()?;
                    c.realm_roles = access.map(|a| a.roles.0).unwrap_or_default();
                }
                "resource_access" => {
                    if std::mem::replace(&mut seen_clients, true) {
                        return Err(de::Error::custom("duplicate claim resource_access"));
                    }
                    map.next_value_seed(ResourceAccessSeed {
                        clients: &self.policy.clients,
                        out: &mut c.client_roles,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(c)
    }
}

/// Issuer, time, type, audience and subject checks. Pure; shared by tests and `explain`.
pub(super) fn check_claims(
    c: &Claims<'_>,
    policy: &Policy,
    issuer: &str,
    now: u64,
) -> Result<(), AuthError> {
    match &c.iss {
        Some(iss) if *iss.0 == *issuer => {}
        _ => return Err(AuthError::IssuerMismatch),
    }
    let exp = c.exp.ok_or(AuthError::MalformedToken)?;
    if !unexpired(exp, policy.leeway, now) {
        return Err(AuthError::TokenExpired);
    }
    if c.nbf
        .is_some_and(|nbf| nbf > now.saturating_add(policy.leeway))
    {
        return Err(AuthError::TokenNotYetValid);
    }
    if c.iat
        .is_some_and(|iat| iat > now.saturating_add(policy.leeway))
    {
        return Err(AuthError::TokenIssuedInFuture);
    }
    if let Some(typ) = &c.typ {
        if !typ.0.eq_ignore_ascii_case("Bearer") {
            return Err(AuthError::WrongTokenType);
        }
    }
    let accepted = |a: &str| policy.audiences.iter().any(|x| **x == *a);
    let by_azp = policy.accept_azp && c.azp.as_ref().is_some_and(|azp| accepted(&azp.0));
    if !(c.aud.any(accepted) || by_azp) {
        return Err(AuthError::AudienceMismatch);
    }
    if c.sub.as_ref().is_none_or(|s| s.0.is_empty()) {
        return Err(AuthError::MissingSubject);
    }
    Ok(())
}

/// RFC 7519 §4.1.4: valid strictly before `exp`, plus leeway. The cache uses the same rule.
pub(super) fn unexpired(exp: u64, leeway: u64, now: u64) -> bool {
    now < exp.saturating_add(leeway)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::verify::testkit::*;
    use crate::verify::VerifySettings;
    use serde_json::json;

    #[test]
    fn claim_checks_table() {
        use AuthError::*;
        let p = Policy::compile(vs(), 1);
        let iss = "https://kc/realms/acme";
        let now = 1_000_000u64;
        let base = json!({
            "iss": iss, "sub": "u1", "aud": [AUD, "account"], "azp": AUD, "typ": "Bearer",
            "exp": now + 60, "iat": now, "nbf": now
        });
        let with = |patch: serde_json::Value| {
            let mut v = base.clone();
            for (k, val) in patch.as_object().unwrap() {
                if val.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = val.clone();
                }
            }
            v.to_string()
        };
        let cases: Vec<(serde_json::Value, Result<(), AuthError>)> = vec![
            (json!({}), Ok(())),
            (
                json!({ "iss": "https://kc/realms/other" }),
                Err(IssuerMismatch),
            ),
            (
                json!({ "iss": "https://kc/realms/acme/" }),
                Err(IssuerMismatch),
            ),
            (json!({ "iss": null }), Err(IssuerMismatch)),
            (json!({ "exp": null }), Err(MalformedToken)),
            (json!({ "exp": now - 31 }), Err(TokenExpired)),
            (json!({ "exp": now - 30 }), Err(TokenExpired)),
            (json!({ "exp": now - 29 }), Ok(())),
            (json!({ "exp": (now + 60) as f64 + 0.5 }), Ok(())),
            (json!({ "nbf": now + 31 }), Err(TokenNotYetValid)),
            (json!({ "nbf": now + 30 }), Ok(())),
            (json!({ "iat": now + 31 }), Err(TokenIssuedInFuture)),
            (json!({ "iat": now + 30 }), Ok(())),
            (json!({ "typ": "ID" }), Err(WrongTokenType)),
            (json!({ "typ": "Refresh" }), Err(WrongTokenType)),
            (json!({ "typ": "bearer" }), Ok(())),
            (json!({ "typ": null }), Ok(())),
            (
                json!({ "aud": "other", "azp": "other" }),
                Err(AudienceMismatch),
            ),
            (json!({ "aud": ["x", AUD], "azp": "other" }), Ok(())),
            (json!({ "aud": AUD, "azp": null }), Ok(())),
            // RFC 9068 §4: `aud` must name the service; `azp` alone does not.
            (json!({ "aud": null }), Err(AudienceMismatch)),
            (json!({ "aud": "account" }), Err(AudienceMismatch)),
            (json!({ "aud": null, "azp": null }), Err(AudienceMismatch)),
            (json!({ "sub": null }), Err(MissingSubject)),
            (json!({ "sub": "" }), Err(MissingSubject)),
        ];
        for (i, (patch, want)) in cases.into_iter().enumerate() {
            let doc = with(patch.clone());
            let c = parse(&p, &doc).unwrap();
            assert_eq!(check_claims(&c, &p, iss, now), want, "case {i}: {patch}");
        }
        // The documented switch for Keycloak without an audience mapper.
        let lenient = Policy::compile(
            VerifySettings {
                accept_azp_as_audience: true,
                ..vs()
            },
            1,
        );
        for (patch, want) in [
            (json!({ "aud": "account" }), Ok(())),
            (json!({ "aud": null }), Ok(())),
            (
                json!({ "aud": "account", "azp": "other" }),
                Err(AudienceMismatch),
            ),
        ] {
            let doc = with(patch.clone());
            let c = parse(&lenient, &doc).unwrap();
            assert_eq!(check_claims(&c, &lenient, iss, now), want, "{patch}");
        }
        // No audience configured: fail closed.
        let empty = Policy::compile(VerifySettings::default(), 1);
        let doc = with(json!({}));
        assert_eq!(
            check_claims(&parse(&empty, &doc).unwrap(), &empty, iss, now),
            Err(AudienceMismatch)
        );
    }

    #[test]
    fn claim_parsing_is_strict_where_it_matters() {
        let p = Policy::compile(vs(), 1);
        for bad in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"iss":"a","iss":"b"}"#,
            r#"{"exp":1,"exp":2}"#,
            r#"{"exp":-1}"#,
            r#"{"exp":"1700000000"}"#,
            r#"{"aud":"a","aud":"b"}"#,
            r#"{"aud":[1]}"#,
            r#"{"sub":5}"#,
            r#"{"realm_access":{"roles":"admin"}}"#,
            r#"[]"#,
            r#"{"sub":"a"} trailing"#,
        ] {
            assert!(parse(&p, bad).is_err(), "{bad}");
        }
        let c = parse(
            &p,
            r#"{"exp":1.9e9,"aud":["a","b"],"email":null,"x":{"deep":[1,{"y":2}]}}"#,
        )
        .unwrap();
        assert_eq!(c.exp, Some(1_900_000_000));
        assert!(c.aud.any(|a| a == "b"));
        assert!(c.email.is_none());
        // Escaped strings are decoded (owned), plain ones borrowed.
        let c = parse(&p, r#"{"sub":"a\u0041","iss":"plain"}"#).unwrap();
        assert_eq!(&*c.sub.unwrap().0, "aA");
        assert!(matches!(c.iss.unwrap().0, Cow::Borrowed("plain")));
    }
}
