//! What the function files share and are not SQL functions themselves: argument coercion and
//! reading, rows of floats, one error style ([`args`]); the quantization arguments
//! ([`quant_args`]); the shapes shared by families of functions ([`pair_metric`],
//! [`pair_aggregate`], [`window`]); documentation sections ([`doc`]); and the registration
//! macros ([`register`]).

pub mod args;
pub mod doc;
pub(crate) mod pair_aggregate;
pub(crate) mod pair_metric;
pub(crate) mod quant_args;
pub(crate) mod register;
pub(crate) mod window;
