"""Writes the GGUF files the engine's tests read, with gguf-py's `GGUFWriter` (llama.cpp's own
Python writer, from the `gguf` package on PyPI), so the reader is tested on files it did not
write. Run from the repository root:

    .venv/bin/python scripts/make_gguf_files.py

Output, under tests/data/gguf/:
- `tiny.gguf`: a small llama-like file with metadata of every value type and tensors of the
  plain types (F32, F16, BF16, I32), legacy block types (Q8_0, Q4_0, Q5_1) holding known
  values, a Q4_K tensor of random blocks, and an IQ2_XXS tensor of random blocks.
- `aligned64.gguf`: one F32 and one Q8_0 tensor with `general.alignment` = 64.
- `llama-f32.gguf`: an unquantized llama-like model, as `llama-quantize` takes it (F32 and F16
  tensors of seeded random values, `general.file_type` 0, `general.alignment` 64, a tokenizer):
  the GGUF-to-GGUF tests quantize it. Its rows exercise every rule: 256 values (any block),
  96 (32-value blocks only: the k-quants' fallbacks), 40 (no block: F16), a 3-D expert tensor,
  norms, an expert router and a tensor already in Q8_0 that llama.cpp leaves alone.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.quants import quantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "gguf"


def ramp(rows: int, cols: int, scale: float) -> np.ndarray:
    """Values i * scale - 1 in row-major order: easy to check from SQL."""
    return (np.arange(rows * cols, dtype=np.float32) * scale - 1.0).reshape(rows, cols)


def tiny(path: Path) -> None:
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_int32("test.i32", -7)
    w.add_float32("test.f32", 0.25)
    w.add_uint64("test.u64", 1 << 40)
    w.add_int64("test.i64", -(1 << 40))
    w.add_float64("test.f64", 1.5)
    w.add_bool("test.bool", True)
    w.add_string("test.quote", 'say "hi"')
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "ü"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.0])
    w.add_tensor("token_embd.weight", ramp(4, 64, 0.01))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.ffn_up.weight", ramp(3, 32, 0.5).astype(np.float16))
    bf16 = quantize(ramp(2, 32, 0.125), T.BF16)
    w.add_tensor("blk.0.ffn_gate.weight", bf16, raw_dtype=T.BF16)
    w.add_tensor("blk.0.positions", np.arange(6, dtype=np.int32).reshape(2, 3))
    for name, kind, rows, cols in [
        ("blk.0.attn_q.weight", T.Q8_0, 2, 64),
        ("blk.0.attn_k.weight", T.Q4_0, 2, 32),
        ("blk.0.attn_v.weight", T.Q5_1, 1, 64),
    ]:
        w.add_tensor(name, quantize(ramp(rows, cols, 0.01), kind), raw_dtype=kind)
    # gguf-py has no Q4_K quantizer: blocks of seeded random bytes (2 rows of 256 values).
    q4_k = np.random.default_rng(0).integers(0, 256, size=(2, 144), dtype=np.uint8)
    w.add_tensor("output.weight", q4_k, raw_dtype=T.Q4_K)
    # An i-quant: IQ2_XXS (one row of 256 values).
    iq2 = np.random.default_rng(1).integers(0, 256, size=(1, 66), dtype=np.uint8)
    w.add_tensor("blk.0.ffn_down.weight", iq2, raw_dtype=T.IQ2_XXS)
    write(w)


def aligned(path: Path) -> None:
    w = GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_tensor("a", ramp(1, 3, 1.0))
    w.add_tensor("b", quantize(ramp(1, 32, 0.1), T.Q8_0), raw_dtype=T.Q8_0)
    write(w)


def llama_f32(path: Path) -> None:
    rng = np.random.default_rng(7)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    w = GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_name("tiny-llama-f32")
    w.add_file_type(0)
    w.add_context_length(128)
    w.add_embedding_length(256)
    w.add_block_count(1)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_bool("test.bool", False)
    w.add_int64("test.i64", -(1 << 40))
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "a", "b", "ü", "c", "d"])
    w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0])
    w.add_token_types([2, 3, 3, 1, 1, 1, 1, 1])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", normal(8, 256))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", normal(16, 256))
    w.add_tensor("blk.0.attn_k.weight", normal(8, 256).astype(np.float16))
    v = quantize(normal(4, 256), T.Q8_0)
    w.add_tensor("blk.0.attn_v.weight", v, raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.ffn_gate_inp.weight", normal(2, 256))
    w.add_tensor("blk.0.ffn_up_exps.weight", normal(2, 4, 256))
    w.add_tensor("blk.0.ffn_down.weight", normal(4, 96))
    w.add_tensor("blk.0.odd.weight", normal(3, 40))
    w.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("output.weight", normal(8, 256))
    write(w)


def write(w: GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tiny(OUT / "tiny.gguf")
    aligned(OUT / "aligned64.gguf")
    llama_f32(OUT / "llama-f32.gguf")
    for p in sorted(OUT.glob("*.gguf")):
        print(f"{p.relative_to(OUT.parent.parent.parent)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
