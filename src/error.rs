//! Errors shared by the modules that compile configuration.

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
