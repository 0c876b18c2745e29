"""Writes a llama.cpp importance matrix (the GGUF layout llama-imatrix writes) for the
all-MiniLM-L6-v2 checkpoint, from the numpy BERT forward pass of verify_f32.py over calibration
texts that are not the evaluation corpus (common.corpus()).

    .venv-llama/bin/python benches/llama_cpp/make_imatrix.py F32_OR_MODEL OUT.imatrix.gguf \
        [--texts N]

F32_OR_MODEL: the F32 GGUF (the entries' names and widths are checked against its tensors; the
forward pass uses the installed checkpoint's safetensors, the weights that GGUF was made from)
or a checkpoint folder (config.json, model.safetensors, vocab.txt).

Calibration texts (--texts N, default 512): the CALIBRATION_SENTENCES below (hand-written,
none of them in common.SENTENCES), then word sequences of 4 to 32 whole words drawn from the
checkpoint's vocab.txt with CALIBRATION_SEED (not common.GENERATED_SEED), up to N texts in all.
Any text that is also in common.corpus() is an error.

For every linear layer llama.cpp quantizes, per input channel c the sum over all tokens of all
texts of x_c^2 (x the layer's input: the layer's hidden state for attn_q, attn_k, attn_v; the
attention context for attn_output; the post-attention-norm hidden state for ffn_up;
GELU(ffn_up) for ffn_down) and the token count, as the F32 tensors NAME.in_sum2 (ne =
[channels, 1]) and NAME.counts (ne = [1, 1]), with general.type = imatrix, imatrix.datasets,
imatrix.chunk_count (the texts) and imatrix.chunk_size (the context, 512). token_embd.weight is
a lookup, not a matmul: no entry, as in llama-imatrix's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, Keys
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SENTENCES, checkpoint_dir, corpus
from verify_f32 import bert_mean_embedding, wordpiece_ids

CALIBRATION_SEED = 7031977
N_CTX = 512

# The checkpoint's linear modules and the tensor names llama.cpp gives their weights.
LINEAR = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
}

# Hand-written calibration sentences: topics and wording of their own, none of SENTENCES.
CALIBRATION_SENTENCES = [
    "The library extended its opening hours during the exam period.",
    "A thunderstorm knocked out power across the northern suburbs.",
    "Our accountant asked for the receipts from last quarter.",
    "The volcano has been dormant for more than two centuries.",
    "Could you send me the slides from this morning's presentation?",
    "He trained for six months before running his first marathon.",
    "The soup needs more salt and a pinch of black pepper.",
    "Satellites measure the temperature of the ocean surface.",
    "The ferry crossing was cancelled because of high winds.",
    "She repaired the bicycle chain with a borrowed tool.",
    "Where can I buy a ticket for the evening bus?",
    "The hospital opened a new wing for children last spring.",
    "Honeybees pollinate many of the crops we eat.",
    "The contract will be renewed automatically unless cancelled.",
    "A strong password mixes letters, digits and symbols.",
    "The hikers reached the summit just before sunset.",
    "Inflation slowed for the third month in a row.",
    "The server restarted after the security update was installed.",
    "Grandmother keeps her old letters in a wooden box.",
    "The chess tournament lasted nine rounds over four days.",
    "Most of the forest burned in the dry summer of 1998.",
    "Which platform does the train to Vienna leave from?",
    "The architect designed the bridge to withstand earthquakes.",
    "He forgot his umbrella on the tram again.",
    "The function returns an empty list when the input is invalid.",
    "Penguins huddle together to survive the Antarctic winter.",
    "The choir rehearsed the hymn until it sounded perfect.",
    "Fresh strawberries are cheapest at the market in June.",
    "The committee postponed its decision until next week.",
    "Light travels about 300,000 kilometres per second.",
    "The kitten fell asleep in a basket of warm laundry.",
    "Tax returns are due at the end of April.",
    "The painter mixed blue and yellow to get a bright green.",
    "Cloud storage lets you reach your files from any device.",
    "The village celebrates its harvest festival every October.",
    "My neighbour's dog digs holes all over the lawn.",
    "The lecture covered the causes of the French Revolution.",
    "Solar panels on the roof supply half of the house's electricity.",
    "The goalkeeper saved a penalty in the last minute.",
    "Please hand in your essays by Friday at noon.",
    "The submarine dived to a depth of four hundred metres.",
    "A broken cable slowed the internet connection all day.",
    "The pastry chef decorated the cake with sugar flowers.",
    "Whales migrate thousands of miles to warmer waters.",
    "The translator worked through the night to finish the manual.",
    "Is it possible to change my seat to one by the window?",
    "The glacier carved a deep valley over thousands of years.",
    "The startup raised twelve million dollars in its first round.",
]


def calibration_texts(n: int, vocab_list: list[str]) -> list[str]:
    """The first n of CALIBRATION_SENTENCES followed by generated word sequences."""
    texts = CALIBRATION_SENTENCES[:n]
    words = [w for w in vocab_list if w.isalpha() and w.isascii() and len(w) > 1]
    rng = np.random.default_rng(CALIBRATION_SEED)
    while len(texts) < n:
        texts.append(" ".join(rng.choice(words, size=int(rng.integers(4, 33)))))
    return texts


def record_imatrix(texts, wt, cfg, vocab) -> tuple[dict[str, np.ndarray], dict[str, int], int]:
    """Per GGUF weight name the per-channel sums of squares of its input, and its row count."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def record(layer: int, module: str, h: np.ndarray) -> None:
        name = f"blk.{layer}.{LINEAR[module]}.weight"
        sq = np.sum(h * h, axis=0)
        sums[name] = sums[name] + sq if name in sums else sq
        counts[name] = counts.get(name, 0) + h.shape[0]

    tokens = 0
    for t in texts:
        ids = wordpiece_ids(t, vocab)
        if len(ids) > N_CTX:
            raise SystemExit(f"calibration text of {len(ids)} tokens, more than {N_CTX}: {t!r}")
        bert_mean_embedding(ids, wt, cfg, record=record)
        tokens += len(ids)
    return sums, counts, tokens


def check_against_gguf(path: Path, sums: dict[str, np.ndarray]) -> None:
    """Every entry names a 2-D tensor of the GGUF whose rows are as wide as the entry."""
    shapes = {t.name: [int(v) for v in t.shape] for t in GGUFReader(str(path)).tensors}
    for name, s in sums.items():
        if name not in shapes:
            raise SystemExit(f"{path}: no tensor {name}")
        if len(shapes[name]) != 2 or shapes[name][0] != s.size:
            raise SystemExit(f"{path}: {name} has ne {shapes[name]}, the imatrix {s.size} channels")


def write_imatrix(path: Path, sums, counts, n_texts: int, dataset: str) -> None:
    w = GGUFWriter(str(path), "imatrix")
    # llama-imatrix writes no general.architecture; GGUFWriter always adds one.
    w.kv_data[0].pop(Keys.General.ARCHITECTURE)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset])
    w.add_uint32("imatrix.chunk_count", n_texts)
    w.add_uint32("imatrix.chunk_size", N_CTX)
    for name in sorted(sums):
        w.add_tensor(f"{name}.in_sum2", sums[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[counts[name]]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="the F32 GGUF, or a checkpoint folder")
    ap.add_argument("out", type=Path, help="the imatrix to write (GGUF)")
    ap.add_argument("--texts", type=int, default=512, help="calibration texts (default 512)")
    args = ap.parse_args()
    if args.texts < 1:
        raise SystemExit("--texts wants at least 1")

    mdir = args.model if args.model.is_dir() else checkpoint_dir()
    cfg = json.loads((mdir / "config.json").read_text())
    vocab_list = (mdir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = {t: i for i, t in enumerate(vocab_list) if t}
    wt = {k: v.astype(np.float64) for k, v in load_file(str(mdir / "model.safetensors")).items()}

    texts = calibration_texts(args.texts, vocab_list)
    assert not set(CALIBRATION_SENTENCES) & set(SENTENCES)
    shared = set(texts) & set(corpus())
    if shared:
        raise SystemExit(f"calibration texts in the evaluation corpus: {sorted(shared)[:3]}")

    sums, counts, tokens = record_imatrix(texts, wt, cfg, vocab)
    if not args.model.is_dir():
        check_against_gguf(args.model, sums)
    n_hand = min(args.texts, len(CALIBRATION_SENTENCES))
    dataset = (
        f"make_imatrix.py: {n_hand} hand-written sentences + {len(texts) - n_hand} "
        f"vocab word sequences (seed {CALIBRATION_SEED})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_imatrix(args.out, sums, counts, len(texts), dataset)
    print(
        f"make_imatrix: {len(sums)} entries from {len(texts)} texts ({n_hand} hand-written, "
        f"{len(texts) - n_hand} generated), {tokens} tokens -> {args.out}"
    )


if __name__ == "__main__":
    main()
