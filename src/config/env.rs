//! `${VAR}` / `${VAR:-default}` expansion inside YAML string scalars.
//!
//! Expansion runs on parsed scalars, never on the raw text, so a variable's value can never
//! inject YAML structure (a secret containing `\n  admin: ...` stays one string). A scalar that
//! is exactly one `${...}` expression is re-read as a YAML scalar after expansion, so
//! `threads: ${THREADS:-2}` still yields a number. `$$` is a literal `$`.

use std::collections::HashMap;

use serde_yaml_ng::Value;

use crate::config_error::ConfigError;

/// Where variables come from: the process environment in production, a map in tests
/// (mutating the real environment from tests is racy).
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// Expands every string scalar in `value`; errors carry the field path.
pub fn expand(value: &mut Value, env: &dyn EnvSource, path: &mut String, errors: &mut ConfigError) {
    match value {
        Value::String(s) => {
            if !s.contains('$') {
                return;
            }
            match expand_str(s, env) {
                Ok((expanded, whole)) => {
                    if whole {
                        // Re-read a whole-scalar substitution so numbers and booleans keep their type.
                        match serde_yaml_ng::from_str::<Value>(&expanded) {
                            Ok(v @ (Value::Number(_) | Value::Bool(_))) => *value = v,
                            _ => *value = Value::String(expanded),
                        }
                    } else {
                        *s = expanded;
                    }
                }
                Err(e) => errors.push(display_path(path), e),
            }
        }
        Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand(v, env, path, errors);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(k) => path.push_str(k),
                    other => path.push_str(&format!("{other:?}")),
                }
                expand(v, env, path, errors);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand(&mut t.value, env, path, errors),
        _ => {}
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// Returns the expanded text and whether the input was exactly one `${...}` expression.
fn expand_str(s: &str, env: &dyn EnvSource) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut exprs = 0;
    let mut literal = false;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        if !rest[..i].is_empty() {
            literal = true;
        }
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            literal = true;
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${...} expression".to_string())?;
            let expr = &body[..end];
            let (name, default) = match expr.find(":-") {
                Some(p) => (&expr[..p], Some(&expr[p + 2..])),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("\"${{{expr}}}\" is not a valid variable reference"));
            }
            match (env.get(name), default) {
                (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                (_, Some(def)) => out.push_str(def),
                (Some(v), None) => out.push_str(&v),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    ))
                }
            }
            exprs += 1;
            rest = &body[end + 1..];
        } else {
            out.push('$');
            literal = true;
            rest = after;
        }
    }
    if !rest.is_empty() {
        literal = true;
    }
    out.push_str(rest);
    Ok((out, exprs == 1 && !literal))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("SECRET".to_string(), "s3cr3t".to_string()),
            ("EMPTY".to_string(), String::new()),
            ("THREADS".to_string(), "4".to_string()),
            ("EVIL".to_string(), "x\nadmin: true".to_string()),
        ])
    }

    #[test]
    fn expands_variables_defaults_and_literals() {
        let e = env();
        let cases = [
            ("${SECRET}", "s3cr3t"),
            ("redis://:${SECRET}@h:6379", "redis://:s3cr3t@h:6379"),
            ("${MISSING:-fallback}", "fallback"),
            ("${EMPTY:-fallback}", "fallback"),
            ("cost $$5", "cost $5"),
            ("a$b", "a$b"),
        ];
        for (input, want) in cases {
            assert_eq!(expand_str(input, &e).unwrap().0, want, "{input}");
        }
        assert!(expand_str("${MISSING}", &e)
            .unwrap_err()
            .contains("MISSING is not set"));
        assert!(expand_str("${unterminated", &e).is_err());
        assert!(expand_str("${BAD-NAME}", &e).is_err());
    }

    #[test]
    fn whole_scalar_keeps_type_and_cannot_inject_structure() {
        let mut v: Value =
            serde_yaml_ng::from_str("a: ${THREADS}\nb: x${THREADS}\nc: ${EVIL}").unwrap();
        let mut errors = ConfigError::default();
        expand(&mut v, &env(), &mut String::new(), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(v["a"], Value::Number(4.into()));
        assert_eq!(v["b"], Value::String("x4".into()));
        assert_eq!(v["c"], Value::String("x\nadmin: true".into()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut v: Value =
            serde_yaml_ng::from_str("redis:\n  url: ${NOPE}\nlist: [a, '${NOPE}']").unwrap();
        let mut errors = ConfigError::default();
        expand(&mut v, &env(), &mut String::new(), &mut errors);
        let errors = errors.errors;
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("redis.url: environment variable NOPE"));
        assert!(errors[1].starts_with("list[1]: "));
    }
}
