//! The library's error type.

/// Errors raised by gfn crates. Messages name the field, the value and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum GfnError {
    /// A configuration value outside its allowed range.
    #[error("invalid {field} = {value}: {allowed}")]
    InvalidConfig {
        /// The option or field name.
        field: &'static str,
        /// The value given, as text.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// The environment cannot enumerate its states, so exact evaluation is impossible.
    #[error("environment {0} cannot enumerate its states; exact evaluation needs an enumerable environment")]
    NotEnumerable(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

/// Result alias for gfn crates.
pub type Result<T, E = GfnError> = std::result::Result<T, E>;

impl GfnError {
    /// Shorthand for [`GfnError::InvalidConfig`].
    pub fn invalid(field: &'static str, value: impl ToString, allowed: impl Into<String>) -> Self {
        GfnError::InvalidConfig {
            field,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}
