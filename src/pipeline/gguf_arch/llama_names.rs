//! Hugging Face Llama tensor names to llama.cpp's (gguf-py's `TensorNameMap` for
//! `MODEL_ARCH.LLAMA`, as llama.cpp's `convert_hf_to_gguf.py` applies it), and the tensors a
//! Llama GGUF leaves out.

/// Whole-model tensors: checkpoint stem to GGUF stem.
pub const WHOLE: &[(&str, &str)] = &[
    ("model.embed_tokens", "token_embd"),
    ("model.norm", "output_norm"),
    ("lm_head", "output"),
];

/// Per-layer tensors: the stem after `model.layers.N.` to the stem after `blk.N.`.
pub const LAYER: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The prefix of a layer's tensors in the checkpoint.
pub const LAYER_PREFIX: &str = "model.layers.";

/// The suffix every mapped tensor takes (a Llama without biases).
pub const SUFFIX: &str = ".weight";

/// The GGUF stems of the tensors whose rows llama.cpp's rotary embedding takes in its own
/// order (the converter permutes `q_proj` and `k_proj`).
pub const ROTARY: &[&str] = &["attn_q", "attn_k"];

/// The output head: optional, llama.cpp uses `token_embd` when it is absent (tied embeddings).
pub const OUTPUT: &str = "output";

/// Per-layer checkpoint tensors llama.cpp's graph has no place for, each with why.
pub const DROPPED_IN_LAYER: &[(&str, &str)] = &[(
    "self_attn.rotary_emb.inv_freq",
    "a RoPE buffer, which llama.cpp computes from rope.freq_base",
)];
