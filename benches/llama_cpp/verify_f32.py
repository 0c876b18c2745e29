"""Proves the F32 GGUF conversion: llama.cpp's embeddings of the fixed sentences against an
independent numpy forward pass of the checkpoint's own safetensors weights (sentence-transformers
all-MiniLM-L6-v2: BERT, exact-erf GELU, mean pooling over all tokens), tokenised by a WordPiece
tokenizer written here from vocab.txt (BERT basic tokenization: lower case, strip accents, split
on punctuation; greedy longest-match-first word pieces).

    .venv-llama/bin/python benches/llama_cpp/verify_f32.py F32.gguf [--max-distance 1e-4]

Checks, and exits non-zero unless all hold:
- llama.cpp's tokenizer (from the GGUF's vocabulary) gives the same ids as the WordPiece here;
- the mean (1 - cosine) of llama.cpp's F32 embeddings against numpy's is below --max-distance
  (llama.cpp's GELU is the tanh form, so a tiny distance remains);
- near-duplicate sentence pairs are more similar than unrelated pairs (every near-duplicate
  pair's cosine above every unrelated pair's).
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    NEAR_DUPLICATES,
    SENTENCES,
    UNRELATED,
    checkpoint_dir,
    load_llama,
    normalise,
    output_distance,
)

# ---------------------------------------------------------------- WordPiece (BERT uncased)


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _basic_tokens(text: str) -> list[str]:
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if (
            cp == 0
            or cp == 0xFFFD
            or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r")
        ):
            continue
        cleaned.append(" " if ch.isspace() else ch)
    words = []
    for word in "".join(cleaned).lower().split():
        word = "".join(
            c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
        )
        cur = ""
        for ch in word:
            if _is_punct(ch):
                if cur:
                    words.append(cur)
                words.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


def wordpiece_ids(text: str, vocab: dict[str, int]) -> list[int]:
    ids = [vocab["[CLS]"]]
    for word in _basic_tokens(text):
        if len(word) > 100:
            ids.append(vocab["[UNK]"])
            continue
        pieces, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in vocab:
                    found = vocab[sub]
                    break
                end -= 1
            if found is None:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(found)
            start = end
        ids.extend(pieces)
    ids.append(vocab["[SEP]"])
    return ids


# ---------------------------------------------------------------- numpy BERT forward


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), enough for a reference in float64.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (
        ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t * np.exp(-a * a)
    return s * y


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def bert_mean_embedding(
    ids: list[int], wt: dict[str, np.ndarray], cfg: dict, record=None
) -> np.ndarray:
    """Mean-pooled last hidden state of one tokenised input. record, if given, is called as
    record(layer, name, h) with the input h ([tokens, in_features]) of every linear layer
    (name the checkpoint's module, e.g. "attention.self.query") before it is applied."""
    eps = float(cfg["layer_norm_eps"])
    n_head = int(cfg["num_attention_heads"])
    n = len(ids)
    x = (
        wt["embeddings.word_embeddings.weight"][ids]
        + wt["embeddings.position_embeddings.weight"][:n]
        + wt["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, wt["embeddings.LayerNorm.weight"], wt["embeddings.LayerNorm.bias"], eps)
    d = x.shape[1]
    hd = d // n_head
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}."

        def lin(h, name, p=p, i=i):
            if record is not None:
                record(i, name, h)
            return h @ wt[p + name + ".weight"].T + wt[p + name + ".bias"]

        q = lin(x, "attention.self.query").reshape(n, n_head, hd).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, n_head, hd).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, n_head, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, d)
        x = _layer_norm(
            x + lin(ctx, "attention.output.dense"),
            wt[p + "attention.output.LayerNorm.weight"],
            wt[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
        x = _layer_norm(
            x + lin(h, "output.dense"),
            wt[p + "output.LayerNorm.weight"],
            wt[p + "output.LayerNorm.bias"],
            eps,
        )
    return x.mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("f32", type=Path)
    ap.add_argument("--max-distance", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    mdir = checkpoint_dir()
    cfg = json.loads((mdir / "config.json").read_text())
    vocab_list = (mdir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = {t: i for i, t in enumerate(vocab_list) if t}
    wt = {k: v.astype(np.float64) for k, v in load_file(str(mdir / "model.safetensors")).items()}

    llm = load_llama(args.f32, args.threads)
    mismatched, emb_llama, emb_np = [], [], []
    try:
        for s in SENTENCES:
            ours = wordpiece_ids(s, vocab)
            theirs = llm.tokenize(s.encode("utf-8"), add_bos=True, special=False)
            if ours != list(theirs):
                mismatched.append({"sentence": s, "numpy": ours, "llama.cpp": list(theirs)})
            emb_llama.append(llm.embed(s))
            emb_np.append(bert_mean_embedding(ours, wt, cfg))
    finally:
        llm.close()
    a, b = np.asarray(emb_np), np.asarray(emb_llama, dtype=np.float64)
    dist = output_distance(a, b)
    sim = normalise(b) @ normalise(b).T
    near = [float(sim[i, j]) for i, j in NEAR_DUPLICATES]
    unrel = [float(sim[i, j]) for i, j in UNRELATED]
    ok_sim = min(near) > max(unrel)
    ok = not mismatched and dist["mean_1_minus_cos"] < args.max_distance and ok_sim
    report = {
        "ok": ok,
        "token_mismatches": mismatched,
        "llama_vs_numpy": dist,
        "near_duplicate_cos": {"min": min(near), "mean": float(np.mean(near))},
        "unrelated_cos": {"max": max(unrel), "mean": float(np.mean(unrel))},
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"verify_f32: token ids {'identical' if not mismatched else 'DIFFER'} "
        f"({len(SENTENCES) - len(mismatched)}/{len(SENTENCES)} sentences); llama.cpp F32 vs numpy "
        f"reference: mean 1-cos {dist['mean_1_minus_cos']:.2e} (max "
        f"{dist['max_1_minus_cos']:.2e}, limit {args.max_distance:g}); cosine near-duplicates "
        f"min {min(near):.3f} mean {np.mean(near):.3f}, unrelated max {max(unrel):.3f} mean "
        f"{np.mean(unrel):.3f} -> {'OK' if ok else 'FAILED'}"
    )
    for m in mismatched[:5]:
        print(
            f"  tokens differ for {m['sentence']!r}: numpy {m['numpy']} llama.cpp {m['llama.cpp']}",
            file=sys.stderr,
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
