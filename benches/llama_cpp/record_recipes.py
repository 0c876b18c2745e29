"""Records the ggml type llama.cpp's quantizer gives every tensor under each of its recipes
(file types such as Q4_K_M), for tests/recipes.rs to check ArrowQuant's recipes against.

    .venv-llama/bin/python benches/llama_cpp/record_recipes.py [OUT.json] [--threads 2]

OUT defaults to tests/data/recipes/llama_cpp_types.json (about 6 minutes on 2 cores). The models
are made in a temporary folder and deleted; only the JSON is kept:

- bert: the all-MiniLM-L6-v2 checkpoint as make_f32_gguf.py writes it (6 layers, rows of 384
  and 1536 values, no output.weight: llama.cpp takes its embeddings as tied);
- synthetic Llama-architecture models written with gguf-py at widths that are multiples of 256,
  random F32 weights: 8 layers without grouped-query attention, 32 layers with it (8 query heads,
  2 key/value heads), 8 layers tied (no output.weight), 80 layers with grouped-query attention
  (llama.cpp's "70B" type, whose attn_v takes more bits), 8 layers with 8 experts, and an 8-layer
  Falcon (fused attn_qkv, Falcon's own rules);
- the 8-layer grouped-query Llama and bert again with an importance matrix (all ones): some
  rules change with one, and the recipes Q2_K_S, IQ3_XXS and IQ3_XS are refused without one.

Each model is quantized with llama_model_quantize (pure = False: llama.cpp's own mixture) once
per recipe, and each output tensor's type is read back with gguf-py. A recipe llama.cpp refuses
is recorded with its error instead of types. The JSON holds, per model, the architecture, the
hyper-parameters the rules read, the tensors (name, ggml dims innermost first) once in file
order, and per recipe the type of each tensor in that order, one letter a tensor (the file's
`types` legend decodes them), without and (`recipes_with_imatrix`) with the importance matrix.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_f32_gguf import write_f32_gguf

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "data" / "recipes" / "llama_cpp_types.json"

# Recipe name (as ArrowQuant spells it) -> llama_ftype constant in llama_cpp.
RECIPES = {
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "Q2_K_S": "LLAMA_FTYPE_MOSTLY_Q2_K_S",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
    "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "IQ3_XXS": "LLAMA_FTYPE_MOSTLY_IQ3_XXS",
    "IQ3_XS": "LLAMA_FTYPE_MOSTLY_IQ3_XS",
    "IQ3_S": "LLAMA_FTYPE_MOSTLY_IQ3_S",
    "IQ3_M": "LLAMA_FTYPE_MOSTLY_IQ3_M",
}

HIDDEN = 256
FFN = 512
VOCAB = 300


def llama_like(
    path: Path,
    arch: str,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    *,
    tied: bool = False,
    n_expert: int = 0,
    falcon: bool = False,
    seed: int = 0,
) -> dict:
    """Writes a small random F32 model of `arch` with gguf-py; returns its hyper-parameters."""
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // n_head
    kv = head_dim * n_head_kv
    ffn = 4 * HIDDEN if falcon else FFN

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}-{n_layer}")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(ffn)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if falcon:
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(head_dim)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_types([int(gguf.TokenType.NORMAL)] * VOCAB)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def add(name: str, *shape: int) -> None:
        # numpy shape is outermost first: (rows, cols) is ggml ne = (cols, rows)
        data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.F32)

    add("token_embd.weight", VOCAB, HIDDEN)
    add("output_norm.weight", HIDDEN)
    if not tied:
        add("output.weight", VOCAB, HIDDEN)
    for i in range(n_layer):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", HIDDEN)
        if falcon:
            add(b + "attn_norm.bias", HIDDEN)
            add(b + "attn_qkv.weight", HIDDEN + 2 * kv, HIDDEN)
            add(b + "attn_output.weight", HIDDEN, HIDDEN)
            add(b + "ffn_up.weight", ffn, HIDDEN)
            add(b + "ffn_down.weight", HIDDEN, ffn)
            continue
        add(b + "attn_q.weight", HIDDEN, HIDDEN)
        add(b + "attn_k.weight", kv, HIDDEN)
        add(b + "attn_v.weight", kv, HIDDEN)
        add(b + "attn_output.weight", HIDDEN, HIDDEN)
        add(b + "ffn_norm.weight", HIDDEN)
        if n_expert:
            add(b + "ffn_gate_inp.weight", n_expert, HIDDEN)
            add(b + "ffn_gate_exps.weight", n_expert, ffn, HIDDEN)
            add(b + "ffn_up_exps.weight", n_expert, ffn, HIDDEN)
            add(b + "ffn_down_exps.weight", n_expert, HIDDEN, ffn)
        else:
            add(b + "ffn_gate.weight", ffn, HIDDEN)
            add(b + "ffn_up.weight", ffn, HIDDEN)
            add(b + "ffn_down.weight", HIDDEN, ffn)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "n_layer": n_layer,
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "n_expert": n_expert or None,
    }


def read_model(path: Path) -> tuple[str, dict, list]:
    """The architecture, the hyper-parameters the rules read, and (name, dims) of every tensor."""
    r = gguf.GGUFReader(str(path))
    arch = r.get_field("general.architecture").contents()

    def val(key: str):
        f = r.get_field(f"{arch}.{key}")
        return None if f is None else int(f.contents())

    hparams = {
        "n_layer": val("block_count"),
        "n_head": val("attention.head_count"),
        "n_head_kv": val("attention.head_count_kv"),
        "n_expert": val("expert_count"),
    }
    tensors = [[t.name, [int(d) for d in t.shape]] for t in r.tensors]
    return arch, hparams, tensors


def types_of(path: Path, tensors: list) -> list[str]:
    """The type of each tensor of `tensors` in the quantized file (which orders them its own way)."""
    by_name = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    if len(by_name) != len(tensors):
        raise SystemExit(f"{path} has {len(by_name)} tensors, the model {len(tensors)}")
    return [by_name[name] for name, _ in tensors]


def quiet_quantize(src: Path, dst: Path, params) -> int:
    """llama_model_quantize with llama.cpp's log (a line per tensor, on stderr) sent to /dev/null."""
    import os

    import llama_cpp

    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def ones_imatrix(tensors: list) -> tuple[ctypes.Array, list]:
    """An importance matrix of ones for every tensor of two or more dimensions."""
    import llama_cpp

    keep = []
    entries = (llama_cpp.llama_model_imatrix_data * (len(tensors) + 1))()
    n = 0
    for name, dims in tensors:
        if len([d for d in dims if d > 1]) < 2:
            continue
        size = dims[0] * (dims[2] if len(dims) > 2 else 1)
        buf = (ctypes.c_float * size)(*([1.0] * size))
        bname = name.encode()
        keep += [buf, bname]
        entries[n].name = bname
        entries[n].data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
        entries[n].size = size
        n += 1
    entries[n].name = None
    return entries, keep


def quantize_all(src: Path, tmp: Path, tensors: list, imatrix: bool, threads: int) -> dict:
    import llama_cpp

    imat = ones_imatrix(tensors) if imatrix else None
    out = {}
    for recipe, const in RECIPES.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(getattr(llama_cpp, const))
        params.nthread = threads
        params.pure = False
        if imat:
            params.imatrix = ctypes.cast(
                imat[0], ctypes.POINTER(llama_cpp.llama_model_imatrix_data)
            )
        dst = tmp / f"{src.stem}-{recipe}.gguf"
        rc = quiet_quantize(src, dst, params)
        if rc != 0:
            out[recipe] = {"refused": f"llama_model_quantize returned {rc}"}
        else:
            out[recipe] = types_of(dst, tensors)
            dst.unlink()
    return out


def main() -> None:
    import llama_cpp

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    t0 = time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plans = [
            ("bert", lambda p: write_f32_gguf(p), [False, True]),
            ("llama-8", lambda p: llama_like(p, "llama", 8, 4, 4, seed=1), [False]),
            ("llama-8-gqa", lambda p: llama_like(p, "llama", 8, 8, 2, seed=2), [False, True]),
            ("llama-32-gqa", lambda p: llama_like(p, "llama", 32, 8, 2, seed=3), [False]),
            ("llama-8-tied", lambda p: llama_like(p, "llama", 8, 8, 2, tied=True, seed=4), [False]),
            ("llama-80-gqa", lambda p: llama_like(p, "llama", 80, 8, 2, seed=5), [False]),
            ("llama-8-moe", lambda p: llama_like(p, "llama", 8, 8, 2, n_expert=8, seed=6), [False]),
            ("falcon-8", lambda p: llama_like(p, "falcon", 8, 8, 1, falcon=True, seed=7), [False]),
        ]
        for name, make, variants in plans:
            src = tmp / f"{name}.gguf"
            make(src)
            arch, hparams, tensors = read_model(src)
            model = {"name": name, "architecture": arch, "hparams": hparams, "tensors": tensors}
            for imatrix in variants:
                t1 = time.perf_counter()
                recipes = quantize_all(src, tmp, tensors, imatrix, args.threads)
                model["recipes_with_imatrix" if imatrix else "recipes"] = recipes
                refused = [r for r, v in recipes.items() if isinstance(v, dict)]
                print(
                    f"record_recipes: {name}{' with an importance matrix' if imatrix else ''}: "
                    f"{len(tensors)} tensors, {len(recipes)} recipes in "
                    f"{time.perf_counter() - t1:.1f} s"
                    + (f" (refused: {', '.join(refused)})" if refused else ""),
                    flush=True,
                )
            models.append(model)
            src.unlink()

    quantizer = f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), pure = False"
    write_json(models, quantizer, args.out)
    print(
        f"record_recipes: {len(models)} models -> {args.out} ({args.out.stat().st_size} bytes) "
        f"in {time.perf_counter() - t0:.1f} s"
    )


def write_json(models: list, quantizer: str, out: Path) -> None:
    """Writes the record: each recipe's types as one letter a tensor (the `types` legend), one
    line per tensor list and per recipe, which keeps the file small and its diffs readable."""
    names = sorted(
        {
            t
            for m in models
            for key in ("recipes", "recipes_with_imatrix")
            for types in m.get(key, {}).values()
            if isinstance(types, list)
            for t in types
        }
    )
    if len(names) > 26:
        raise SystemExit(f"{len(names)} types do not fit in one letter each")
    code = {name: chr(ord("a") + i) for i, name in enumerate(names)}
    dump = lambda v: json.dumps(v, separators=(",", ":"))
    lines = ["{"]
    lines.append(f'  "quantizer": {json.dumps(quantizer)},')
    lines.append(
        '  "note": "per model, each recipe is one letter a tensor, in the order of tensors, '
        'decoded by types; a recipe llama.cpp refused holds why",'
    )
    lines.append(f'  "types": {dump({c: n for n, c in code.items()})},')
    lines.append('  "models": [')
    for mi, m in enumerate(models):
        lines.append("    {")
        for key in ("name", "architecture", "hparams", "tensors"):
            lines.append(f'      "{key}": {dump(m[key])},')
        keys = [k for k in ("recipes", "recipes_with_imatrix") if k in m]
        for ki, key in enumerate(keys):
            lines.append(f'      "{key}": {{')
            items = list(m[key].items())
            for ri, (recipe, types) in enumerate(items):
                value = types if isinstance(types, dict) else "".join(code[t] for t in types)
                sep = "," if ri + 1 < len(items) else ""
                lines.append(f'        "{recipe}": {dump(value)}{sep}')
            lines.append("      }" + ("," if ki + 1 < len(keys) else ""))
        lines.append("    }" + ("," if mi + 1 < len(models) else ""))
    lines.append("  ]")
    lines.append("}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    json.loads(out.read_text())


if __name__ == "__main__":
    main()
