"""Writes a tiny random Llama as a Hugging Face folder (LlamaForCausalLM): config.json,
model.safetensors (or shards with model.safetensors.index.json), tokenizer.json (a byte-level
BPE: GPT-2's 256 byte tokens, merges learned from a fixed text, two special tokens, one id left
unused), tokenizer_config.json. Deterministic (a fixed seed), numpy + safetensors + json only.

2 layers, hidden 256 (q4_K's 256-value blocks divide every row), 4 query heads and 2 key/value
heads of 64 (grouped-query attention), feed-forward 512, 300 tokens.

Usage: python scripts/make_tiny_llama.py OUT_DIR [--tied] [--dtype f32|f16] [--shards N]
  --tied    no lm_head.weight (tie_word_embeddings): the output head is the token embeddings
"""

import argparse
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HIDDEN = 256
FFN = 512
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
VOCAB = 300
MERGES = 41
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"

# The text the merges are learned from (and check_llama.py tokenizes).
TEXT = (
    "the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs "
    "there and then, over and over, in the theatre of the other weather."
)

# GPT-2's pre-tokenizer on ASCII text (\p{L} and \p{N} as ASCII letters and digits).
ASCII_SPLIT = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
)


def byte_chars():
    """GPT-2's printable stand-in for every byte (its bytes_to_unicode table)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    chars = {}
    extra = 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def words(text):
    """The pre-tokenizer's pieces of an ASCII text, in byte characters."""
    chars = byte_chars()
    return ["".join(chars[b] for b in w.encode()) for w in ASCII_SPLIT.findall(text)]


def learn_merges(text, count):
    """Greedy BPE on the text's pieces: the most frequent adjacent pair, ties by first seen."""
    pieces = [list(w) for w in words(text)]
    merges = []
    for _ in range(count):
        pairs = Counter()
        for p in pieces:
            pairs.update(itertools.pairwise(p))
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: kv[1])[0]
        merges.append(best)
        merged = best[0] + best[1]
        for p in pieces:
            i = 0
            while i < len(p) - 1:
                if (p[i], p[i + 1]) == best:
                    p[i : i + 2] = [merged]
                i += 1
    return merges


def tokenizer(merges):
    chars = byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    bos, eos = len(vocab), len(vocab) + 1
    assert eos < VOCAB - 1, "one id must stay unused"
    special = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    return (
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": bos, "content": BOS, **special, "special": True},
                {"id": eos, "content": EOS, **special, "special": True},
            ],
            "normalizer": None,
            "pre_tokenizer": {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            },
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": BOS, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [
                    {"SpecialToken": {"id": BOS, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {BOS: {"id": BOS, "ids": [bos], "tokens": [BOS]}},
            },
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": True,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": [f"{a} {b}" for a, b in merges],
            },
        },
        bos,
        eos,
    )


def weights(rng, tied):
    def normal(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"model.embed_tokens.weight": normal((VOCAB, HIDDEN), 1.0)}
    for n in range(LAYERS):
        p = f"model.layers.{n}."
        w[p + "input_layernorm.weight"] = 1.0 + normal((HIDDEN,), 0.1)
        # Queries and keys large enough that attention is far from uniform.
        w[p + "self_attn.q_proj.weight"] = normal((HEADS * HEAD_DIM, HIDDEN), 0.15)
        w[p + "self_attn.k_proj.weight"] = normal((KV_HEADS * HEAD_DIM, HIDDEN), 0.15)
        w[p + "self_attn.v_proj.weight"] = normal((KV_HEADS * HEAD_DIM, HIDDEN), 0.06)
        w[p + "self_attn.o_proj.weight"] = normal((HIDDEN, HEADS * HEAD_DIM), 0.06)
        w[p + "post_attention_layernorm.weight"] = 1.0 + normal((HIDDEN,), 0.1)
        w[p + "mlp.gate_proj.weight"] = normal((FFN, HIDDEN), 0.06)
        w[p + "mlp.up_proj.weight"] = normal((FFN, HIDDEN), 0.06)
        w[p + "mlp.down_proj.weight"] = normal((HIDDEN, FFN), 0.045)
    w["model.norm.weight"] = 1.0 + normal((HIDDEN,), 0.1)
    if not tied:
        w["lm_head.weight"] = normal((VOCAB, HIDDEN), 0.06)
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240614)

    merges = learn_merges(TEXT, MERGES)
    tok, bos, eos = tokenizer(merges)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "hidden_act": "silu",
        "vocab_size": VOCAB,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": args.tied,
        "torch_dtype": "float32" if args.dtype == "f32" else "float16",
    }
    tok_config = {
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (args.out / "tokenizer.json").write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
    (args.out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")

    w = weights(rng, args.tied)
    if args.dtype == "f16":
        w = {k: v.astype(np.float16) for k, v in w.items()}
    names = list(w)
    if args.shards <= 1:
        save_file(w, str(args.out / "model.safetensors"))
        return
    index = {"metadata": {}, "weight_map": {}}
    parts = np.array_split(np.arange(len(names)), args.shards)
    for i, part in enumerate(parts):
        file = f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors"
        save_file({names[j]: w[names[j]] for j in part}, str(args.out / file))
        for j in part:
            index["weight_map"][names[j]] = file
    (args.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
