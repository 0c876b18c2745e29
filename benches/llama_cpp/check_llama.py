"""llama.cpp runs the GGUF files ArrowQuant writes from a Hugging Face Llama folder as the
Hugging Face model computes: the logits of a fixed token sequence from a plain numpy forward
pass over the folder's safetensors (float64, Hugging Face's rotate-half RoPE on the weights as
stored, grouped-query attention, RMSNorm, SiLU-gated feed-forward) against llama.cpp's
(llama-cpp-python, every position's logits, the token ids fed as they are, an F32 KV cache).

Each GGUF's error is the largest |logit difference| over the largest |logit| of the reference,
at most --max-tight for the files given with --tight (weights kept as stored: F32, or F16 from
an F16 folder) and --max-loose for the quantized ones (--loose). The same forward pass with llama.cpp's own RoPE
(adjacent pairs) on the weights as stored is reported too: it is what llama.cpp would compute
without the q/k row permutation, and must be far beyond --tight (the check can fail).
The tokenizer is checked too: llama.cpp tokenizes make_tiny_llama.py's text into the merges'
tokens (GPT-2's pre-tokenizer on ASCII text, merges applied by rank).

Usage: check_llama.py HF_DIR [--tight GGUF ...] [--loose GGUF ...] [--json OUT]
Run with .venv-llama/bin/python (scripts/setup-llama.sh).
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_tiny_llama

SEQUENCE_LENGTH = 40
SEED = 7


def load_weights(folder):
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    w = {}
    for f in files:
        w.update(load_file(str(folder / f)))
    return {k: v.astype(np.float64) for k, v in w.items()}


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, positions, theta, interleaved):
    """x: [tokens, heads, head_dim]. Hugging Face pairs i with i + head_dim/2 (rotate-half);
    interleaved pairs 2i with 2i + 1, as llama.cpp's normal RoPE does."""
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    angle = positions[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def forward(w, config, ids, interleaved=False):
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    eps = config["rms_norm_eps"]
    theta = config.get("rope_theta", 10000.0)
    n = len(ids)
    positions = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = w["model.embed_tokens.weight"][ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, heads, head_dim)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, kv_heads, head_dim)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, kv_heads, head_dim)
        q, k = rope(q, positions, theta, interleaved), rope(k, positions, theta, interleaved)
        group = heads // kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(n, heads * head_dim)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T


def llama_cpp_logits(path, ids):
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=64,
        n_batch=64,
        n_threads=2,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    llm.eval(list(ids))
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    text_ids = llm.tokenize(make_tiny_llama.TEXT.encode(), add_bos=False, special=False)
    llm.close()
    return logits, text_ids


def reference_tokens(folder):
    """make_tiny_llama.py's text tokenized by the folder's own merges, by rank."""
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    rank = {tuple(m.split(" ")): i for i, m in enumerate(tok["model"]["merges"])}
    ids = []
    for word in make_tiny_llama.words(make_tiny_llama.TEXT):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(rank.get(p, len(rank)), i) for i, p in enumerate(itertools.pairwise(parts))]
            best, i = min(pairs)
            if best == len(rank):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids.extend(vocab[p] for p in parts)
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--tight", type=Path, nargs="*", default=[])
    ap.add_argument("--loose", type=Path, nargs="*", default=[])
    # F32 weights: llama.cpp's float32 sums only. F16 weights need --max-tight 2e-3: ggml
    # multiplies them with activations rounded to F16.
    ap.add_argument("--max-tight", type=float, default=1e-5)
    ap.add_argument("--max-loose", type=float, default=1e-1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    config = json.loads((args.folder / "config.json").read_text())
    w = load_weights(args.folder)
    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, config["vocab_size"], SEQUENCE_LENGTH)
    ref = forward(w, config, ids)
    scale = np.abs(ref).max()
    unpermuted = float(np.abs(forward(w, config, ids, interleaved=True) - ref).max() / scale)
    want_tokens = reference_tokens(args.folder)
    results = {"unpermuted_error": unpermuted, "files": {}}
    print(
        f"check_llama: {len(ids)} tokens, logits up to {scale:.3f}; without the q/k "
        f"permutation llama.cpp would be {unpermuted:.3e} off"
    )
    failed = []
    if unpermuted <= 10 * args.max_tight:
        failed.append(f"the unpermuted RoPE is only {unpermuted:.3e} off: the check has no power")
    for path, limit in [(p, args.max_tight) for p in args.tight] + [
        (p, args.max_loose) for p in args.loose
    ]:
        logits, tokens = llama_cpp_logits(path, ids)
        err = float(np.abs(logits - ref).max() / scale)
        rms = float(np.sqrt(np.mean((logits - ref) ** 2) / np.mean(ref**2)))
        top = float(np.mean(logits.argmax(axis=1) == ref.argmax(axis=1)))
        ok = err <= limit and tokens == want_tokens
        print(
            f"check_llama: {path.name}: max |dlogit| / max |logit| {err:.3e} (limit {limit:g}), "
            f"relative RMS {rms:.3e}, same top token at {top:.0%} of positions, tokenizer "
            f"{'as the merges give' if tokens == want_tokens else 'DIFFERS'}: "
            f"{'ok' if ok else 'FAILED'}"
        )
        results["files"][path.name] = {"error": err, "limit": limit, "rms": rms, "top1": top}
        if err > limit:
            failed.append(f"{path.name}: {err:.3e} > {limit:g}")
        if tokens != want_tokens:
            failed.append(
                f"{path.name}: llama.cpp tokenized {tokens}, the merges give {want_tokens}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        sys.exit("check_llama: " + "; ".join(failed))


if __name__ == "__main__":
    main()
