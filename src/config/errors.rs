//! The error accumulator every config section's compiler writes into.

/// Collects errors with their field paths.
#[derive(Default)]
pub(crate) struct Errors(pub Vec<String>);

impl Errors {
    pub fn push(&mut self, path: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
}
