//! Config errors: one problem at a field path ([`BuildError`]) and every problem of one
//! config file ([`ConfigError`]), which is also the accumulator each section's compiler
//! writes into, so every problem is reported at once.
//!
//! At the crate root rather than in `config/`: `tenant` and `authz` report the problems of
//! the sections they build with [`BuildError`], and must not import `config` (it imports them).

use std::fmt;

/// A configuration problem at a field path such as `routes[3].path` or
/// `tenants[2].roles.viewer[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct BuildError {
    pub path: String,
    pub message: String,
}

impl BuildError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a config file, each written `path: message`, in the order found.
/// Kept as text: it is what `realmgate check`, the reload log and the tests read.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<String>,
}

impl ConfigError {
    /// A problem of the whole file (unreadable, not YAML): there is no field to name.
    pub fn one(msg: impl Into<String>) -> Self {
        Self {
            errors: vec![msg.into()],
        }
    }

    /// Records a problem at a field path.
    pub fn push(&mut self, path: impl fmt::Display, msg: impl fmt::Display) {
        self.errors.push(format!("{path}: {msg}"));
    }

    /// Records the problems a domain's builder reported.
    pub fn extend(&mut self, errors: impl IntoIterator<Item = BuildError>) {
        for b in errors {
            self.push(b.path, b.message);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for e in many {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}
