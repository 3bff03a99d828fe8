#!/usr/bin/env python3
"""Cross-check the numpy oracle against llama.cpp itself on tiny random models.

Optional: needs a llama.cpp build (not part of the project). Obtain the source, e.g.
the sdist of llama-cpp-python (vendor/llama.cpp), then:
    cd LL && cmake -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \\
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \\
        && cmake --build build --target llama -j
    python3 scripts/oracle/crosscheck_llamacpp.py --llama-dir LL [--keep DIR]

It compiles llamacpp_logits.cpp, writes tiny models with make_tiny_model.py and
compares llama.cpp's logits (one batch, KV cache F32) with the oracle's:
  * exact F32 weights (llama, llama tied, llama + rope_freqs, qwen2, qwen2 tied, GQA):
    must agree to ~1e-5 (float32 vs float64 arithmetic) -- validates every formula.
  * F32 layers with a quantized token_embd of each type (get_rows dequantizes exactly
    in ggml): must agree to ~1e-5 -- validates gguf-py dequantization == ggml's, and the
    K-quant encoders in kquants.py.
  * fully quantized models: reported (exact and --ggml-like), not asserted; llama.cpp
    rounds matmul activations to Q8_0/Q8_1/Q8_K, which moves logits by 0.1-0.4 on these models.
Exit status non-zero if an asserted comparison fails.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ref_forward as R  # noqa: E402

TOKS = [1, 2, 3, 100, 2000, 30000, 5, 49151, 7, 8, 9, 10]


def build(ll: str, out: str):
    libs = [f"{ll}/build/src/libllama.a", f"{ll}/build/ggml/src/libggml.a",
            f"{ll}/build/ggml/src/libggml-cpu.a", f"{ll}/build/ggml/src/libggml-base.a"]
    subprocess.run(["g++", "-O2", "-std=c++17", f"-I{ll}/include", f"-I{ll}/ggml/include",
                    os.path.join(HERE, "llamacpp_logits.cpp")] + libs +
                   ["-fopenmp", "-lpthread", "-ldl", "-o", out], check=True)


def llama_logits(exe, path, toks):
    out = subprocess.run([exe, path, ",".join(map(str, toks)), "kv=f32"],
                         capture_output=True, text=True, check=True).stdout
    return np.array([line.split() for line in out.strip().split("\n")], dtype=np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-dir", required=True)
    ap.add_argument("--keep", help="write the models here instead of a temp dir")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="oracle-xcheck-")
    os.makedirs(tmp, exist_ok=True)
    exe = os.path.join(tmp, "llamacpp_logits")
    build(args.llama_dir, exe)

    cases = []  # (name, make args, asserted tolerance or None)
    for arch, extra in [("llama", []), ("llama", ["--tied"]), ("llama", ["--rope-freqs"]),
                        ("qwen2", []), ("qwen2", ["--tied"]), ("llama", ["--n-head-kv", "1"]),
                        ("qwen2", ["--n-head-kv", "4"])]:
        cases.append((f"{arch}-f32{''.join(extra)}", ["--arch", arch, "--types", "f32"] + extra, 1e-4))
    for t in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f16", "bf16"]:
        cases.append((f"llama-embd-{t}", ["--arch", "llama", "--n-layer", "1", "--types", "f32", "--embd-type", t],
                      1e-4))
    for arch in ("llama", "qwen2"):
        for t in ("mixed", "kquant"):
            cases.append((f"{arch}-{t}", ["--arch", arch, "--types", t], None))

    bad = 0
    for name, mk, tol in cases:
        path = os.path.join(tmp, name + ".gguf")
        subprocess.run([sys.executable, os.path.join(HERE, "make_tiny_model.py"), "--out", path] + mk,
                       check=True, capture_output=True)
        m = R.Model(path)
        L = llama_logits(exe, path, TOKS)
        z = R.forward(m, TOKS)
        d = np.abs(L - z).max()
        line = f"{name:26s} max|logit diff| exact={d:.2e}"
        if tol is None:
            zg = R.forward(m, TOKS, ggml_like=True, kv_f16=False)
            line += f"  ggml_like={np.abs(L - zg).max():.2e}  (reported only)"
        else:
            ok = d <= tol
            bad += not ok
            line = ("PASS " if ok else "FAIL ") + line + f" (<= {tol:g})"
        print(line, flush=True)
    print(f"{bad} failed; models in {tmp}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
