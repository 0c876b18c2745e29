//! Which tensors of a GGUF output are quantized: the ones llama.cpp's `llama-quantize` would
//! quantize, by its rules (src/llama-quant.cpp, `tensor_allows_quantization`, read in
//! ggml-org/llama.cpp): tensors of at least two dimensions (ggml counts dimensions up to the
//! last one above 1) whose name ends in `weight`, except norms, expert routers and the small or
//! position-like tensors it names. Everything else is stored as it is.

/// Substrings of names llama.cpp never quantizes, each with why.
const KEPT_PARTS: &[(&str, &str)] = &[
    ("_norm.weight", "a norm"),
    ("ffn_gate_inp.weight", "an expert router"),
    ("ffn_gate_tid2eid.weight", "a token-to-expert table"),
    ("altup", "a small AltUp tensor"),
    ("laurel", "a small LAuReL tensor"),
    ("per_layer_model_proj", "a per-layer projection"),
    ("ssm_conv1d", "a small SSM convolution"),
    ("shortconv.conv.weight", "a small short convolution"),
    ("indexer.k_proj.weight", "a small indexer projection"),
    ("indexer.q_proj.weight", "a small indexer projection"),
    ("time_mix_first.weight", "a small RWKV tensor"),
    ("time_mix_w0.weight", "a small RWKV tensor"),
    ("time_mix_w1.weight", "a small RWKV tensor"),
    ("time_mix_w2.weight", "a small RWKV tensor"),
    ("time_mix_v0.weight", "a small RWKV tensor"),
    ("time_mix_v1.weight", "a small RWKV tensor"),
    ("time_mix_v2.weight", "a small RWKV tensor"),
    ("time_mix_a0.weight", "a small RWKV tensor"),
    ("time_mix_a1.weight", "a small RWKV tensor"),
    ("time_mix_a2.weight", "a small RWKV tensor"),
    ("time_mix_g1.weight", "a small RWKV tensor"),
    ("time_mix_g2.weight", "a small RWKV tensor"),
    ("time_mix_decay_w1.weight", "a small RWKV tensor"),
    ("time_mix_decay_w2.weight", "a small RWKV tensor"),
    ("time_mix_lerp_fused.weight", "a small RWKV tensor"),
    ("attn_rel_b.weight", "a relative position bias"),
    (".position_embd", "a position embedding"),
    ("sam.pos_embd", "a position embedding"),
    ("sam.neck.", "a SAM neck tensor"),
    ("sam.net_", "a SAM tensor"),
    (".rel_pos", "a relative position tensor"),
    (".patch_embd", "a patch embedding"),
    (".patch_merger", "a patch merger"),
    ("a.rvq.codebook", "an audio codebook"),
    ("mm.a.code_embd", "an audio code embedding"),
];

/// Whole names llama.cpp never quantizes (BERT's position embeddings and token types).
const KEPT_NAMES: &[(&str, &str)] = &[
    ("position_embd.weight", "a position embedding"),
    ("token_types.weight", "token type embeddings"),
];

/// ggml's dimension count (`ggml_n_dims`): up to the last dimension above 1, at least 1.
/// `dims` are innermost first.
pub fn ggml_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// `None` when llama.cpp would quantize the tensor; otherwise why it is stored as it is.
pub fn kept_by_llama_cpp(name: &str, dims: &[u64]) -> Option<String> {
    if ggml_dims(dims) < 2 {
        return Some("1-D (bias, norm or scale)".into());
    }
    if !name.ends_with("weight") {
        return Some("not a weight (llama.cpp quantizes only *weight tensors)".into());
    }
    let why = KEPT_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| KEPT_PARTS.iter().find(|(part, _)| name.contains(part)))
        .map(|(_, why)| *why)?;
    Some(format!("{why}, which llama.cpp does not quantize"))
}

/// llama.cpp's own names for the embedding and the output head, which the sensitive-layer rule
/// of the pipeline (`strategy::sensitivity`) does not spell.
pub fn gguf_sensitivity(name: &str) -> Option<&'static str> {
    match name {
        "token_embd.weight" | "per_layer_token_embd.weight" => Some("embedding"),
        "output.weight" => Some("output head"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_count_as_ggml_counts_them() {
        assert_eq!(ggml_dims(&[4096]), 1);
        assert_eq!(ggml_dims(&[4096, 1]), 1);
        assert_eq!(ggml_dims(&[4096, 1, 1, 1]), 1);
        assert_eq!(ggml_dims(&[1, 4096]), 2);
        assert_eq!(ggml_dims(&[64, 8, 4]), 3);
    }

    #[test]
    fn llama_cpp_rules_choose_the_quantized_tensors() {
        let quantized = [
            "token_embd.weight",
            "output.weight",
            "blk.0.attn_q.weight",
            "blk.3.ffn_down_exps.weight",
            "model.layers.0.mlp.down_proj.weight",
        ];
        for name in quantized {
            assert_eq!(kept_by_llama_cpp(name, &[64, 64]), None, "{name}");
        }
        let kept = [
            ("blk.0.attn_norm.weight", &[64u64, 64][..], "a norm"),
            ("blk.0.ffn_gate_inp.weight", &[64, 8], "an expert router"),
            ("position_embd.weight", &[64, 512], "a position embedding"),
            (
                "blk.0.ssm_conv1d.weight",
                &[4, 64],
                "a small SSM convolution",
            ),
            ("blk.0.attn_q.bias", &[64, 64], "not a weight"),
            ("blk.0.attn_q.weight", &[64, 1], "1-D"),
        ];
        for (name, dims, why) in kept {
            let reason = kept_by_llama_cpp(name, dims).unwrap_or_default();
            assert!(reason.starts_with(why), "{name}: {reason}");
        }
    }
}
