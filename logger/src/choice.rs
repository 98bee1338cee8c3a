//! The one error for a setting whose value is not one of its choices.

/// A value that is not one of `choices` (e.g. a `*_full_policy`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not one of {choices}")]
pub struct UnknownChoice {
    /// What was given.
    pub value: String,
    /// The accepted values, as the message lists them.
    pub choices: &'static str,
}

impl UnknownChoice {
    /// `value` refused; `choices` lists what is accepted.
    pub fn new(value: &str, choices: &'static str) -> UnknownChoice {
        UnknownChoice {
            value: value.to_owned(),
            choices,
        }
    }
}
