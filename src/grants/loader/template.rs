//! URL templates for the http loader: compiled once, rendered with percent-encoded values.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 unreserved characters is encoded, so a value is always exactly one
/// path segment (or one query value): a sub of `../admin` cannot walk the backend's routes.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Tenant,
    Subject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template such as `http://app/internal/permissions/{tenant}/{sub}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    fixed_len: usize,
}

impl Template {
    /// `subject` names the placeholder for the second value (`sub` or `role`). Both it and
    /// `{tenant}` must appear, in the path or query, and nothing else may be in braces.
    pub fn parse(text: &str, subject: &str) -> Result<Self, String> {
        if !(text.starts_with("http://") || text.starts_with("https://")) {
            return Err("must start with http:// or https://".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        let (mut tenant, mut sub) = (false, false);
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                return Err("has an unclosed '{'".into());
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let name = &rest[open + 1..close];
            let var = if name == "tenant" {
                tenant = true;
                Var::Tenant
            } else if name == subject {
                sub = true;
                Var::Subject
            } else {
                return Err(format!(
                    "has an unknown placeholder {{{name}}} (use {{tenant}} and {{{subject}}})"
                ));
            };
            parts.push(Part::Var(var));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err("has a stray '}'".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !tenant || !sub {
            return Err(format!("must contain {{tenant}} and {{{subject}}}"));
        }
        // The placeholders must come after the authority: a value never picks the host.
        let scheme_end = text.find("://").map_or(0, |i| i + 3);
        let authority_end = text[scheme_end..].find(['/', '?']).map(|i| i + scheme_end);
        let first_var = text.find('{').unwrap_or(text.len());
        if authority_end.is_none_or(|end| first_var < end) {
            return Err("placeholders must be in the path or query, not the host".into());
        }
        let fixed_len = parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Var(_) => 0,
            })
            .sum();
        Ok(Self { parts, fixed_len })
    }

    pub fn render(&self, tenant: &str, subject: &str) -> String {
        let mut out = String::with_capacity(self.fixed_len + 3 * (tenant.len() + subject.len()));
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(Var::Tenant) => out.extend(utf8_percent_encode(tenant, SEGMENT)),
                Part::Var(Var::Subject) => out.extend(utf8_percent_encode(subject, SEGMENT)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_encoded_segments() {
        let t = Template::parse(
            "http://127.0.0.1:8000/internal/permissions/{tenant}/{sub}",
            "sub",
        )
        .expect("valid");
        assert_eq!(
            t.render("acme", "u-1"),
            "http://127.0.0.1:8000/internal/permissions/acme/u-1"
        );
        assert_eq!(
            t.render("acme", "../admin?x=1#y"),
            "http://127.0.0.1:8000/internal/permissions/acme/..%2Fadmin%3Fx%3D1%23y"
        );
        assert_eq!(
            t.render("a b", "é"),
            "http://127.0.0.1:8000/internal/permissions/a%20b/%C3%A9"
        );
    }

    #[test]
    fn query_placement_works() {
        let t =
            Template::parse("https://app/perm?tenant={tenant}&role={role}", "role").expect("valid");
        assert_eq!(
            t.render("t&1", "r=2"),
            "https://app/perm?tenant=t%261&role=r%3D2"
        );
    }

    #[test]
    fn rejects_bad_templates() {
        for (text, sub) in [
            ("ftp://x/{tenant}/{sub}", "sub"),
            ("http://x/{tenant}", "sub"),
            ("http://x/{sub}", "sub"),
            ("http://x/{tenant}/{role}", "sub"),
            ("http://x/{tenant}/{sub", "sub"),
            ("http://x/{tenant}/{sub}}", "sub"),
            ("http://{tenant}.x/{sub}", "sub"),
            ("http://x{tenant}/{sub}", "sub"),
        ] {
            assert!(Template::parse(text, sub).is_err(), "{text} accepted");
        }
    }
}
