//! The overlap proof: no two host patterns may match one host. Each pattern becomes a
//! deterministic automaton over the bytes of a normalised host, and every pair with a regex is
//! searched, breadth-first over their product, for a common well-formed host.

use std::collections::HashSet;

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::{start, syntax};
use regex_automata::{Anchored, MatchKind};

use super::BuildError;

/// The hosts one pattern can match, for the overlap check.
pub(super) enum HostShape {
    /// `{tenant}.suffix` (normalised suffix).
    Wildcard(String),
    /// The configured regex source (anchored when compiled).
    Regex(String),
}

/// No two patterns may match one host: otherwise which tenant (and realm) a host names would
/// depend on the lookup order, and two patterns could derive different ids for one host.
/// Wildcards with distinct suffixes never overlap (the first label is the whole difference),
/// so only pairs with a regex are checked, by searching their product automaton for a common
/// well-formed host.
pub(super) fn check_overlaps(shapes: &[(usize, HostShape)], errors: &mut Vec<BuildError>) {
    if !shapes.iter().any(|(_, s)| matches!(s, HostShape::Regex(_))) {
        return;
    }
    let Ok(valid_host) = Language::valid_host() else {
        errors.push(BuildError::new(
            "host_patterns",
            "internal error: the host automaton does not build",
        ));
        return;
    };
    let mut langs = Vec::with_capacity(shapes.len());
    for (i, shape) in shapes {
        let built = match shape {
            HostShape::Wildcard(suffix) => Language::wildcard(suffix),
            HostShape::Regex(source) => Language::regex(source),
        };
        match built {
            Ok(l) => langs.push((*i, shape, l)),
            Err(m) => errors.push(BuildError::new(
                format!("host_patterns[{i}]"),
                format!("cannot be checked against the other host patterns: {m}"),
            )),
        }
    }
    for (b, (j, shape_j, lang_j)) in langs.iter().enumerate() {
        for (i, shape_i, lang_i) in langs.iter().take(b) {
            if matches!(
                (shape_i, shape_j),
                (HostShape::Wildcard(_), HostShape::Wildcard(_))
            ) {
                continue;
            }
            match common_host(lang_i, lang_j, &valid_host) {
                Ok(None) => {}
                Ok(Some(host)) => errors.push(BuildError::new(
                    format!("host_patterns[{j}]"),
                    format!(
                        "matches the same hosts as host_patterns[{i}] (e.g. {host:?}); host patterns must not overlap"
                    ),
                )),
                Err(m) => errors.push(BuildError::new(
                    format!("host_patterns[{j}]"),
                    format!("cannot be proven disjoint from host_patterns[{i}]: {m}"),
                )),
            }
        }
    }
}

/// Every byte a normalised host can contain (names, IPv4 and bracketed IPv6 literals).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-.[]:";
const DNS_LABEL: &str = "[a-z0-9](?:[a-z0-9-]*[a-z0-9])?";
/// Bounds on one automaton and on the product search: a config file is trusted, but a
/// pathological regex must end in a clear error, not a stalled load.
const SIZE_LIMIT: usize = 8 << 20;
const MAX_PRODUCT_STATES: usize = 500_000;

/// A host pattern as a deterministic automaton over the bytes of a normalised host.
struct Language(dense::DFA<Vec<u32>>);

impl Language {
    fn build(pattern: &str) -> Result<Self, String> {
        let anchored = format!(r"\A(?:{pattern})\z");
        let mut b = dense::Builder::new();
        b.configure(
            dense::Config::new()
                // Every match, not leftmost-first: the automaton must accept exactly the
                // pattern's language.
                .match_kind(MatchKind::All)
                .start_kind(StartKind::Anchored)
                .unicode_word_boundary(true)
                .dfa_size_limit(Some(SIZE_LIMIT))
                .determinize_size_limit(Some(SIZE_LIMIT)),
        );
        // ASCII semantics first: on ASCII hosts they agree with the Unicode semantics the
        // request path uses, and the automata are far smaller. Unicode-only syntax
        // (`\p{L}`) falls back to the full semantics.
        b.syntax(syntax::Config::new().unicode(false).utf8(false));
        match b.build(&anchored) {
            Ok(d) => Ok(Language(d)),
            Err(_) => {
                b.syntax(syntax::Config::new());
                b.build(&anchored).map(Language).map_err(|e| e.to_string())
            }
        }
    }

    /// `{tenant}.suffix`: a DNS label, then the suffix.
    fn wildcard(suffix: &str) -> Result<Self, String> {
        Self::build(&format!(r"{DNS_LABEL}\.{}", regex::escape(suffix)))
    }

    fn regex(source: &str) -> Result<Self, String> {
        Self::build(source)
    }

    /// Well-formed normalised hosts, so that overlaps only on impossible hosts (`a..b`)
    /// are not reported.
    fn valid_host() -> Result<Self, String> {
        Self::build(&format!(r"{DNS_LABEL}(?:\.{DNS_LABEL})*|\[[0-9a-f:.]+\]"))
    }
}

/// A shortest host that all three automata accept, found breadth-first over their product.
fn common_host(a: &Language, b: &Language, valid: &Language) -> Result<Option<String>, String> {
    let dfas = [&a.0, &b.0, &valid.0];
    let cfg = start::Config::new().anchored(Anchored::Yes);
    let mut first = [StateID::ZERO; 3];
    for (slot, d) in first.iter_mut().zip(dfas) {
        *slot = d.start_state(&cfg).map_err(|e| e.to_string())?;
    }
    // (states, parent node, byte that led here); BFS order is the vector order.
    let mut nodes: Vec<([StateID; 3], usize, u8)> = vec![(first, 0, 0)];
    let mut seen: HashSet<[StateID; 3]> = HashSet::from([first]);
    let mut next_node = 0;
    while let Some(&(states, _, _)) = nodes.get(next_node) {
        let accepts = dfas
            .iter()
            .zip(states)
            .all(|(d, s)| d.is_match_state(d.next_eoi_state(s)));
        if accepts {
            let mut host = Vec::new();
            let mut at = next_node;
            while at != 0 {
                let (_, parent, byte) = nodes[at];
                host.push(byte);
                at = parent;
            }
            host.reverse();
            return Ok(Some(String::from_utf8_lossy(&host).into_owned()));
        }
        for &byte in ALPHABET {
            let mut next = states;
            let mut alive = true;
            for (slot, d) in next.iter_mut().zip(dfas) {
                *slot = d.next_state(*slot, byte);
                alive &= !(d.is_dead_state(*slot) || d.is_quit_state(*slot));
            }
            if alive && seen.insert(next) {
                if nodes.len() >= MAX_PRODUCT_STATES {
                    return Err("the patterns are too complex to compare".to_string());
                }
                nodes.push((next, next_node, byte));
            }
        }
        next_node += 1;
    }
    Ok(None)
}
