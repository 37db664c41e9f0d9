//! Configuration: one YAML file -> validated, precompiled [`RuntimeConfig`].
//!
//! Loading is parse -> `${VAR}` expansion -> schema ([`raw`]; unknown fields are errors) ->
//! each section's compiler ([`compile`](RuntimeConfig::compile)), which validates its fields,
//! collecting *every* problem with its field path (`tenants[2].hosts[0]: "Acme..com" is not a
//! valid host name`), and builds the lookup structures the request path uses. The request
//! path reads only the compiled [`RuntimeConfig`], never the schema. YAML is read with
//! `serde_yaml_ng`, a maintained fork of the deprecated `serde_yaml`.

mod compile;
pub mod env;
pub mod raw;
mod report;
mod runtime;

use std::path::Path;

pub use crate::config_error::ConfigError;
pub use env::{EnvSource, ProcessEnv};
pub use raw::RawConfig;
pub use report::mask_url;
pub use runtime::{
    AdminSettings, AdminToken, AdminWrites, RuntimeConfig, ServerSettings, TenantSyncSettings,
    TlsFiles, UpstreamTarget, UpstreamTimeouts,
};

/// Parses YAML text into the raw schema, expanding environment variables.
pub fn parse_str(text: &str, env: &dyn EnvSource) -> Result<RawConfig, ConfigError> {
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::one(format!("not valid YAML: {e}")))?;
    let mut errors = ConfigError::default();
    env::expand(&mut value, env, &mut String::new(), &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            ConfigError::one(inner)
        } else {
            let mut one = ConfigError::default();
            one.push(path, inner);
            one
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
