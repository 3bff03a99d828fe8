#!/usr/bin/env python3
"""Write dequantization test vectors for compute/tests/dequant_oracle.rs.

The oracle is the `gguf` Python package (gguf-py, published with llama.cpp): its numpy
dequantizers, `gguf.quants.dequantize(data, qtype)`, are an implementation independent of ours.
They compute in float32 throughout (each multiply and add rounded separately, no FMA, no float64
intermediates), so the Rust side compares bit for bit.

Usage: python3 scripts/dequant_oracle.py OUT_DIR [--model FILE.gguf ...] [--seed N]

For every type it writes cases, each a pair of files plus an entry in OUT_DIR/manifest.json:
  <TYPE>.<source>.bin   raw blocks, as stored in GGUF
  <TYPE>.<source>.f32   expected output, little-endian f32
Sources:
  random     random bytes with finite f16 (or f32) scale fields, plus edge blocks
  quantized  gguf.quants.quantize() output of random floats, for the types gguf-py can quantize
  model-<k>  blocks cut from tensors of real GGUF files (--model; by default every *.gguf in the
             repository's models/ and in ../shared/models next to the repository)

gguf-py has no dequantizer for Q8_1 and Q8_K (llama.cpp's activation types); for those two the
expected values come from the one-line formula `d * q` evaluated here in numpy float32, and the
manifest marks the oracle as "numpy-formula".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGUFReader
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
    from gguf import quants
except ImportError as e:  # the Rust test checks for this before running us
    print(f"dequant_oracle.py: the gguf Python package is missing: {e}", file=sys.stderr)
    sys.exit(3)

REPO = Path(__file__).resolve().parent.parent

# Every type compute::quant::dequant supports, by ggml name.
TYPES = [
    "F32", "F16", "BF16",
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS",
]  # fmt: skip

# Byte offsets of the f16 scale fields in each block (IQ1_M is special-cased: its f16 is split
# into the top nibbles of four u16 words).
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q8_1": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0],
    "IQ4_NL": [0], "IQ4_XS": [0],
}  # fmt: skip

# Blocks from each model tensor: a few from the start, middle and end.
MODEL_BLOCKS_PER_TENSOR = 48
MODEL_TENSORS_PER_TYPE = 4


def sizes(name: str) -> tuple[int, int]:
    """(elements, bytes) per block. gguf-py still lists Q8_1 at its old 40-byte f32 layout;
    ggml's block_q8_1 (ggml-common.h) is f16 d, f16 s, 32 x i8: 36 bytes."""
    if name == "Q8_1":
        return (32, 36)
    return GGML_QUANT_SIZES[T[name]]


def random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """n finite f16 values as uint16 bits: half of realistic magnitude, half any finite pattern."""
    small = (rng.uniform(-1, 1, n) * 2.0 ** rng.integers(-14, 0, n)).astype(np.float16).view(np.uint16)
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits)  # inf/NaN -> subnormal
    out = np.where(rng.random(n) < 0.5, small, bits).astype(np.uint16)
    # A few fixed edge values: zeros, the smallest subnormal, the largest finite half.
    edge = np.array([0x0000, 0x8000, 0x0001, 0x7BFF, 0xFBFF, 0x3C00], dtype=np.uint16)
    out[: min(n, len(edge))] = edge[: min(n, len(edge))]
    return out


def random_blocks(name: str, rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    block_size, type_size = sizes(name)
    if name == "F32":
        v = rng.standard_normal(n_blocks).astype(np.float32)
        v[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3.4e38, 1.0]
        return v.view(np.uint8)
    if name in ("F16", "BF16"):
        # Every bit pattern is a valid input, NaNs and infinities included.
        return rng.integers(0, 256, n_blocks * 2, dtype=np.uint8)
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    # Edge blocks: all zero and all ones (scale fields are fixed up below).
    raw[0, :] = 0
    raw[1, :] = 0xFF
    if name == "Q8_K":
        d = (rng.standard_normal(n_blocks) * 2.0 ** rng.integers(-20, 4, n_blocks)).astype(np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    elif name == "IQ1_M":
        d = random_scales(rng, n_blocks)
        words = raw[:, 48:56].copy().view(np.uint16).reshape(n_blocks, 4)
        for k in range(4):
            nibble = (d >> (4 * k)) & 0xF
            words[:, k] = (words[:, k] & 0x0FFF) | (nibble << 12)
        raw[:, 48:56] = words.view(np.uint8).reshape(n_blocks, 8)
    else:
        for off in F16_FIELDS[name]:
            raw[:, off : off + 2] = random_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def quantized_blocks(name: str, rng: np.random.Generator, n_blocks: int) -> np.ndarray | None:
    """gguf-py's own quantization of random floats, or None where gguf-py cannot quantize."""
    qtype = T[name]
    if name == "F32" or name == "F16":
        pass
    elif qtype not in quants._type_traits:
        return None
    block_size, _ = sizes(name)
    rows = rng.standard_normal((n_blocks, block_size)).astype(np.float32)
    rows *= (2.0 ** rng.integers(-8, 4, (n_blocks, 1))).astype(np.float32)
    rows[0, :] = 0.0  # a constant block (zero scale)
    rows[1, :] = 0.25
    try:
        q = quants.quantize(rows.reshape(-1), qtype)
    except NotImplementedError:
        return None
    return np.ascontiguousarray(q).view(np.uint8).reshape(-1)


def expected(name: str, raw: np.ndarray) -> tuple[np.ndarray, str]:
    """Oracle output for raw blocks of `name`, and the oracle's name."""
    block_size, type_size = sizes(name)
    n_blocks = raw.size // type_size
    if name == "Q8_1":
        blocks = raw.reshape(n_blocks, type_size)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = blocks[:, 4:].view(np.int8).astype(np.float32)
        return (q * d).reshape(-1).astype(np.float32), "numpy-formula"
    if name == "Q8_K":
        blocks = raw.reshape(n_blocks, type_size)
        d = blocks[:, 0:4].copy().view(np.float32)
        q = blocks[:, 4:260].view(np.int8).astype(np.float32)
        return (d * q).reshape(-1).astype(np.float32), "numpy-formula"
    out = quants.dequantize(raw.copy(), T[name])
    assert out.dtype == np.float32, (name, out.dtype)
    return np.ascontiguousarray(out).reshape(-1), "gguf-py"


def model_blocks(path: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """For each supported type in the file, (tensor name, sampled raw blocks) of a few tensors."""
    reader = GGUFReader(path)
    by_type: dict[str, list[tuple[str, np.ndarray]]] = {}
    for t in reader.tensors:
        name = t.tensor_type.name
        if name not in TYPES or len(by_type.get(name, [])) >= MODEL_TENSORS_PER_TYPE:
            continue
        _, type_size = sizes(name)
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
        n_blocks = raw.size // type_size
        blocks = raw[: n_blocks * type_size].reshape(n_blocks, type_size)
        k = MODEL_BLOCKS_PER_TENSOR // 3
        picks = sorted(set(range(min(k, n_blocks)))
                       | set(range(max(0, n_blocks // 2 - k // 2), min(n_blocks, n_blocks // 2 + k - k // 2)))
                       | set(range(max(0, n_blocks - k), n_blocks)))  # fmt: skip
        by_type.setdefault(name, []).append((t.name, blocks[picks].reshape(-1)))
    return by_type


def default_models() -> list[Path]:
    dirs = [REPO / "models", REPO.parent / "shared" / "models"]
    return sorted(p for d in dirs if d.is_dir() for p in d.glob("*.gguf"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", type=Path, action="append", help="GGUF file to take real blocks from")
    ap.add_argument("--seed", type=int, default=20240517)
    args = ap.parse_args()

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    cases = []

    def write(name: str, source: str, raw: np.ndarray, origin: str) -> None:
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        block_size, type_size = sizes(name)
        assert raw.size % type_size == 0, (name, source, raw.size)
        y, oracle = expected(name, raw)
        n_elements = raw.size // type_size * block_size
        assert y.size == n_elements, (name, y.size, n_elements)
        stem = f"{name}.{source}"
        (out / f"{stem}.bin").write_bytes(raw.tobytes())
        (out / f"{stem}.f32").write_bytes(y.astype("<f4").tobytes())
        cases.append({
            "type": name, "source": source, "origin": origin, "oracle": oracle,
            "bin": f"{stem}.bin", "f32": f"{stem}.f32", "n_elements": int(n_elements),
        })  # fmt: skip

    for name in TYPES:
        block_size, _ = sizes(name)
        n_blocks = 512 if block_size == 1 else (256 if block_size == 32 else 64)
        write(name, "random", random_blocks(name, rng, n_blocks), f"seed {args.seed}")
        q = quantized_blocks(name, rng, 64 if block_size > 1 else 512)
        if q is not None:
            write(name, "quantized", q, "gguf.quants.quantize")

    models = args.model if args.model else default_models()
    skipped = []
    for k, path in enumerate(models):
        if not path.is_file():
            skipped.append(str(path))
            continue
        for name, picks in model_blocks(path).items():
            for i, (tensor, raw) in enumerate(picks):
                write(name, f"model{k}-{i}", raw, f"{path.name}:{tensor}")

    manifest = {
        "gguf_py_version": getattr(gguf, "__version__", None) or version_of_gguf(),
        "numpy_version": np.__version__,
        "models": [str(p) for p in models if p.is_file()],
        "models_missing": skipped,
        "cases": cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"dequant_oracle.py: {len(cases)} cases from {len(manifest['models'])} model files -> {out}")
    return 0


def version_of_gguf() -> str:
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
