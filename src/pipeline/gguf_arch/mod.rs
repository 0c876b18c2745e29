//! Architectures whose checkpoints ArrowQuant writes as GGUF files their runtime loads: the
//! metadata keys, the tokenizer and the tensor names of each, read from the model folder.
//!
//! - [`bert`]: Hugging Face BERT encoders (`BertModel`, sentence-transformers folders) for
//!   llama.cpp, as its converter writes them.
//! - [`diffusion`]: diffusers components, the `general.architecture` key ComfyUI-GGUF reads;
//!   [`sd_cpp`]: SD1/SDXL UNets as stable-diffusion.cpp loads them instead.
//! - [`llama`]: Hugging Face Llama decoders (`LlamaForCausalLM`) for llama.cpp, as its
//!   converter writes them, with their byte-level BPE tokenizer ([`bpe_vocab`]).

pub mod bert;
mod bert_names;
pub mod bpe_vocab;
pub mod diffusion;
pub mod llama;
mod llama_names;
pub mod sd_cpp;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use datafusion::common::{DataFusionError, Result};

use crate::model::gguf_write::MetaValue;
use crate::model::input::read_text;

/// What a known architecture makes of a checkpoint.
#[derive(Debug, Clone)]
pub struct ArchLayout {
    /// `general.architecture`.
    pub architecture: String,
    /// Every key, `general.architecture` first (before `general.file_type` and `quantize.*`).
    pub metadata: Vec<(String, MetaValue)>,
    /// Per tensor of the model, in its order: its name in the file, or `None` when left out.
    pub names: Vec<Option<String>>,
    /// The tensors left out and why.
    pub dropped: Vec<(String, String)>,
    /// Files read besides the model's own (vocabularies, pooling configurations): the output
    /// must never replace them either.
    pub read: Vec<PathBuf>,
    /// Which runtime loads the file, for the run's summary.
    pub note: String,
    /// Checkpoint tensors (by checkpoint name) whose rows the file holds in another order.
    pub reordered: HashMap<String, RowOrder>,
}

/// A reordering of a tensor's rows (its outermost index: the rows of the weights table), applied
/// to the rows read, so before they are quantized. Row `r` of the checkpoint is row
/// [`position`](RowOrder::position)`(r)` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    /// llama.cpp's rotary layout of a query or key projection (`convert_hf_to_gguf.py`'s
    /// `LlamaModel.permute`, n_head heads for q and n_head_kv for k): within each head of
    /// `head_dim` rows, Hugging Face's two halves (rotate-half RoPE pairs row `i` with row
    /// `i + head_dim / 2`) interleaved, so that a pair is two adjacent rows (llama.cpp's RoPE
    /// rotates adjacent values). Checkpoint row `h * head_dim + j * head_dim / 2 + i` (half `j`
    /// of head `h`) becomes row `h * head_dim + 2 * i + j`.
    RotaryPairs { head_dim: u64 },
}

impl RowOrder {
    /// The row in the file of checkpoint row `row`.
    pub fn position(&self, row: u64) -> u64 {
        match *self {
            RowOrder::RotaryPairs { head_dim } => {
                let half = head_dim / 2;
                row / head_dim * head_dim + row % half * 2 + row % head_dim / half
            }
        }
    }

    /// [`position`](RowOrder::position) as a SQL expression of the integer column `row`.
    pub fn sql(&self, row: &str) -> String {
        match *self {
            RowOrder::RotaryPairs { head_dim } => {
                let half = head_dim / 2;
                format!(
                    "({row} / {head_dim} * {head_dim} + {row} % {half} * 2 + {row} % {head_dim} / {half})"
                )
            }
        }
    }

    /// For the run's report.
    pub fn describe(&self) -> String {
        match *self {
            RowOrder::RotaryPairs { head_dim } => format!(
                "rows in llama.cpp's rotary order (pairs interleaved in heads of {head_dim})"
            ),
        }
    }
}

/// The largest vocabulary or tokenizer file read.
const MAX_TEXT: u64 = 200_000_000;

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// A text file of the model folder, its errors naming it.
fn read_file(path: &Path) -> Result<String> {
    read_text(path, MAX_TEXT).map_err(|e| plan_error(e.to_string()))
}

/// A JSON file of the model folder, its errors naming it.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&read_file(path)?)
        .map_err(|e| plan_error(format!("{}: {e}", path.display())))
}

fn string(key: &str, value: &str) -> (String, MetaValue) {
    (key.to_string(), MetaValue::String(value.to_string()))
}

fn u32_key(key: &str, value: u32) -> (String, MetaValue) {
    (key.to_string(), MetaValue::U32(value))
}

fn bool_key(key: &str, value: bool) -> (String, MetaValue) {
    (key.to_string(), MetaValue::Bool(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The converter's rule on row indices: rows seen as `[heads, 2, head_dim / 2]`, the last
    /// two axes swapped.
    fn converter_order(rows: u64, head_dim: u64) -> Vec<u64> {
        let half = head_dim / 2;
        let mut order = Vec::new();
        for h in 0..rows / head_dim {
            for i in 0..half {
                for j in 0..2 {
                    order.push(h * head_dim + j * half + i);
                }
            }
        }
        order
    }

    #[test]
    fn rotary_pairs_move_rows_as_the_converter_permutes_them() {
        for (rows, head_dim) in [(8, 4), (24, 8), (128, 64), (256, 128)] {
            let o = RowOrder::RotaryPairs { head_dim };
            // File row n holds checkpoint row converter_order[n].
            for (n, from) in converter_order(rows, head_dim).into_iter().enumerate() {
                assert_eq!(
                    o.position(from),
                    n as u64,
                    "{rows} rows of heads of {head_dim}"
                );
            }
        }
        let o = RowOrder::RotaryPairs { head_dim: 4 };
        let moved: Vec<u64> = (0..8).map(|r| o.position(r)).collect();
        assert_eq!(moved, [0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
