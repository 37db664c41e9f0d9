//! The verified caller as the proxy forwards it: header-safe values, shared role sets and
//! interned role names.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::claims::Claims;
use super::error::AuthError;
use super::settings::Policy;
use crate::jwks::PreparedKey;
use crate::revocation::{Probe, RevocationKeys};

/// Names already taken, for deduplication without allocating: quick hashes compared first,
/// bytes on a hash match, in a fixed inline array; a hash set past that, so a token with
/// thousands of roles stays linear.
struct Seen<'a> {
    small: [(u64, &'a str); SEEN_INLINE],
    len: usize,
    big: Option<std::collections::HashSet<&'a str, ahash::RandomState>>,
}

const SEEN_INLINE: usize = 32;

impl<'a> Seen<'a> {
    fn new() -> Self {
        Self {
            small: [(0, ""); SEEN_INLINE],
            len: 0,
            big: None,
        }
    }

    fn contains(&self, name: &str) -> bool {
        match &self.big {
            Some(set) => set.contains(name),
            None => {
                let h = quick_hash(name);
                self.small[..self.len]
                    .iter()
                    .any(|(x, s)| *x == h && *s == name)
            }
        }
    }

    /// False if `name` was already there.
    fn insert(&mut self, name: &'a str) -> bool {
        if let Some(set) = &mut self.big {
            return set.insert(name);
        }
        if self.contains(name) {
            return false;
        }
        if self.len == SEEN_INLINE {
            let mut set: std::collections::HashSet<&'a str, ahash::RandomState> =
                self.small.iter().map(|(_, s)| *s).collect();
            set.insert(name);
            self.big = Some(set);
            return true;
        }
        self.small[self.len] = (quick_hash(name), name);
        self.len += 1;
        true
    }
}

/// A fast non-cryptographic hash (FxHash-style, 8 bytes per step) for deduplication only;
/// equal hashes are always confirmed by comparing the strings.
fn quick_hash(s: &str) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut chunks = s.as_bytes().chunks_exact(8);
    let mut h = s.len() as u64;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    let rest = chunks.remainder();
    w[..rest.len()].copy_from_slice(rest);
    (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K)
}

/// Role and client names shared by every identity that carries them: a realm has a few dozen
/// roles and the verified-token cache may hold 100 000 identities, so one `Arc<str>` per
/// distinct name instead of one allocation per role per token (and no malloc on the miss
/// path once warm).
/// Bound: [`ROLE_NAMES_CAPACITY`] names, quick_cache CLOCK-Pro eviction; an evicted name is
/// simply allocated again on next sight (identities keep their `Arc`s).
static ROLE_NAMES: std::sync::LazyLock<quick_cache::sync::Cache<Box<str>, Arc<str>>> =
    std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(ROLE_NAMES_CAPACITY));

/// Bound of the role-name interner.
pub const ROLE_NAMES_CAPACITY: usize = 16_384;

fn intern_name(name: &str) -> Arc<str> {
    if let Some(a) = ROLE_NAMES.get(name) {
        return a;
    }
    let a: Arc<str> = Arc::from(name);
    ROLE_NAMES.insert(name.into(), a.clone());
    a
}

/// Distinct role combinations, shared by every identity that carries one: 100 000 cached
/// tokens of a realm with a few dozen role combinations hold a few dozen [`RoleSet`]s.
/// Bound: [`ROLE_SETS_CAPACITY`], quick_cache CLOCK-Pro eviction; an evicted combination is
/// built again on next sight (identities keep their `Arc`s).
static ROLE_SETS: std::sync::LazyLock<quick_cache::sync::Cache<u64, Arc<RoleSet>>> =
    std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(ROLE_SETS_CAPACITY));
static ROLE_SET_HASHER: std::sync::LazyLock<ahash::RandomState> =
    std::sync::LazyLock::new(ahash::RandomState::new);

/// Bound of the role-combination interner.
pub const ROLE_SETS_CAPACITY: usize = 4_096;

/// Realm, client and combined role lists, each deduplicated; header-unsafe names and names
/// containing a comma (they would read as two roles in the joined header) are dropped.
fn build_roles<'a>(
    realm: impl Iterator<Item = &'a str>,
    client: impl Iterator<Item = &'a str>,
    max: usize,
) -> Arc<RoleSet> {
    let usable = move |r: &'a str| exact_clean(r, max).filter(|r| !r.contains(','));
    let mut in_realm = Seen::new();
    let realm_roles: Vec<&str> = realm
        .filter_map(usable)
        .filter(|r| in_realm.insert(r))
        .collect();
    let mut in_client = Seen::new();
    let client_roles: Vec<&str> = client
        .filter_map(usable)
        .filter(|r| in_client.insert(r))
        .collect();
    // Looked up by the names as they are in the token: a known combination costs no name
    // interning (a cache lookup and a reference count per role).
    let key = ROLE_SET_HASHER.hash_one((&realm_roles, &client_roles, max));
    if let Some(set) = ROLE_SETS.get(&key) {
        let same =
            |held: &[Arc<str>], seen: &[&str]| held.iter().map(|h| &**h).eq(seen.iter().copied());
        if set.max == max && same(&set.realm, &realm_roles) && same(&set.client, &client_roles) {
            return set;
        }
    }
    let realm_roles: Vec<Arc<str>> = realm_roles.into_iter().map(intern_name).collect();
    let client_roles: Vec<Arc<str>> = client_roles.into_iter().map(intern_name).collect();
    let mut all = Vec::with_capacity(realm_roles.len() + client_roles.len());
    all.extend(realm_roles.iter().cloned());
    all.extend(
        client_roles
            .iter()
            .filter(|r| !in_realm.contains(r))
            .cloned(),
    );
    let joined = join_capped(all.iter().map(|r| &**r), max);
    let set = Arc::new(RoleSet {
        realm: realm_roles.into_boxed_slice(),
        client: client_roles.into_boxed_slice(),
        all: all.into_boxed_slice(),
        header: HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static("")),
        max,
    });
    ROLE_SETS.insert(key, set.clone());
    set
}

/// The verified caller, as the proxy forwards it. Every string is safe for an HTTP header
/// value: no control characters, trimmed, at most `max_header_value_len` bytes.
///
/// Compact on purpose: the verified-token cache holds up to 100 000 of these. The subject,
/// username and email share one buffer whose slices are the forwarded header values (a
/// reference-count bump and a byte check of the slice per request, no copy); roles are one
/// shared [`RoleSet`] per distinct combination.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`, then `preferred_username`, then `email`, then `sid`, back to back (UTF-8,
    /// header-safe).
    text: Bytes,
    sub_len: u32,
    username_len: u32,
    email_len: u32,
    sid_len: u32,
    /// `iat` (0 when absent): what revocations compare against.
    pub iat: u64,
    /// This token's revocation index keys, hashed once here so a check hashes nothing.
    pub revocation_keys: RevocationKeys,
    /// Realm and client roles, shared by every identity that carries the same ones.
    pub role_set: Arc<RoleSet>,
    /// From the configured permissions claim.
    pub permissions: Box<[Box<str>]>,
    pub exp: u64,
    pub issuer: Arc<str>,
    /// `azp`: the client the token was issued to (interned: a realm has few clients).
    pub azp: Option<Arc<str>>,
    /// Configured claim -> header mappings that resolved to a value, in config order.
    pub extra: Box<[(HeaderName, HeaderValue)]>,
    /// How the token was verified, re-checked on every cache hit; None outside the cache.
    pub(super) proof: Option<Proof>,
}

/// Signature characters a cache entry pins: 24 base64url characters are 144 bits of the
/// signature (every supported signature is at least 86 characters, so the tail never reaches
/// the payload).
const SIG_TAIL: usize = 24;

/// The last [`SIG_TAIL`] bytes of `token`, zero-padded on the left if it is shorter.
fn sig_tail(token: &str) -> [u8; SIG_TAIL] {
    let b = token.as_bytes();
    let n = b.len().min(SIG_TAIL);
    let mut t = [0u8; SIG_TAIL];
    t[SIG_TAIL - n..].copy_from_slice(&b[b.len() - n..]);
    t
}

/// How a cached identity was verified, so a cache hit can be re-checked: the token's last
/// [`SIG_TAIL`] bytes and length, the key that verified it (not retired since) and the
/// policy generation. Lives beside [`Identity`], which carries it.
#[derive(Clone)]
pub(super) struct Proof {
    sig_tail: [u8; SIG_TAIL],
    len: u32,
    generation: u64,
    key: Arc<PreparedKey>,
}

impl Proof {
    /// What `token`, verified with `key` under policy `generation`, pins.
    pub(super) fn new(token: &str, generation: u64, key: Arc<PreparedKey>) -> Self {
        Self {
            sig_tail: sig_tail(token),
            len: u32::try_from(token.len()).unwrap_or(u32::MAX),
            generation,
            key,
        }
    }

    /// True when `token` is the one this proof was made for (same length and signature tail),
    /// under the same policy generation, and its key has not been retired since.
    pub(super) fn holds_for(&self, token: &str, generation: u64) -> bool {
        self.len as usize == token.len()
            && self.sig_tail == sig_tail(token)
            && self.generation == generation
            && !self.key.is_retired()
    }
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof")
            .field("generation", &self.generation)
            .field("key", &self.key.kid())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Proof {
    fn eq(&self, o: &Self) -> bool {
        self.sig_tail == o.sig_tail
            && self.len == o.len
            && self.generation == o.generation
            && Arc::ptr_eq(&self.key, &o.key)
    }
}

/// A token's roles: realm roles, client roles (`resource_access.{client}.roles` over the
/// configured clients, in config order), each deduplicated, and their union.
#[derive(Debug, PartialEq)]
pub struct RoleSet {
    pub realm: Box<[Arc<str>]>,
    pub client: Box<[Arc<str>]>,
    /// Realm then client roles, each once: the permission-cache key and Redis role lookups.
    pub all: Box<[Arc<str>]>,
    /// `all` comma-joined; whole roles only (a role that would overflow the cap is left out,
    /// never cut).
    pub header: HeaderValue,
    /// The cap `header` was built with (part of the interning key).
    max: usize,
}

impl Identity {
    fn part(&self, start: u32, len: u32) -> &str {
        let (a, b) = (start as usize, (start + len) as usize);
        self.text
            .get(a..b)
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("")
    }

    fn value(&self, start: u32, len: u32) -> Option<HeaderValue> {
        let (a, b) = (start as usize, (start + len) as usize);
        (len > 0 && b <= self.text.len())
            .then(|| HeaderValue::from_maybe_shared(self.text.slice(a..b)).ok())
            .flatten()
    }

    pub fn sub(&self) -> &str {
        self.part(0, self.sub_len)
    }

    pub fn preferred_username(&self) -> Option<&str> {
        (self.username_len > 0).then(|| self.part(self.sub_len, self.username_len))
    }

    pub fn email(&self) -> Option<&str> {
        (self.email_len > 0).then(|| self.part(self.sub_len + self.username_len, self.email_len))
    }

    /// Keycloak's session id, when the token carries one.
    pub fn sid(&self) -> Option<&str> {
        (self.sid_len > 0).then(|| {
            self.part(
                self.sub_len + self.username_len + self.email_len,
                self.sid_len,
            )
        })
    }

    /// What the revocation check needs to know about this token.
    #[inline]
    pub fn revocation_probe(&self) -> Probe<'_> {
        Probe {
            keys: &self.revocation_keys,
            issuer: &self.issuer,
            sub: self.sub(),
            sid: self.sid(),
            iat: self.iat,
        }
    }

    /// The user-id header value; None never happens for an identity this module built.
    pub fn sub_value(&self) -> Option<HeaderValue> {
        self.value(0, self.sub_len)
    }

    pub fn preferred_username_value(&self) -> Option<HeaderValue> {
        self.value(self.sub_len, self.username_len)
    }

    pub fn email_value(&self) -> Option<HeaderValue> {
        self.value(self.sub_len + self.username_len, self.email_len)
    }

    /// Realm roles then client roles, each once.
    pub fn all_roles(&self) -> &[Arc<str>] {
        &self.role_set.all
    }

    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.role_set.all.iter().map(|r| &**r)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles().any(|r| r == role)
    }
}

/// `s` unchanged if it is already header-safe (non-empty, no control characters, no edge
/// whitespace, at most `max` bytes); else None. For values whose meaning must not shift
/// (subject, roles, permissions): altering them could forge a different name.
fn exact_clean(s: &str, max: usize) -> Option<&str> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= max
        && b[0] != b' '
        && b[b.len() - 1] != b' '
        && if b.iter().all(|c| (0x21..0x7f).contains(c) || *c == b' ') {
            true
        } else {
            !s.chars().any(char::is_control) && s.trim() == s
        };
    ok.then_some(s)
}

/// Informational values: control characters dropped, trimmed, cut to `max` bytes on a char
/// boundary. None if nothing remains.
fn sanitize(s: &str, max: usize) -> Option<String> {
    if let Some(clean) = exact_clean(s, max) {
        return Some(clean.to_owned());
    }
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    let lead = out.len() - out.trim_start().len();
    out.drain(..lead);
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        let t = out.trim_end().len();
        out.truncate(t);
    }
    (!out.is_empty()).then_some(out)
}

/// Joins items with `,` keeping whole items only, within `max` bytes. Items containing a
/// comma are skipped (they would read as two values downstream).
fn join_capped<'a>(items: impl Iterator<Item = &'a str> + Clone, max: usize) -> String {
    let total: usize = items.clone().map(|i| i.len() + 1).sum();
    let mut out = String::with_capacity(total.min(max));
    for item in items {
        if item.contains(',') {
            continue;
        }
        let extra = item.len() + usize::from(!out.is_empty());
        if out.len() + extra > max {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(item);
    }
    out
}

fn render_scalar(v: &Value, max: usize) -> Option<String> {
    match v {
        Value::String(s) => sanitize(s, max),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn render_claim(v: &Value, max: usize) -> Option<String> {
    match v {
        Value::Array(items) => {
            let rendered: Vec<String> =
                items.iter().filter_map(|i| render_scalar(i, max)).collect();
            let joined = join_capped(rendered.iter().map(String::as_str), max);
            (!joined.is_empty()).then_some(joined)
        }
        other => render_scalar(other, max),
    }
}

pub(super) fn build_identity(
    c: &Claims<'_>,
    policy: &Policy,
    issuer: Arc<str>,
) -> Result<Identity, AuthError> {
    let max = policy.max_value_len;
    let sub = c
        .sub
        .as_ref()
        .and_then(|s| exact_clean(&s.0, max))
        .ok_or(AuthError::MissingSubject)?;
    let role_set = build_roles(
        c.realm_roles.iter().map(|r| &*r.0),
        c.client_roles.iter().map(|r| &*r.0),
        max,
    );
    let mut permissions = Vec::new();
    if let Some(path) = &policy.permissions {
        match path.resolve(&c.captured) {
            Some(Value::Array(items)) => {
                for p in items.iter().filter_map(Value::as_str) {
                    if let Some(p) = exact_clean(p, max) {
                        permissions.push(Box::from(p));
                    }
                }
            }
            Some(Value::String(s)) => {
                for p in s.split_ascii_whitespace() {
                    if let Some(p) = exact_clean(p, max) {
                        permissions.push(Box::from(p));
                    }
                }
            }
            _ => {}
        }
    }
    let mut extra = Vec::new();
    for (path, header) in policy.extras.iter() {
        let Some(v) = path.resolve(&c.captured) else {
            continue;
        };
        if let Some(s) = render_claim(v, max) {
            if let Ok(hv) = HeaderValue::from_str(&s) {
                extra.push((header.clone(), hv));
            }
        }
    }
    // Only values that are valid header values are kept, so the slices served later always
    // convert (a sanitized string is, unless it holds bytes HTTP forbids).
    let header_safe = |s: &str| HeaderValue::from_str(s).is_ok();
    if !header_safe(sub) {
        return Err(AuthError::MissingSubject);
    }
    let username = c
        .preferred_username
        .as_ref()
        .and_then(|s| sanitize(&s.0, max))
        .filter(|s| header_safe(s));
    let email = c
        .email
        .as_ref()
        .and_then(|s| sanitize(&s.0, max))
        .filter(|s| header_safe(s));
    let (username, email) = (
        username.as_deref().unwrap_or(""),
        email.as_deref().unwrap_or(""),
    );
    // Kept exactly or not at all: a revocation names the session by these bytes.
    let sid = c
        .sid
        .as_ref()
        .and_then(|s| exact_clean(&s.0, max))
        .unwrap_or("");
    let mut text = Vec::with_capacity(sub.len() + username.len() + email.len() + sid.len());
    text.extend_from_slice(sub.as_bytes());
    text.extend_from_slice(username.as_bytes());
    text.extend_from_slice(email.as_bytes());
    text.extend_from_slice(sid.as_bytes());
    let len = |s: &str| u32::try_from(s.len()).map_err(|_| AuthError::MalformedToken);
    Ok(Identity {
        sub_len: len(sub)?,
        username_len: len(username)?,
        email_len: len(email)?,
        sid_len: len(sid)?,
        iat: c.iat.unwrap_or(0),
        revocation_keys: RevocationKeys::new(&issuer, sub, (!sid.is_empty()).then_some(sid)),
        text: Bytes::from(text),
        role_set,
        permissions: permissions.into_boxed_slice(),
        exp: c.exp.unwrap_or(0),
        issuer,
        azp: c
            .azp
            .as_ref()
            .and_then(|s| sanitize(&s.0, max))
            .map(|s| intern_name(&s)),
        extra: extra.into_boxed_slice(),
        proof: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::verify::testkit::*;
    use serde_json::json;

    #[test]
    fn sig_tail_pins_the_last_bytes_left_padded() {
        let long = format!("{}{}", "h.p.", "s".repeat(10) + "abcdefghijklmnopqrstuvwx");
        assert_eq!(&sig_tail(&long), b"abcdefghijklmnopqrstuvwx");
        let mut want = [0u8; SIG_TAIL];
        want[SIG_TAIL - 3..].copy_from_slice(b"a.b");
        assert_eq!(sig_tail("a.b"), want);
        assert_eq!(sig_tail(""), [0u8; SIG_TAIL]);
    }

    #[test]
    fn header_value_helpers() {
        for (input, max, want) in [
            ("alice", 10, Some("alice")),
            ("  alice ", 10, Some("alice")),
            ("al\r\nice", 10, Some("alice")),
            ("al\u{0}i\u{7f}ce\u{85}", 10, Some("alice")),
            ("\t\n", 10, None),
            ("ünïcödé", 5, Some("ünï")),
            ("abcdef", 3, Some("abc")),
        ] {
            assert_eq!(sanitize(input, max).as_deref(), want, "{input:?}");
            if let Some(v) = sanitize(input, max) {
                assert!(HeaderValue::from_str(&v).is_ok());
            }
        }
        for (input, ok) in [
            ("admin", true),
            (" admin", false),
            ("ad\nmin", false),
            ("ädmin", true),
            ("", false),
            ("x".repeat(11).as_str(), false),
        ] {
            assert_eq!(exact_clean(input, 10).is_some(), ok, "{input:?}");
        }
        assert_eq!(
            join_capped(["a", "bb", "c,d", "eee", "f"].into_iter(), 8),
            "a,bb,eee"
        );
    }

    #[test]
    fn identity_roles_are_clean_deduplicated_and_capped() {
        let mut s = vs();
        s.max_header_value_len = 40;
        s.client_role_clients = vec![AUD.into(), "other-client".into()];
        let p = Policy::compile(s, 1);
        let doc = json!({
            "sub": "u1",
            "realm_access": { "roles": ["viewer", "viewer", "adm\u{0}in", "a,b", " lead", "tenant_admin", "x".repeat(41)] },
            "resource_access": {
                AUD: { "roles": ["agent", "viewer", "manager"] },
                "other-client": { "roles": ["agent", "auditor"] },
                "ignored-client": { "roles": ["root"] }
            }
        })
        .to_string();
        let c = parse(&p, &doc).unwrap();
        let id = build_identity(&c, &p, Arc::from("iss")).unwrap();
        assert_eq!(
            id.role_set.realm.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["viewer", "tenant_admin"]
        );
        assert_eq!(
            id.role_set.client.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["agent", "viewer", "manager", "auditor"]
        );
        assert_eq!(
            id.all_roles().iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["viewer", "tenant_admin", "agent", "manager", "auditor"]
        );
        // 40-byte cap: whole roles only.
        assert_eq!(id.role_set.header, "viewer,tenant_admin,agent,manager");
        assert!(id.has_role("auditor") && !id.has_role("root") && !id.has_role("admin"));
        assert!(!id.roles().any(|r| r == "a" || r == "b"));
        // Many roles: still deduplicated (hash-set path).
        let many: Vec<String> = (0..200).map(|i| format!("r{}", i % 100)).collect();
        let doc = json!({ "sub": "u", "realm_access": { "roles": many } }).to_string();
        let id = build_identity(&parse(&p, &doc).unwrap(), &p, Arc::from("i")).unwrap();
        assert_eq!(id.role_set.realm.len(), 100);
        assert_eq!(id.all_roles().len(), 100);
    }

    #[test]
    fn identity_extras_and_permissions() {
        let mut s = vs();
        s.permissions_claim = Some("permissions".into());
        s.claim_headers = vec![
            ("email".into(), "x-user-email".into()),
            ("tenant_no".into(), "x-tenant-no".into()),
            ("verified".into(), "x-verified".into()),
            ("groups".into(), "x-groups".into()),
            ("address.country".into(), "x-country".into()),
            ("https://example.com/org".into(), "x-org".into()),
            ("missing".into(), "x-missing".into()),
            ("obj".into(), "x-obj".into()),
            ("evil".into(), "x-evil".into()),
        ];
        let p = Policy::compile(s, 1);
        let doc = json!({
            "sub": "u1", "email": "ada@example.com", "tenant_no": 42, "verified": true,
            "groups": ["/a", "/b,c", "/d"], "address": { "country": "NZ" },
            "https://example.com/org": "acme", "obj": { "k": 1 }, "evil": "x\r\nSet-Cookie: a=b",
            "permissions": ["users.read.own", "bad perm\n", "users.write.team"]
        })
        .to_string();
        let c = parse(&p, &doc).unwrap();
        assert_eq!(
            c.email.as_ref().map(|e| &*e.0),
            Some("ada@example.com"),
            "captured and typed"
        );
        let id = build_identity(&c, &p, Arc::from("iss")).unwrap();
        let extra: Vec<(String, String)> = id
            .extra
            .iter()
            .map(|(h, v)| (h.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            ("x-user-email", "ada@example.com"),
            ("x-tenant-no", "42"),
            ("x-verified", "true"),
            ("x-groups", "/a,/d"),
            ("x-country", "NZ"),
            ("x-org", "acme"),
            ("x-evil", "xSet-Cookie: a=b"),
        ];
        assert_eq!(
            extra,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        assert_eq!(
            &*id.permissions,
            ["users.read.own", "users.write.team"].map(Box::from)
        );
        assert_eq!(id.email(), Some("ada@example.com"));
        // Space-separated permissions (scope-style) work too.
        let mut s = vs();
        s.permissions_claim = Some("scope".into());
        let p = Policy::compile(s, 1);
        let doc = json!({ "sub": "u", "scope": "openid users.read.own  admin.*.*" }).to_string();
        let id = build_identity(&parse(&p, &doc).unwrap(), &p, Arc::from("i")).unwrap();
        assert_eq!(
            &*id.permissions,
            ["openid", "users.read.own", "admin.*.*"].map(Box::from)
        );
        // A subject that would need altering is refused, not rewritten.
        let doc = json!({ "sub": "u\n1" }).to_string();
        assert_eq!(
            build_identity(&parse(&p, &doc).unwrap(), &p, Arc::from("i")).unwrap_err(),
            AuthError::MissingSubject
        );
    }
}
