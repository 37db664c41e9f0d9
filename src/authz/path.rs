//! Request-path canonicalisation: a security boundary.
//!
//! Path-confusion bypasses (oauth2-proxy, Istio, Caddy, Keycloak's policy enforcer) all come
//! from the gateway authorising one reading of a path while the backend acts on another
//! (`%2F`, `;` parameters, `..`, `//`, `#`/`%23`, query confusion). realmgate decides the exact
//! path once with [`canonicalize`], authorises that path, and forwards that same path.
//!
//! The canonical form of an origin-form request-target `/path?query`:
//! * Percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!   valid escape is kept, with uppercase hex (`%2f` is refused, `%20` stays `%20`).
//! * Raw characters that RFC 3986 does not allow in a path but that are harmless once encoded
//!   (`" < > [ ] ^ ` { | }`) are percent-encoded, so raw and encoded spellings converge.
//! * Refused (HTTP 400, code `invalid_path`): an encoded `/`; raw or encoded `\`; raw or
//!   encoded NUL/control characters; raw or encoded `;` (path parameters); raw or encoded `#`;
//!   `.` and `..` segments in any spelling; malformed escapes; raw non-ASCII bytes and spaces;
//!   a target not starting with `/` (absolute-form, asterisk-form).
//! * Also refused, because a stack that decodes twice or leniently reads them as something
//!   else (`/`, `.`, `\`): an escaped `%` followed by two hex digits (`%252F`, `%25%32%46`;
//!   allowed only with [`DoubleEncoding::Allow`]), and escapes whose bytes are not valid
//!   shortest-form UTF-8 (overlong `%C0%AF`, `%E0%80%AF`, stray continuation bytes `%80`,
//!   truncated sequences, surrogates `%ED%A0%80`, bytes above U+10FFFF).
//! * Repeated slashes are merged (`//a///b` -> `/a/b`) or refused, per [`SlashPolicy`]. A
//!   single trailing slash is kept as sent.
//! * The query is passed through untouched and never takes part in matching. It is only
//!   checked for raw `#`, spaces and control characters, which no valid request-target holds.
//!
//! The canonical form is idempotent: canonicalising it again returns it unchanged.

use std::borrow::Cow;

use serde::Deserialize;

/// What to do with empty segments (`//`) inside a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlashPolicy {
    /// `//a///b` becomes `/a/b`; the merged path is both authorised and forwarded, so a backend
    /// that would treat `//admin` differently from `/admin` never sees the doubled form.
    #[default]
    Merge,
    /// Refuse with 400.
    Reject,
}

/// What to do with an escaped `%` followed by two hex digits (`%252F`): text a backend that
/// decodes once reads as `%2F`, but one that decodes twice reads as `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DoubleEncoding {
    /// Refuse with 400 (`invalid_path`, reason `double_encoding`).
    #[default]
    Reject,
    /// Forward unchanged, for backends that need a literal `%xx` in a segment and decode
    /// exactly once.
    Allow,
}

/// Everything [`canonicalize`] needs to decide a path. A bare [`SlashPolicy`] converts into
/// it with the strict defaults for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathRules {
    pub slashes: SlashPolicy,
    pub double_encoding: DoubleEncoding,
}

impl From<SlashPolicy> for PathRules {
    fn from(slashes: SlashPolicy) -> Self {
        PathRules {
            slashes,
            double_encoding: DoubleEncoding::Reject,
        }
    }
}

/// Path handling options (config `paths:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathOptions {
    pub slashes: SlashPolicy,
    /// Route matching only (the forwarded path is never rewritten for case); see
    /// `RouteTable::build` for why `false` is safe only in the stricter direction.
    pub case_sensitive: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            slashes: SlashPolicy::Merge,
            case_sensitive: true,
        }
    }
}

/// Why a request-target was refused. Every variant maps to HTTP 400 with the stable code
/// `invalid_path`; [`PathError::reason`] is the specific cause for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request target must be an origin-form path starting with '/'")]
    NotOriginForm,
    #[error("encoded '/' (%2F) in path")]
    EncodedSlash,
    #[error("backslash in path")]
    Backslash,
    #[error("control character in request target")]
    ControlCharacter,
    #[error("';' (path parameter) in path")]
    PathParameter,
    #[error("'#' (fragment) in request target")]
    Fragment,
    #[error("'.' or '..' segment in path")]
    DotSegment,
    #[error("malformed percent-escape in path")]
    InvalidEscape,
    #[error("raw non-ASCII byte in path")]
    NonAscii,
    #[error("raw space in request target")]
    Space,
    #[error("repeated '/' in path")]
    RepeatedSlash,
    #[error("double-encoded percent-escape (%25 followed by two hex digits) in path")]
    DoubleEncoding,
    #[error("percent-escapes in path are not valid shortest-form UTF-8")]
    InvalidUtf8,
}

impl PathError {
    /// Stable client-facing code, the same for every variant.
    pub fn code(&self) -> &'static str {
        "invalid_path"
    }

    pub fn status(&self) -> u16 {
        400
    }

    /// Stable snake_case cause for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::NotOriginForm => "not_origin_form",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
            PathError::ControlCharacter => "control_character",
            PathError::PathParameter => "path_parameter",
            PathError::Fragment => "fragment",
            PathError::DotSegment => "dot_segment",
            PathError::InvalidEscape => "invalid_escape",
            PathError::NonAscii => "non_ascii",
            PathError::Space => "space",
            PathError::RepeatedSlash => "repeated_slash",
            PathError::DoubleEncoding => "double_encoding",
            PathError::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// The decided path of a request: authorise [`CanonicalPath::path`], forward
/// [`CanonicalPath::request_target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    path: Cow<'a, str>,
    query: Option<&'a [u8]>,
    target: &'a [u8],
}

impl<'a> CanonicalPath<'a> {
    /// Always starts with `/`; ASCII only.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query after `?`, untouched (`None` when there was no `?`).
    pub fn query(&self) -> Option<&'a [u8]> {
        self.query
    }

    /// The query as text when it is valid UTF-8.
    pub fn query_str(&self) -> Option<&'a str> {
        self.query.and_then(|q| std::str::from_utf8(q).ok())
    }

    /// True when the path differs from what the client sent; the upstream request must then be
    /// rewritten with [`CanonicalPath::request_target`].
    pub fn is_rewritten(&self) -> bool {
        matches!(self.path, Cow::Owned(_))
    }

    /// `path[?query]` to forward: the client's bytes when nothing changed.
    pub fn request_target(&self) -> Cow<'a, [u8]> {
        match (&self.path, self.query) {
            (Cow::Borrowed(_), _) => Cow::Borrowed(self.target),
            (Cow::Owned(p), None) => Cow::Owned(p.as_bytes().to_vec()),
            (Cow::Owned(p), Some(q)) => {
                let mut v = Vec::with_capacity(p.len() + 1 + q.len());
                v.extend_from_slice(p.as_bytes());
                v.push(b'?');
                v.extend_from_slice(q);
                Cow::Owned(v)
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Allowed raw in a canonical path segment besides unreserved: sub-delims without `;`, `:`, `@`.
const fn raw_ok(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Bytes that may appear raw, unchanged, in a canonical segment.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = unreserved(b) || raw_ok(b);
        i += 1;
    }
    t
};

fn dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// The common case in one pass: only plain bytes, no empty or dot segments. Returns false for
/// anything else (escapes, rewrites, errors), which then takes the full path.
fn already_canonical(path: &[u8]) -> bool {
    let mut seg_start = 1;
    for i in 1..path.len() {
        let b = path[i];
        if b == b'/' {
            if i == seg_start || dot_segment(&path[seg_start..i]) {
                return false;
            }
            seg_start = i + 1;
        } else if !PLAIN[usize::from(b)] {
            return false;
        }
    }
    !dot_segment(path.get(seg_start..).unwrap_or_default())
}

/// Refusals shared by raw and decoded bytes.
fn forbidden(b: u8) -> Option<PathError> {
    match b {
        b'\\' => Some(PathError::Backslash),
        b';' => Some(PathError::PathParameter),
        b'#' => Some(PathError::Fragment),
        0x00..=0x1F | 0x7F => Some(PathError::ControlCharacter),
        _ => None,
    }
}

fn push_escaped(out: &mut Option<&mut String>, v: u8) {
    if let Some(o) = out.as_deref_mut() {
        o.push('%');
        o.push(char::from(HEX[usize::from(v >> 4)]));
        o.push(char::from(HEX[usize::from(v & 0xF)]));
    }
}

fn push(out: &mut Option<&mut String>, b: u8) {
    if let Some(o) = out.as_deref_mut() {
        o.push(char::from(b));
    }
}

/// Checks that a segment's decoded bytes are valid shortest-form UTF-8 (RFC 3629), one byte at
/// a time so nothing is buffered. Lenient decoders read overlong forms such as `%C0%AF` as
/// `/`, so anything but the one valid spelling of a character is refused.
#[derive(Default)]
struct Utf8Check {
    /// Continuation bytes still expected.
    need: u8,
    /// Allowed range of the next continuation byte (narrower right after some lead bytes).
    lo: u8,
    hi: u8,
}

impl Utf8Check {
    fn step(&mut self, b: u8) -> Result<(), PathError> {
        if self.need > 0 {
            if b < self.lo || b > self.hi {
                return Err(PathError::InvalidUtf8);
            }
            self.need -= 1;
            (self.lo, self.hi) = (0x80, 0xBF);
            return Ok(());
        }
        let (need, lo, hi) = match b {
            0x00..=0x7F => return Ok(()),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            // Excludes overlong three-byte forms.
            0xE0 => (2, 0xA0, 0xBF),
            // Excludes the UTF-16 surrogates U+D800..U+DFFF.
            0xED => (2, 0x80, 0x9F),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            // Excludes overlong four-byte forms.
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            // Excludes code points above U+10FFFF.
            0xF4 => (3, 0x80, 0x8F),
            // Stray continuation bytes, overlong two-byte leads C0/C1, F5..FF.
            _ => return Err(PathError::InvalidUtf8),
        };
        *self = Utf8Check { need, lo, hi };
        Ok(())
    }

    fn finish(&self) -> Result<(), PathError> {
        if self.need == 0 {
            Ok(())
        } else {
            Err(PathError::InvalidUtf8)
        }
    }
}

/// Validates one non-empty segment, writing its canonical form to `out` when given. Returns
/// whether the canonical form differs from the input.
fn segment(
    seg: &[u8],
    double: DoubleEncoding,
    mut out: Option<&mut String>,
) -> Result<bool, PathError> {
    let mut rewrite = false;
    let mut decoded_len = 0usize;
    let mut dots = 0usize;
    let mut utf8 = Utf8Check::default();
    // Hex digits decoded since the last decoded '%' (0 = none pending). A raw '%' always starts
    // an escape, so a decoded '%' can only come from `%25`.
    let mut after_pct = 0u8;
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        let value = if b == b'%' {
            let hi = seg.get(i + 1).copied().ok_or(PathError::InvalidEscape)?;
            let lo = seg.get(i + 2).copied().ok_or(PathError::InvalidEscape)?;
            let v = match (hex_val(hi), hex_val(lo)) {
                (Some(h), Some(l)) => (h << 4) | l,
                _ => return Err(PathError::InvalidEscape),
            };
            if v == b'/' {
                return Err(PathError::EncodedSlash);
            }
            if let Some(e) = forbidden(v) {
                return Err(e);
            }
            if unreserved(v) {
                rewrite = true;
                push(&mut out, v);
            } else {
                if hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
                    rewrite = true;
                }
                push_escaped(&mut out, v);
            }
            i += 3;
            v
        } else {
            if let Some(e) = forbidden(b) {
                return Err(e);
            }
            if unreserved(b) || raw_ok(b) {
                push(&mut out, b);
            } else if b == b' ' {
                return Err(PathError::Space);
            } else if b >= 0x80 {
                return Err(PathError::NonAscii);
            } else {
                // `" < > [ ] ^ ` { | }`: not legal raw, harmless encoded.
                rewrite = true;
                push_escaped(&mut out, b);
            }
            i += 1;
            b
        };
        decoded_len += 1;
        if value == b'.' {
            dots += 1;
        }
        utf8.step(value)?;
        if value == b'%' {
            after_pct = 1;
        } else if after_pct > 0 && value.is_ascii_hexdigit() {
            after_pct += 1;
            if after_pct == 3 && double == DoubleEncoding::Reject {
                return Err(PathError::DoubleEncoding);
            }
        } else {
            after_pct = 0;
        }
    }
    utf8.finish()?;
    if decoded_len == dots && decoded_len <= 2 {
        return Err(PathError::DotSegment);
    }
    Ok(rewrite)
}

/// Walks the path (starting with `/`, no query). Without `out` it stops at the first needed
/// rewrite (the caller then runs again with `out`, which re-validates everything).
fn scan(path: &[u8], rules: PathRules, mut out: Option<&mut String>) -> Result<bool, PathError> {
    let body = path.get(1..).unwrap_or_default();
    let mut rewrite = false;
    let mut segs = body.split(|&b| b == b'/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        if seg.is_empty() {
            if last {
                // Root `/` or a single trailing slash: kept.
                push(&mut out, b'/');
                continue;
            }
            match rules.slashes {
                SlashPolicy::Reject => return Err(PathError::RepeatedSlash),
                SlashPolicy::Merge => {
                    rewrite = true;
                    if out.is_none() {
                        return Ok(true);
                    }
                    continue;
                }
            }
        }
        push(&mut out, b'/');
        if segment(seg, rules.double_encoding, out.as_deref_mut())? {
            rewrite = true;
            if out.is_none() {
                return Ok(true);
            }
        }
    }
    Ok(rewrite)
}

fn check_query(q: &[u8]) -> Result<(), PathError> {
    for &b in q {
        match b {
            b'#' => return Err(PathError::Fragment),
            b' ' => return Err(PathError::Space),
            0x00..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
            _ => {}
        }
    }
    Ok(())
}

/// Canonicalises a raw origin-form request-target (`/path?query`). Allocates only when the path
/// has to be rewritten. `rules` is a [`PathRules`] or just a [`SlashPolicy`] (strict otherwise).
pub fn canonicalize(
    target: &[u8],
    rules: impl Into<PathRules>,
) -> Result<CanonicalPath<'_>, PathError> {
    let rules = rules.into();
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    if path.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if let Some(q) = query {
        check_query(q)?;
    }
    let path = if already_canonical(path) {
        Cow::Borrowed(std::str::from_utf8(path).map_err(|_| PathError::NonAscii)?)
    } else if scan(path, rules, None)? {
        let mut s = String::with_capacity(path.len() + 8);
        scan(path, rules, Some(&mut s))?;
        Cow::Owned(s)
    } else {
        // Every byte was checked to be ASCII above.
        Cow::Borrowed(std::str::from_utf8(path).map_err(|_| PathError::NonAscii)?)
    };
    Ok(CanonicalPath {
        path,
        query,
        target,
    })
}

/// Route patterns reuse the path rules: a literal pattern segment must be valid in a canonical
/// path. Returns the segment's decoded bytes (what literal matching compares). A `%25xx` in a
/// pattern is the operator's own text, not an attack, so it is allowed (it can only match when
/// `paths.double_encoding` allows such requests).
pub(crate) fn literal_segment(seg: &str) -> Result<Vec<u8>, PathError> {
    segment(seg.as_bytes(), DoubleEncoding::Allow, None)?;
    Ok(decoded(seg.as_bytes()).collect())
}

/// The bytes a backend sees after percent-decoding a (canonical) segment. Malformed escapes,
/// which canonical segments never contain, are passed through as-is.
pub(crate) fn decoded(seg: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *seg.get(i)?;
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                seg.get(i + 1).copied().and_then(hex_val),
                seg.get(i + 2).copied().and_then(hex_val),
            ) {
                i += 3;
                return Some((h << 4) | l);
            }
        }
        i += 1;
        Some(b)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> Result<String, PathError> {
        canonicalize(s.as_bytes(), SlashPolicy::Merge).map(|c| c.path().to_owned())
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        for s in [
            "/",
            "/api/v1/users",
            "/api/v1/users/",
            "/a%20b",
            "/a%C3%A9",
            "/x:y@z!$&'()*+,=",
            "/...",
            "/.well-known/x",
            "/a..b",
            "/%25",
            "/%3F",
        ] {
            let c = canonicalize(s.as_bytes(), SlashPolicy::Merge).unwrap();
            assert_eq!(c.path(), s);
            assert!(!c.is_rewritten(), "{s}");
            assert!(matches!(c.request_target(), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn rewrites() {
        let cases = [
            ("//a///b", "/a/b"),
            ("//", "/"),
            ("///", "/"),
            ("/a//", "/a/"),
            ("//a//b//", "/a/b/"),
            ("/%61%62%63", "/abc"),
            ("/%7e%7E%2d%5F%2E%2e%2Ex", "/~~-_...x"),
            ("/a%2e", "/a."),
            ("/a%20b%c3%a9", "/a%20b%C3%A9"),
            ("/a%3a", "/a%3A"),
            ("/%7b%7d", "/%7B%7D"),
            ("/{id}", "/%7Bid%7D"),
            ("/a|b^c`d\"e<f>g[h]", "/a%7Cb%5Ec%60d%22e%3Cf%3Eg%5Bh%5D"),
        ];
        for (input, want) in cases {
            let c = canonicalize(input.as_bytes(), SlashPolicy::Merge).unwrap();
            assert_eq!(c.path(), want, "{input}");
            assert!(c.is_rewritten(), "{input}");
        }
    }

    #[test]
    fn attacks_are_refused() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("/api%2Fadmin", EncodedSlash),
            ("/api%2fadmin", EncodedSlash),
            ("/a/%2F/b", EncodedSlash),
            ("/api\\admin", Backslash),
            ("/api%5cadmin", Backslash),
            ("/api%5Cadmin", Backslash),
            ("/a%00", ControlCharacter),
            ("/a\0", ControlCharacter),
            ("/a%0d%0aSet-Cookie:x", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a%7F", ControlCharacter),
            ("/a\x7f", ControlCharacter),
            ("/a%1f", ControlCharacter),
            ("/admin;x=1", PathParameter),
            ("/admin;", PathParameter),
            ("/admin%3B", PathParameter),
            ("/admin%3bjsessionid=1", PathParameter),
            ("/admin#x", Fragment),
            ("/admin%23x", Fragment),
            ("/public/../admin", DotSegment),
            ("/public/..", DotSegment),
            ("/public/.", DotSegment),
            ("/./admin", DotSegment),
            ("/%2e%2e/admin", DotSegment),
            ("/%2E%2E/admin", DotSegment),
            ("/.%2E/admin", DotSegment),
            ("/%2e./admin", DotSegment),
            ("/%2e/admin", DotSegment),
            ("/a/%2e", DotSegment),
            ("/a/../", DotSegment),
            ("/a%", InvalidEscape),
            ("/a%2", InvalidEscape),
            ("/a%zz", InvalidEscape),
            ("/a%g0", InvalidEscape),
            ("/a%%32F", InvalidEscape),
            ("/é", NonAscii),
            ("/a b", Space),
            ("", NotOriginForm),
            ("*", NotOriginForm),
            ("api/x", NotOriginForm),
            ("http://evil/admin", NotOriginForm),
            ("?x=/admin", NotOriginForm),
            ("/a?x=1#frag", Fragment),
            ("/a?x=1 2", Space),
            ("/a?x=%00\r\n", ControlCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(canon(input), Err(*want), "{input:?}");
            assert_eq!(want.code(), "invalid_path");
            assert_eq!(want.status(), 400);
        }
        assert_eq!(
            canonicalize(&[b'/', 0xC3, 0xA9], SlashPolicy::Merge),
            Err(NonAscii)
        );
        assert_eq!(
            canonicalize(&[b'/', 0xFF], SlashPolicy::Merge),
            Err(NonAscii)
        );
    }

    const ALLOW_DOUBLE: PathRules = PathRules {
        slashes: SlashPolicy::Merge,
        double_encoding: DoubleEncoding::Allow,
    };

    #[test]
    fn double_encoding_is_refused_by_default() {
        // A stack that decodes twice reads each of these as `/`, `.`, `\\` or NUL.
        for s in [
            "/admin%252F..",
            "/a%252Fb",
            "/a%252fb",
            "/%252e%252e/admin",
            "/%252E",
            "/a%255Cb",
            "/a%2500",
            "/a%25%32%46",
            "/a%25%32F",
            "/a%252%46",
            "/a%2525252F",
            "/a%2541",
            "/x%25aa",
        ] {
            assert_eq!(canon(s), Err(PathError::DoubleEncoding), "{s}");
        }
        // A literal percent sign not followed by two hex digits is no second escape.
        for s in [
            "/%25", "/100%25", "/a%25zz", "/a%25a", "/a%25/2F", "/a%25-2F", "/%25%25",
        ] {
            assert!(canon(s).is_ok(), "{s}");
        }
        // The query is never decoded for matching and stays untouched.
        assert!(canon("/a?x=%252F").is_ok());
    }

    #[test]
    fn double_encoding_can_be_allowed_and_stays_encoded_once() {
        // With the switch on, `%252F` is the text "%2F" for a backend that decodes once; it
        // must not become '/'.
        let c = |s: &str| {
            canonicalize(s.as_bytes(), ALLOW_DOUBLE)
                .map(|c| c.path().to_owned())
                .unwrap()
        };
        assert_eq!(c("/a%252Fb"), "/a%252Fb");
        assert_eq!(c("/%252e%252e/x"), "/%252e%252e/x");
        assert_eq!(c("/a%25%32%46"), "/a%252F");
        // The other rules still apply.
        assert_eq!(
            canonicalize(b"/a%2Fb", ALLOW_DOUBLE),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            canonicalize(b"/a%C0%AF", ALLOW_DOUBLE),
            Err(PathError::InvalidUtf8)
        );
        let rules: PathRules = SlashPolicy::Reject.into();
        assert_eq!(rules.double_encoding, DoubleEncoding::Reject);
        assert_eq!(PathRules::default().double_encoding, DoubleEncoding::Reject);
    }

    #[test]
    fn escapes_must_be_shortest_form_utf8() {
        for s in [
            "/a%C0%AF",         // overlong '/'
            "/a%c0%ae%c0%ae/x", // overlong '..'
            "/a%C1%9C",         // overlong '\\'
            "/a%E0%80%AF",      // overlong three-byte '/'
            "/a%F0%80%80%AF",   // overlong four-byte '/'
            "/a%80",            // stray continuation byte
            "/a%BF",            // stray continuation byte
            "/a%C3",            // truncated two-byte sequence
            "/a%E2%82",         // truncated three-byte sequence
            "/a%C3/%A9",        // split across segments
            "/a%C3a",           // interrupted by a raw byte
            "/a%C3%C3%A9",      // interrupted by a lead byte
            "/a%ED%A0%80",      // surrogate U+D800
            "/a%ED%BF%BF",      // surrogate U+DFFF
            "/a%F4%90%80%80",   // above U+10FFFF
            "/a%F5%80%80%80",   // invalid lead byte
            "/a%FF",
            "/a%FE",
            "/a%E9", // Latin-1 'é'
        ] {
            assert_eq!(canon(s), Err(PathError::InvalidUtf8), "{s}");
        }
        for s in [
            "/a%C3%A9", // é
            "/a%C2%80", // U+0080, the smallest two-byte form
            "/a%DF%BF",
            "/a%E0%A0%80", // U+0800
            "/a%ED%9F%BF", // U+D7FF, just below the surrogates
            "/a%EE%80%80", // U+E000, just above
            "/a%EF%BF%BF",
            "/a%F0%90%80%80",  // U+10000
            "/a%F4%8F%BF%BF",  // U+10FFFF
            "/a%E2%82%AC%20b", // € then a space
        ] {
            assert!(canon(s).is_ok(), "{s}");
        }
        assert_eq!(canon("/a%c3%a9").unwrap(), "/a%C3%A9");
        // Route literals follow the same UTF-8 rule.
        assert_eq!(
            literal_segment("a%C0%AF").unwrap_err(),
            PathError::InvalidUtf8
        );
        assert_eq!(literal_segment("a%2541").unwrap(), b"a%41");
    }

    #[test]
    fn reject_policy_refuses_repeated_slashes() {
        for s in ["//a", "/a//b", "/a//", "//"] {
            assert_eq!(
                canonicalize(s.as_bytes(), SlashPolicy::Reject),
                Err(PathError::RepeatedSlash),
                "{s}"
            );
        }
        for s in ["/", "/a/", "/a/b"] {
            assert!(
                canonicalize(s.as_bytes(), SlashPolicy::Reject).is_ok(),
                "{s}"
            );
        }
    }

    #[test]
    fn query_is_untouched_and_never_routed() {
        let t = b"//a/%7e?redirect=/../admin&x=%2F;y";
        let c = canonicalize(t, SlashPolicy::Merge).unwrap();
        assert_eq!(c.path(), "/a/~");
        assert_eq!(c.query(), Some(&b"redirect=/../admin&x=%2F;y"[..]));
        assert_eq!(c.query_str(), Some("redirect=/../admin&x=%2F;y"));
        assert_eq!(&*c.request_target(), b"/a/~?redirect=/../admin&x=%2F;y");
        let c = canonicalize(b"/a?", SlashPolicy::Merge).unwrap();
        assert_eq!(c.query(), Some(&b""[..]));
        let c = canonicalize(b"/a?q=\xff", SlashPolicy::Merge).unwrap();
        assert_eq!(c.query_str(), None);
        let c = canonicalize(b"/a%7e", SlashPolicy::Merge).unwrap();
        assert_eq!(&*c.request_target(), b"/a~");
    }

    #[test]
    fn reasons_are_snake_case_and_distinct() {
        use PathError::*;
        let all = [
            NotOriginForm,
            EncodedSlash,
            Backslash,
            ControlCharacter,
            PathParameter,
            Fragment,
            DotSegment,
            InvalidEscape,
            NonAscii,
            Space,
            RepeatedSlash,
            DoubleEncoding,
            InvalidUtf8,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            let r = e.reason();
            assert!(
                r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{r}"
            );
            assert!(seen.insert(r), "duplicate {r}");
        }
    }

    #[test]
    fn literal_segments_decode() {
        assert_eq!(literal_segment("items:batch").unwrap(), b"items:batch");
        assert_eq!(literal_segment("a%3Ab").unwrap(), b"a:b");
        assert_eq!(literal_segment("..").unwrap_err(), PathError::DotSegment);
        assert_eq!(
            literal_segment("a%2Fb").unwrap_err(),
            PathError::EncodedSlash
        );
        assert_eq!(decoded(b"%4").collect::<Vec<_>>(), b"%4");
    }

    /// Path-ish inputs dense in the tricky pieces.
    fn tricky() -> impl Strategy<Value = Vec<u8>> {
        const PIECES: &[&[u8]] = &[
            b"/",
            b"//",
            b".",
            b"..",
            b"%2e",
            b"%2E",
            b"%2f",
            b"%5c",
            b"%3b",
            b"%23",
            b"%25",
            b"%",
            b"%7e",
            b"%41",
            b"%c3%a9",
            b";",
            b"\\",
            b"?",
            b"{",
            b"a",
            b"Z9",
            b"~",
            b":",
            b"2",
            b"e",
            b"F",
            b"#",
            b" ",
            b"\x00",
            b"\xff",
            b"%c0%af",
            b"%e0%80%af",
            b"%80",
            b"%c3",
            b"%ed%a0%80",
            b"%f0%9f%98%80",
            b"%32",
            b"%46",
        ];
        let piece = prop_oneof![
            4 => proptest::sample::select(PIECES).prop_map(<[u8]>::to_vec),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|v| {
            let mut out = vec![b'/'];
            out.extend(v.concat());
            out
        })
    }

    /// Mostly-valid inputs, so that many cases are accepted AND rewritten (merges, decodes,
    /// hex case, encoding of raw delimiters), with dot-like segments mixed in.
    fn validish() -> impl Strategy<Value = Vec<u8>> {
        const PIECES: &[&[u8]] = &[
            b"/", b"//", b"/", b".", b"..", b"%2e", b"%2E", b"%7e", b"%41", b"%c3%a9", b"%20",
            b"%3a", b"%3F", b"%25", b"a", b"Z9", b"~", b":", b"{", b"|", b"e", b"F", b"2", b"-",
        ];
        proptest::collection::vec(proptest::sample::select(PIECES), 0..16).prop_map(|v| {
            let mut out = vec![b'/'];
            out.extend(v.concat());
            out
        })
    }

    fn paths() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![1 => tricky(), 2 => validish()]
    }

    #[test]
    fn validish_inputs_are_mostly_accepted_and_often_rewritten() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut ok, mut rewritten) = (0, 0);
        for _ in 0..1000 {
            let input = validish().new_tree(&mut runner).unwrap().current();
            if let Ok(c) = canonicalize(&input, SlashPolicy::Merge) {
                ok += 1;
                rewritten += usize::from(c.is_rewritten());
            }
        }
        // Guards the property tests below against a generator that only produces rejects.
        assert!(ok > 300 && rewritten > 200, "ok {ok} rewritten {rewritten}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn canonical_form_is_idempotent(
            input in paths(),
            reject in any::<bool>(),
            allow_double in any::<bool>(),
        ) {
            let policy = PathRules {
                slashes: if reject { SlashPolicy::Reject } else { SlashPolicy::Merge },
                double_encoding: if allow_double {
                    DoubleEncoding::Allow
                } else {
                    DoubleEncoding::Reject
                },
            };
            if let Ok(c) = canonicalize(&input, policy) {
                let again = canonicalize(c.path().as_bytes(), policy).unwrap();
                prop_assert_eq!(again.path(), c.path());
                prop_assert!(!again.is_rewritten());
            }
        }

        #[test]
        fn canonical_form_is_safe(input in paths()) {
            if let Ok(c) = canonicalize(&input, SlashPolicy::Merge) {
                let p = c.path();
                let upper = p.to_ascii_uppercase();
                prop_assert!(p.starts_with('/'));
                prop_assert!(p.is_ascii());
                for bad in ["/../", "/./", "//", ";", "\\", "#", "?", " "] {
                    prop_assert!(!p.contains(bad), "{:?} contains {:?}", p, bad);
                }
                for bad in ["%2F", "%5C", "%3B", "%23", "%2E", "%00"] {
                    prop_assert!(!upper.contains(bad), "{:?} contains {:?}", p, bad);
                }
                prop_assert!(!p.ends_with("/..") && !p.ends_with("/."));
                // Every escape is well-formed, uppercase, and not of an unreserved char.
                let b = p.as_bytes();
                for (i, _) in p.match_indices('%') {
                    let h = &b[i + 1..i + 3];
                    prop_assert!(h.iter().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)));
                    let v = u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap();
                    prop_assert!(!unreserved(v));
                }
                // No segment decodes to a dot segment or to invalid UTF-8, and none holds text
                // that a second decoding would turn into another escape.
                for seg in p.split('/') {
                    let d: Vec<u8> = decoded(seg.as_bytes()).collect();
                    prop_assert!(d != b"." && d != b"..");
                    prop_assert!(std::str::from_utf8(&d).is_ok(), "{:?}", seg);
                    let twice: Vec<u8> = decoded(&d).collect();
                    prop_assert_eq!(&twice, &d, "{:?} decodes differently twice", seg);
                }
            }
        }

        #[test]
        fn fast_path_agrees_with_full_scan(input in paths()) {
            if already_canonical(&input) {
                prop_assert_eq!(scan(&input, SlashPolicy::Reject.into(), None), Ok(false));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = canonicalize(&input, SlashPolicy::Merge);
            let _ = canonicalize(&input, SlashPolicy::Reject);
        }
    }
}
