//! Finding the access token in a request: `Authorization: Bearer`, a cookie, or the
//! `access_token` query parameter, one method per request.

use http::HeaderMap;

use super::error::AuthError;

/// Default cap on a token's size; bigger ones are `token_too_large` (401), never a 500.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Finds the request's access token: `Authorization: Bearer <t>` (scheme case-insensitive,
/// exactly one Authorization header), else the configured cookie, else the `access_token`
/// query parameter when `allow_query`. A header (or cookie) token together with a query token
/// is malformed (RFC 6750 §2: one method per request). Tokens over `max_token_bytes` are
/// `token_too_large`. `Ok(None)`: no token at all.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    cookie: Option<&str>,
    query: Option<&'a str>,
    allow_query: bool,
    max_token_bytes: usize,
) -> Result<Option<&'a str>, AuthError> {
    let sized = |t: &'a str| -> Result<Option<&'a str>, AuthError> {
        if t.len() > max_token_bytes {
            Err(AuthError::TokenTooLarge)
        } else if t.is_empty() {
            Err(AuthError::MalformedToken)
        } else {
            Ok(Some(t))
        }
    };
    let query_token = match (allow_query, query) {
        (true, Some(q)) => query_param(q, "access_token")?,
        _ => None,
    };
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    let from_header = match (auth.next(), auth.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(AuthError::MalformedToken),
        (Some(v), None) => {
            if v.len() > max_token_bytes + 64 {
                return Err(AuthError::TokenTooLarge);
            }
            // UTF-8 rather than `to_str`'s visible-ASCII walk: anything but base64url and
            // dots fails decoding anyway, and this check is vectorised.
            let s = std::str::from_utf8(v.as_bytes()).map_err(|_| AuthError::MalformedToken)?;
            let (scheme, rest) = s
                .trim_start()
                .split_once(' ')
                .ok_or(AuthError::MalformedToken)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::MalformedToken);
            }
            let t = rest.trim_matches(|c| c == ' ' || c == '\t');
            // memchr: a char-set `contains` walks a ~1 KiB token a char at a time.
            if memchr::memchr2(b' ', b'\t', t.as_bytes()).is_some() {
                return Err(AuthError::MalformedToken);
            }
            Some(t)
        }
    };
    let from_cookie = match (from_header, cookie) {
        (None, Some(name)) => cookie_value(headers, name)?,
        _ => None,
    };
    match (from_header.or(from_cookie), query_token) {
        (Some(_), Some(_)) => Err(AuthError::MalformedToken),
        (Some(t), None) | (None, Some(t)) => sized(t),
        (None, None) => Ok(None),
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if found.is_some() {
                return Err(AuthError::MalformedToken);
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = None;
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for pair in s.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k.trim() == name {
                if found.is_some() {
                    // Two cookies of that name (e.g. one planted from a sibling domain):
                    // ambiguous, so refuse rather than guess.
                    return Err(AuthError::MalformedToken);
                }
                let v = v.trim();
                found = Some(
                    v.strip_prefix('"')
                        .and_then(|x| x.strip_suffix('"'))
                        .unwrap_or(v),
                );
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::verify::testkit::*;

    #[test]
    fn extraction_table() {
        use AuthError::*;
        let big = "a".repeat(64 * 1024);
        let bearer_big = format!("Bearer {big}");
        let big_header = [("authorization", bearer_big.as_str())];
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            Option<&'a str>,
            bool,
            Result<Option<&'a str>, AuthError>,
        );
        let cases: Vec<Case<'_>> = vec![
            (&[], None, None, false, Ok(None)),
            (
                &[("authorization", "Bearer abc.def.ghi")],
                None,
                None,
                false,
                Ok(Some("abc.def.ghi")),
            ),
            (
                &[("authorization", "bearer abc")],
                None,
                None,
                false,
                Ok(Some("abc")),
            ),
            (
                &[("authorization", "BEARER   abc  ")],
                None,
                None,
                false,
                Ok(Some("abc")),
            ),
            (
                &[("authorization", "Bearer")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer ")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer a b")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Basic dXNlcjpwYXNz")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (&big_header, None, None, false, Err(TokenTooLarge)),
            // Cookie: used only without an Authorization header; duplicates are refused.
            (
                &[("cookie", "a=1; rg_token=tok; b=2")],
                Some("rg_token"),
                None,
                false,
                Ok(Some("tok")),
            ),
            (
                &[("cookie", "rg_token=\"tok\"")],
                Some("rg_token"),
                None,
                false,
                Ok(Some("tok")),
            ),
            (
                &[("cookie", "rg_token=tok"), ("authorization", "Bearer hdr")],
                Some("rg_token"),
                None,
                false,
                Ok(Some("hdr")),
            ),
            (
                &[("cookie", "rg_token=a"), ("cookie", "rg_token=b")],
                Some("rg_token"),
                None,
                false,
                Err(MalformedToken),
            ),
            (&[("cookie", "rg_token=tok")], None, None, false, Ok(None)),
            (
                &[("cookie", "other=tok")],
                Some("rg_token"),
                None,
                false,
                Ok(None),
            ),
            // Query: only when allowed; never together with a header token.
            (&[], None, Some("x=1&access_token=q"), false, Ok(None)),
            (&[], None, Some("x=1&access_token=q"), true, Ok(Some("q"))),
            (
                &[],
                None,
                Some("access_token=a&access_token=b"),
                true,
                Err(MalformedToken),
            ),
            (&[], None, Some("access_token="), true, Err(MalformedToken)),
            (
                &[("authorization", "Bearer h")],
                None,
                Some("access_token=q"),
                true,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer h")],
                None,
                Some("access_token=q"),
                false,
                Ok(Some("h")),
            ),
        ];
        for (i, (hs, cookie, query, allow, want)) in cases.into_iter().enumerate() {
            let h = headers(hs);
            assert_eq!(
                extract_token(&h, cookie, query, allow, 16 * 1024),
                want,
                "case {i}"
            );
        }
        let q = format!("access_token={big}");
        assert_eq!(
            extract_token(&HeaderMap::new(), None, Some(&q), true, 16 * 1024),
            Err(TokenTooLarge)
        );
        let h = headers(&[("cookie", &format!("t={big}"))]);
        assert_eq!(
            extract_token(&h, Some("t"), None, false, 16 * 1024),
            Err(TokenTooLarge)
        );
    }
}
