//! Host normalisation: what a `Host` value (or a configured host) means, byte for byte, before
//! any tenant is looked up. Pure and allocation-free on the request path.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::Ipv6Addr;

/// Longest host name, without the optional trailing dot (RFC 1035 wire limit of 255 octets).
pub const MAX_HOST_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Longest raw `Host` value that can still be valid: name, trailing dot, `:` and a 5-digit port.
/// Checked first so a hostile 8 KiB header costs nothing to refuse.
const MAX_RAW_HOST_LEN: usize = MAX_HOST_LEN + 1 + 1 + 5;
/// `[` + longest textual IPv6 address (45) + `]`.
const MAX_IPV6_LITERAL_LEN: usize = 47;

// ---------------------------------------------------------------------------------------------
// Host normalisation
// ---------------------------------------------------------------------------------------------

/// Why a host is not acceptable. Reaches clients only wrapped in [`TenantError::InvalidHost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host is longer than 253 characters")]
    TooLong,
    #[error("a label is longer than 63 characters")]
    LabelTooLong,
    #[error("empty label")]
    EmptyLabel,
    #[error("a label starts or ends with '-'")]
    LabelHyphen,
    #[error("invalid character (only a-z, 0-9, '-' and '.' are allowed)")]
    InvalidCharacter,
    #[error("invalid port (must be 1..=65535)")]
    InvalidPort,
    #[error("invalid IPv6 literal")]
    InvalidIpLiteral,
    #[error("a port is not allowed here")]
    PortNotAllowed,
}

impl HostError {
    /// Stable snake_case code, for logs and error bodies that want the detail.
    pub fn code(&self) -> &'static str {
        match self {
            HostError::Empty => "host_empty",
            HostError::TooLong => "host_too_long",
            HostError::LabelTooLong => "label_too_long",
            HostError::EmptyLabel => "empty_label",
            HostError::LabelHyphen => "label_hyphen",
            HostError::InvalidCharacter => "invalid_character",
            HostError::InvalidPort => "invalid_port",
            HostError::InvalidIpLiteral => "invalid_ip_literal",
            HostError::PortNotAllowed => "port_not_allowed",
        }
    }
}

/// A normalised host: lowercase, no port, no trailing dot; IPv6 literals in canonical
/// (RFC 5952) form inside brackets, e.g. `[::1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedHost<'a> {
    /// Borrowed from the input unless lowercasing or IPv6 canonicalisation changed it.
    pub host: Cow<'a, str>,
    /// The port, if the input carried one.
    pub port: Option<u16>,
}

impl NormalizedHost<'_> {
    pub fn as_str(&self) -> &str {
        &self.host
    }
}

enum HostKind {
    Name { has_upper: bool },
    Ipv6(Ipv6Addr),
}

/// A syntactically valid host, split from its port but not yet lowercased. Bytes, because the
/// request path never needs `&str`: skipping a UTF-8 re-check is measurable at this scale.
struct Parsed<'a> {
    host: &'a [u8],
    port: Option<u16>,
    kind: HostKind,
}

fn parse_port(digits: &[u8]) -> Result<u16, HostError> {
    if digits.is_empty() || digits.len() > 5 {
        return Err(HostError::InvalidPort);
    }
    let mut value: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(HostError::InvalidPort);
        }
        value = value * 10 + u32::from(d - b'0');
    }
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(HostError::InvalidPort),
    }
}

const C_INVALID: u8 = 0;
const C_LOWER: u8 = 1; // a-z, 0-9
const C_UPPER: u8 = 2;
const C_HYPHEN: u8 = 3;
const C_DOT: u8 = 4;
const C_COLON: u8 = 5;

/// Byte classes for the single-pass host scanner (a table beats a chain of range checks).
static CLASS: [u8; 256] = {
    let mut t = [C_INVALID; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'a'..=b'z' | b'0'..=b'9' => C_LOWER,
            b'A'..=b'Z' => C_UPPER,
            b'-' => C_HYPHEN,
            b'.' => C_DOT,
            b':' => C_COLON,
            _ => C_INVALID,
        };
        i += 1;
    }
    t
};

/// Checks the label `raw[start..end]` once it is complete (per label, not per byte: this
/// keeps the scanner's per-byte loop to one well-predicted branch).
fn check_label(raw: &[u8], start: usize, end: usize) -> Result<(), HostError> {
    let len = end.saturating_sub(start);
    if len == 0 {
        return Err(HostError::EmptyLabel);
    }
    if len > MAX_LABEL_LEN {
        return Err(HostError::LabelTooLong);
    }
    if end.checked_sub(1).and_then(|last| raw.get(last)) == Some(&b'-') {
        return Err(HostError::LabelHyphen);
    }
    Ok(())
}

/// Scans a host name with optional `:port` in one pass: DNS syntax (RFC 1123 labels of
/// `a-z0-9-`, no leading/trailing `-`; underscores refused), the port, and one trailing dot.
fn parse_name(raw: &[u8]) -> Result<Parsed<'_>, HostError> {
    let mut has_upper = false;
    let mut label_start = 0usize;
    let mut end = raw.len();
    let mut port = None;
    for (i, &c) in raw.iter().enumerate() {
        let class = CLASS[usize::from(c)];
        if class == C_LOWER {
            continue;
        }
        match class {
            C_UPPER => has_upper = true,
            C_HYPHEN => {
                if i == label_start {
                    return Err(HostError::LabelHyphen);
                }
            }
            C_DOT => {
                if i == 0 && matches!(raw.get(1), None | Some(b':')) {
                    // A lone "." is the root: empty once the trailing dot is stripped.
                    return Err(HostError::Empty);
                }
                check_label(raw, label_start, i)?;
                label_start = i + 1;
            }
            C_COLON => {
                port = Some(parse_port(raw.get(i + 1..).unwrap_or_default())?);
                end = i;
                break;
            }
            _ => return Err(HostError::InvalidCharacter),
        }
    }
    let mut name = raw.get(..end).unwrap_or_default();
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if label_start == end {
        // Ends in a dot whose label was checked above: strip exactly one.
        name = name.get(..end - 1).unwrap_or_default();
    } else {
        check_label(raw, label_start, end)?;
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    Ok(Parsed {
        host: name,
        port,
        kind: HostKind::Name { has_upper },
    })
}

fn parse_host(raw: &[u8]) -> Result<Parsed<'_>, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.len() > MAX_RAW_HOST_LEN {
        return Err(HostError::TooLong);
    }
    let Some(after_open) = raw.strip_prefix(b"[") else {
        return parse_name(raw);
    };
    let close = after_open
        .iter()
        .position(|&c| c == b']')
        .ok_or(HostError::InvalidIpLiteral)?;
    let (inner, rest) = after_open.split_at(close);
    let port = match rest {
        [b']'] => None,
        [b']', b':', digits @ ..] => Some(parse_port(digits)?),
        _ => return Err(HostError::InvalidIpLiteral),
    };
    let inner = std::str::from_utf8(inner).map_err(|_| HostError::InvalidIpLiteral)?;
    let addr: Ipv6Addr = inner.parse().map_err(|_| HostError::InvalidIpLiteral)?;
    Ok(Parsed {
        host: raw.get(..close + 2).ok_or(HostError::InvalidIpLiteral)?,
        port,
        kind: HostKind::Ipv6(addr),
    })
}

/// Writes `[addr]` in canonical form into `buf`; the caller's buffer keeps this allocation-free.
fn write_ipv6<'b>(addr: &Ipv6Addr, buf: &'b mut [u8; MAX_IPV6_LITERAL_LEN]) -> Option<&'b [u8]> {
    let mut cursor: &mut [u8] = &mut buf[..];
    write!(cursor, "[{addr}]").ok()?;
    let len = MAX_IPV6_LITERAL_LEN - cursor.len();
    buf.get(..len)
}

/// Hosts are ASCII once parsed, so this never fails; it exists to avoid `unsafe`/`unwrap`.
fn ascii_str(b: &[u8]) -> Result<&str, HostError> {
    std::str::from_utf8(b).map_err(|_| HostError::InvalidCharacter)
}

/// Normalises a raw `Host` header value (or URI authority): lowercase, strip `:port`
/// (1..=65535), strip ONE trailing dot, validate DNS syntax (labels of `a-z0-9-`, 1..=63 long,
/// no leading/trailing `-`, at most 253 in total). `[IPv6]` literals are accepted and
/// canonicalised; IPv4 literals pass as ordinary names. Borrows from `raw` unless the host had
/// uppercase letters or a non-canonical IPv6 spelling.
pub fn normalize_host(raw: &[u8]) -> Result<NormalizedHost<'_>, HostError> {
    let parsed = parse_host(raw)?;
    let host = match parsed.kind {
        HostKind::Name { has_upper: false } => Cow::Borrowed(ascii_str(parsed.host)?),
        HostKind::Name { has_upper: true } => {
            Cow::Owned(ascii_str(parsed.host)?.to_ascii_lowercase())
        }
        HostKind::Ipv6(addr) => {
            let mut buf = [0u8; MAX_IPV6_LITERAL_LEN];
            let canonical = write_ipv6(&addr, &mut buf).ok_or(HostError::InvalidIpLiteral)?;
            if canonical == parsed.host {
                Cow::Borrowed(ascii_str(parsed.host)?)
            } else {
                Cow::Owned(ascii_str(canonical)?.to_owned())
            }
        }
    };
    Ok(NormalizedHost {
        host,
        port: parsed.port,
    })
}

/// Normalises `raw` (into a stack buffer when it must change) and hands the normalised bytes to
/// `f`: the request path's allocation-free variant of [`normalize_host`].
pub(super) fn with_normalized_host<R>(
    raw: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, HostError> {
    let parsed = parse_host(raw)?;
    match parsed.kind {
        HostKind::Name { has_upper: false } => Ok(f(parsed.host)),
        HostKind::Name { has_upper: true } => {
            let mut buf = [0u8; MAX_HOST_LEN];
            let src = parsed.host;
            let dst = buf.get_mut(..src.len()).ok_or(HostError::TooLong)?;
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_ascii_lowercase();
            }
            Ok(f(dst))
        }
        HostKind::Ipv6(addr) => {
            let mut buf = [0u8; MAX_IPV6_LITERAL_LEN];
            let canonical = write_ipv6(&addr, &mut buf).ok_or(HostError::InvalidIpLiteral)?;
            Ok(f(canonical))
        }
    }
}

/// Normalises a host name written in configuration: same rules as [`normalize_host`], but a
/// port is refused ([`HostError::PortNotAllowed`]) because request ports are ignored for tenant
/// lookup, so a configured port could never match.
pub fn normalize_config_host(s: &str) -> Result<String, HostError> {
    let n = normalize_host(s.as_bytes())?;
    if n.port.is_some() {
        return Err(HostError::PortNotAllowed);
    }
    Ok(n.host.into_owned())
}

/// Validates a host name for configuration (any case, optional single trailing dot, no port).
/// Store the output of [`normalize_config_host`], which applies the same rules.
pub fn validate_host_name(s: &str) -> Result<(), HostError> {
    normalize_config_host(s).map(|_| ())
}

/// Whether an absolute-form request target's authority and the `Host` header name the same
/// origin. Rule: both must be valid hosts and their normalised hosts equal (a host mismatch is
/// always a refusal); ports are compared only when BOTH carry one, because a missing port is
/// the scheme default and proxies and clients disagree about spelling it out.
pub fn same_authority(absolute_form_authority: &str, host_header: &str) -> bool {
    let (Ok(a), Ok(h)) = (
        normalize_host(absolute_form_authority.as_bytes()),
        normalize_host(host_header.as_bytes()),
    ) else {
        return false;
    };
    if a.host != h.host {
        return false;
    }
    match (a.port, h.port) {
        (Some(pa), Some(ph)) => pa == ph,
        _ => true,
    }
}

/// Whether `b` is one valid lowercase DNS label: what a pattern may turn into a tenant id.
pub(super) fn is_dns_label(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}
