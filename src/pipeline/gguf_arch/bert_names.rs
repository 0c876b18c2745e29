//! Hugging Face BERT tensor names to llama.cpp's (gguf-py's `TensorNameMap` for
//! `MODEL_ARCH.BERT`, as `benches/llama_cpp/make_f32_gguf.py` applies it), and the tensors a
//! BERT GGUF leaves out.

/// Whole-model tensors: checkpoint stem (after an optional `bert.` prefix) to GGUF stem.
pub const EMBEDDINGS: &[(&str, &str)] = &[
    ("embeddings.word_embeddings", "token_embd"),
    ("embeddings.position_embeddings", "position_embd"),
    ("embeddings.token_type_embeddings", "token_types"),
    ("embeddings.LayerNorm", "token_embd_norm"),
];

/// Per-layer tensors: the stem after `encoder.layer.N.` to the stem after `blk.N.`.
pub const LAYER: &[(&str, &str)] = &[
    ("attention.self.query", "attn_q"),
    ("attention.self.key", "attn_k"),
    ("attention.self.value", "attn_v"),
    ("attention.output.dense", "attn_output"),
    ("attention.output.LayerNorm", "attn_output_norm"),
    ("intermediate.dense", "ffn_up"),
    ("output.dense", "ffn_down"),
    ("output.LayerNorm", "layer_output_norm"),
];

/// The prefix of a layer's tensors in the checkpoint.
pub const LAYER_PREFIX: &str = "encoder.layer.";

/// A prefix some heads put before the encoder's names (`BertForMaskedLM`, ...).
pub const MODEL_PREFIX: &str = "bert.";

/// Checkpoint tensors llama.cpp's BERT graph has no place for (its loader refuses a file with
/// tensors it does not use), each with why.
pub const DROPPED_NAMES: &[(&str, &str)] =
    &[("embeddings.position_ids", "an index buffer, not a weight")];
pub const DROPPED_PREFIXES: &[(&str, &str)] = &[
    ("pooler.", "the pooler head, which llama.cpp does not run"),
    ("cls.", "a pretraining head, which llama.cpp does not run"),
];

/// The two suffixes every mapped tensor takes.
pub const SUFFIXES: &[&str] = &[".weight", ".bias"];
