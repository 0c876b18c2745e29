//! The files ArrowQuant reads, parsed without DataFusion: safetensors and GGUF files, sharded
//! checkpoints, model and pipeline folders, and the check that a Parquet file's footer decodes.
//! Everything here takes untrusted bytes, so it is built on its own for fuzzing (`fuzz/`).

pub mod error;
pub mod gguf_file;
pub mod gguf_write;
pub mod imatrix_file;
pub mod input;
pub mod panics;
pub mod parquet_file;
pub mod safetensors_file;
pub mod source;
mod thrift_compact;

pub use error::ModelError;
pub use safetensors_file::{SafetensorsFile, TensorMeta, dtype_name, is_float};
pub use source::{ConfigFile, Model, ModelTensor};

/// 1-D tensors longer than this are cut into rows of this many values, so that every list
/// value stays bounded.
pub const CHUNK_VALUES: usize = 1 << 20;

/// How a tensor is viewed as rows: `(rows, values per row)`. A tensor of shape `[d0, d1, ...]`
/// is `d0` rows of `d1 × d2 × ...`; a scalar is one row of one value; a 1-D tensor is one row,
/// cut into chunks of [`CHUNK_VALUES`] when longer.
pub fn row_layout(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] if *n > CHUNK_VALUES => (n.div_ceil(CHUNK_VALUES), CHUNK_VALUES),
        [n] => (1, *n),
        [d0, rest @ ..] => (*d0, rest.iter().product()),
    }
}

/// The number of values in row `row` of a tensor with this layout (the last chunk of a long
/// 1-D tensor is shorter).
pub fn row_values(shape: &[usize], row: usize) -> usize {
    let (_, per_row) = row_layout(shape);
    match shape {
        [n] if *n > CHUNK_VALUES => (*n - row * CHUNK_VALUES).min(CHUNK_VALUES),
        _ => per_row,
    }
}
