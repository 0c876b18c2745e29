//! The struct layouts the functions return and read, each with its builder (and, for the
//! quantized value, its validating reader): one place per struct, so that every function
//! that returns or takes one agrees on it.

pub mod error_sums;
pub mod quantized;
pub mod refusal;
pub mod stats;
