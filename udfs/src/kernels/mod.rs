//! Numeric kernels: plain Rust over slices, free of Arrow and DataFusion types.
//!
//! Each quantization family is a module with `quantize_row` / `dequantize_row` over whole
//! rows, writing into buffers the caller owns so that the row loop never allocates.

pub mod affine;
pub mod allocation;
pub mod block_format;
pub mod block_search;
pub mod blocks;
pub mod cpu;
#[cfg(test)]
mod decoder_checks;
pub mod error;
pub mod gguf;
pub mod iquants;
pub mod kquants;
pub mod metrics;
pub mod packing;
pub mod quantized;
pub mod scheme;
pub mod sketch;
pub mod spatial;
pub mod stats;
pub mod thermo;
pub mod timesteps;

pub use error::KernelError;
pub use scheme::{QuantSpec, Scheme};
