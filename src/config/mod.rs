//! Configuration: one YAML file -> validated, precompiled [`RuntimeConfig`].
//!
//! Loading is parse -> `${VAR}` expansion -> schema (unknown fields are errors) -> validation
//! that collects *every* problem with its field path (`tenants[2].hosts[0]: "Acme..com" is
//! not a valid host name`) -> compilation into the lookup structures the request path uses.
//! YAML is read with `serde_yaml_ng`, a maintained fork of the deprecated `serde_yaml`.

pub mod env;
mod errors;
mod keycloak;
pub mod loader;
pub mod raw;
mod revocation;
mod runtime;

use std::fmt;
use std::path::Path;

pub use env::{EnvSource, ProcessEnv};
pub use raw::RawConfig;
pub use runtime::*;

/// Every problem found in a config file, each prefixed by its field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<String>,
}

impl ConfigError {
    pub fn one(msg: impl Into<String>) -> Self {
        Self {
            errors: vec![msg.into()],
        }
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

/// Parses YAML text into the raw schema, expanding environment variables.
pub fn parse_str(text: &str, env: &dyn EnvSource) -> Result<RawConfig, ConfigError> {
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::one(format!("not valid YAML: {e}")))?;
    let mut errors = Vec::new();
    env::expand(&mut value, env, &mut String::new(), &mut errors);
    if !errors.is_empty() {
        return Err(ConfigError { errors });
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            ConfigError::one(inner)
        } else {
            ConfigError::one(format!("{path}: {inner}"))
        }
    })
}

/// Reads, validates and compiles a config file.
pub fn load(path: &Path, env: &dyn EnvSource) -> Result<RuntimeConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
    let raw = parse_str(&text, env)?;
    RuntimeConfig::compile(raw, Some(path.to_path_buf()))
}

/// Parses, validates and compiles config text (tests, embedded demo config).
pub fn from_str(text: &str, env: &dyn EnvSource) -> Result<RuntimeConfig, ConfigError> {
    RuntimeConfig::compile(parse_str(text, env)?, None)
}
