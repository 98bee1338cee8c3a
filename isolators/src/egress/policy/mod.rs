//! Egress shaping policy: the operator's module parameters ([`params`]) and the
//! per-container rate, ceiling and burst derived from them and from the task's
//! labels ([`shape`]).

pub mod params;
pub mod shape;

pub use params::{
    format_bytes, ClassifierChoice, EgressParams, DEFAULT_MAX_BURST, DEFAULT_ROUTE, MIN_BURST,
    PARAMS,
};
pub use shape::Shape;

#[cfg(test)]
mod tests;
