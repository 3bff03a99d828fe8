#!/usr/bin/env python3
"""Reference (oracle) forward pass for llama / qwen2 GGUF models, in float64 numpy.

Independent of prima: the GGUF is parsed with gguf-py's GGUFReader and every
tensor is dequantized with gguf.quants.dequantize, then the whole prompt is run
through the transformer at once (causal attention, positions 0..n-1) in float64.

Usage:
    python3 scripts/oracle/ref_forward.py MODEL.gguf --tokens 1,2,3 --out logits.json [--all-positions]

Output JSON:
    {"model": ..., "arch": ..., "tokens": [...], "n_vocab": V,
     "positions": [p, ...],              # which positions have logits (default: last only)
     "logits": [[V floats], ...]}        # one row per entry of "positions", 7 significant digits

The formulas follow llama.cpp's graph (src/llama-model.cpp, llm_build_llama / llm_build_qwen2);
the ggml op each step corresponds to is given in the comments.

Conventions (ggml):
  * A GGUF tensor with dims [ne0, ne1] = [n_in, n_out] is a numpy array of shape
    (n_out, n_in) (row-major, ne0 fastest). ggml_mul_mat(W, x) computes W @ x
    per column, i.e. y = x @ W.T with x of shape (n_tokens, n_in).
  * RoPE: llama uses ggml rope mode 0 ("normal": rotates adjacent pairs
    (x[2i], x[2i+1])); qwen2 uses mode 2 (NEOX: rotates (x[i], x[i + n_rot/2])).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import gguf

# llama.cpp rope type per architecture (llama_model_rope_type in llama-model.cpp)
ROPE_NORM = 0   # LLAMA_ROPE_TYPE_NORM  (GGML_ROPE_TYPE_NORMAL)
ROPE_NEOX = 2   # LLAMA_ROPE_TYPE_NEOX  (GGML_ROPE_TYPE_NEOX)
ARCH_ROPE = {"llama": ROPE_NORM, "qwen2": ROPE_NEOX}


class Model:
    """Hyper-parameters and float64 weights of a llama-family GGUF model."""

    def __init__(self, path: str, verbose: bool = False):
        t0 = time.time()
        r = gguf.GGUFReader(path)
        self.path = path
        kv = {}
        for k, f in r.fields.items():
            try:
                kv[k] = f.contents()
            except Exception:  # pragma: no cover - exotic metadata
                pass
        self.kv = kv
        arch = kv["general.architecture"]
        if arch not in ARCH_ROPE:
            raise SystemExit(f"unsupported architecture {arch!r} (oracle supports {sorted(ARCH_ROPE)})")
        self.arch = arch

        def hp(key, default=None):
            v = kv.get(f"{arch}.{key}", default)
            if v is None:
                raise SystemExit(f"missing metadata {arch}.{key}")
            return v

        self.n_layer = int(hp("block_count"))
        self.n_embd = int(hp("embedding_length"))
        self.n_ff = int(hp("feed_forward_length"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv", self.n_head))
        self.head_dim = int(hp("attention.key_length", self.n_embd // self.n_head))
        self.head_dim_v = int(hp("attention.value_length", self.head_dim))
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.freq_base = float(hp("rope.freq_base", 10000.0))
        self.eps = float(hp("attention.layer_norm_rms_epsilon"))
        # Linear RoPE scaling (llama.cpp: freq_scale = 1/factor, theta *= freq_scale).
        scaling = kv.get(f"{arch}.rope.scaling.type", "none")
        self.freq_scale = 1.0
        if scaling == "linear":
            self.freq_scale = 1.0 / float(kv.get(f"{arch}.rope.scaling.factor", 1.0))
        elif scaling not in ("none", None):
            raise SystemExit(f"rope scaling {scaling!r} not supported by the oracle")
        self.rope_mode = ARCH_ROPE[arch]
        assert self.n_head % self.n_head_kv == 0

        # Dequantize every tensor once (gguf-py is the independent reference for
        # every block format). GGUF dims [n_in, n_out] -> numpy (n_out, n_in).
        self.w: dict[str, np.ndarray] = {}
        self.types: dict[str, str] = {}
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            a = np.asarray(a).reshape(shape)
            self.w[t.name] = a.astype(np.float64)
            self.types[t.name] = t.tensor_type.name
        self.n_vocab = self.w["token_embd.weight"].shape[0]
        # Tied embeddings: llama.cpp falls back to token_embd.weight when output.weight is absent.
        self.output_name = "output.weight" if "output.weight" in self.w else "token_embd.weight"
        self.rope_freqs = self.w.get("rope_freqs.weight")
        if verbose:
            print(f"[oracle] loaded {path}: arch={arch} n_layer={self.n_layer} n_embd={self.n_embd} "
                  f"n_head={self.n_head} n_head_kv={self.n_head_kv} head_dim={self.head_dim} "
                  f"n_rot={self.n_rot} n_ff={self.n_ff} n_vocab={self.n_vocab} "
                  f"base={self.freq_base} eps={self.eps} rope_mode={self.rope_mode} "
                  f"output={self.output_name} rope_freqs={self.rope_freqs is not None} "
                  f"({time.time() - t0:.2f}s)", file=sys.stderr)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # ggml_rms_norm(x, eps) followed by ggml_mul(., w):
    #   y = x / sqrt(mean(x^2) + eps) * w        (mean over the embedding dim)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, mode: int,
         freq_factors: np.ndarray | None = None, freq_scale: float = 1.0) -> np.ndarray:
    """ggml_rope_ext(x, pos, freq_factors, n_rot, mode, ..., freq_base, freq_scale,
    ext_factor=0, attn_factor=1, ...) on x of shape (n_tokens, n_heads, head_dim).

    For pair index i in [0, n_rot/2):
        theta_i = pos * freq_scale * base^(-2i/n_rot) / freq_factors[i]
    mode 0 (normal):  (x[2i], x[2i+1])        rotated by theta_i
    mode 2 (NEOX):    (x[i],  x[i + n_rot/2]) rotated by theta_i
        x0' = x0*cos - x1*sin ;  x1' = x0*sin + x1*cos
    Dims >= n_rot pass through unchanged.
    """
    half = n_rot // 2
    i = np.arange(half, dtype=np.float64)
    inv_freq = base ** (-2.0 * i / n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors[:half]
    theta = pos.astype(np.float64)[:, None] * freq_scale * inv_freq[None, :]  # (n_tokens, half)
    cos = np.cos(theta)[:, None, :]
    sin = np.sin(theta)[:, None, :]
    y = x.copy()
    if mode == ROPE_NORM:
        x0 = x[..., 0:n_rot:2]
        x1 = x[..., 1:n_rot:2]
        y[..., 0:n_rot:2] = x0 * cos - x1 * sin
        y[..., 1:n_rot:2] = x0 * sin + x1 * cos
    elif mode == ROPE_NEOX:
        x0 = x[..., 0:half]
        x1 = x[..., half:n_rot]
        y[..., 0:half] = x0 * cos - x1 * sin
        y[..., half:n_rot] = x0 * sin + x1 * cos
    else:
        raise ValueError(f"rope mode {mode}")
    return y


# ---------------------------------------------------------------------------
# Optional emulation of llama.cpp's CPU precision (ggml_like=True). Off by default:
# the oracle proper is exact float64 math on the dequantized weights. With it on,
# the activations entering each ggml_mul_mat are rounded the way ggml's CPU
# backend does (src1 converted to the weight type's vec_dot_type: Q8_0 blocks of 32
# with an fp16 scale, Q8_K blocks of 256 with an f32 scale, F16/BF16 rounding), and,
# with kv_f16, q/k/v and the softmax output are rounded to F16 (default F16 KV cache).
# Checked against llama.cpp (CPU, KV cache F32) on tiny models: it reproduces
# llama.cpp's logits to ~1e-5 for F32, BF16, Q4_0, Q8_0, Q2_K, Q3_K, Q5_K, Q6_K
# weights, where exact mode differs by 0.1-0.4. It is NOT exact for Q4_1/Q5_1
# (Q8_1's fp16 block sum is not modelled), F16 weights, or some repacked Q4_K
# kernels. A diagnostic of how much of a gap is activation rounding, nothing more.
VEC_DOT_Q8_0 = {"Q4_0", "Q5_0", "Q8_0", "IQ4_NL"}
VEC_DOT_Q8_1 = {"Q4_1", "Q5_1"}
VEC_DOT_Q8_K = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS"}


def _f16(x):
    return x.astype(np.float16).astype(np.float64)


def _roundf(x):  # C roundf: half away from zero
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_activations(x: np.ndarray, wtype: str) -> np.ndarray:
    """Round x (n, k) the way ggml converts src1 to vec_dot_type before the dot products."""
    if wtype == "F32":
        return x
    if wtype == "F16":
        return _f16(x)
    if wtype == "BF16":
        b = x.astype(np.float32).view(np.uint32)
        b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16  # round-to-nearest-even
        return b.astype(np.uint32).view(np.float32).astype(np.float64)
    n, k = x.shape
    x32 = x.astype(np.float32).astype(np.float64)
    if wtype in VEC_DOT_Q8_0 or wtype in VEC_DOT_Q8_1:
        b = x32.reshape(n, k // 32, 32)                    # quantize_row_q8_0/q8_1: d = amax/127
        d = np.abs(b).max(axis=-1, keepdims=True) / 127.0
        idv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0.0)
        q = _roundf(b * idv)
        return (_f16(d) * q).reshape(n, k)                 # d stored as fp16
    if wtype in VEC_DOT_Q8_K:
        b = x32.reshape(n, k // 256, 256)                  # quantize_row_q8_K: d = max/-127 (f32)
        idx = np.abs(b).argmax(axis=-1)[..., None]
        mx = np.take_along_axis(b, idx, axis=-1)
        iscale = np.where(mx != 0, -127.0 / np.where(mx != 0, mx, 1), 0.0)
        q = np.minimum(np.round(b * iscale), 127)          # nearest_int (half to even)
        d = np.where(iscale != 0, 1.0 / np.where(iscale != 0, iscale, 1), 0.0)
        return (d.astype(np.float32).astype(np.float64) * q).reshape(n, k)
    raise ValueError(f"no vec_dot emulation for {wtype}")


def silu(x: np.ndarray) -> np.ndarray:
    # ggml_silu: x * sigmoid(x)
    return x / (1.0 + np.exp(-x))


def forward(m: Model, tokens, positions=None, logits_for=None, ggml_like: bool = False,
            kv_f16: bool | None = None) -> np.ndarray:
    """Run the prompt `tokens` (positions 0..n-1 unless given) with causal attention.

    Returns float64 logits of shape (len(logits_for), n_vocab); logits_for is a
    list of token indices (default: all positions). ggml_like: emulate llama.cpp's
    CPU rounding of matmul inputs and F16 KV cache (see quantize_activations)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    pos = np.arange(n) if positions is None else np.asarray(positions)
    if logits_for is None:
        logits_for = list(range(n))
    w = m.w

    def mm(x, name):                                          # ggml_mul_mat(W, x) == x @ W.T
        if ggml_like:
            x = quantize_activations(x, m.types[name])
        return x @ w[name].T

    if kv_f16 is None:
        kv_f16 = ggml_like
    rnd = _f16 if kv_f16 else (lambda a: a)
    H, Hkv, hd, hdv = m.n_head, m.n_head_kv, m.head_dim, m.head_dim_v
    group = H // Hkv

    # ggml_get_rows(token_embd, tokens): row t of the (n_vocab, n_embd) matrix.
    x = w["token_embd.weight"][tokens]                      # (n, n_embd)

    # Causal mask (llama.cpp KQ mask: -inf where key position > query position).
    causal = pos[None, :] > pos[:, None]                     # (n_q, n_k)
    kq_scale = 1.0 / np.sqrt(hd)                             # kq_scale = 1/sqrt(n_embd_head_k)

    for il in range(m.n_layer):
        p = f"blk.{il}."
        # --- attention -----------------------------------------------------
        h = rms_norm(x, w[p + "attn_norm.weight"], m.eps)     # ggml_rms_norm + ggml_mul
        q = mm(h, p + "attn_q.weight")                        # ggml_mul_mat(wq, h)
        k = mm(h, p + "attn_k.weight")                        # ggml_mul_mat(wk, h)
        v = mm(h, p + "attn_v.weight")                        # ggml_mul_mat(wv, h)
        if p + "attn_q.bias" in w:                            # qwen2: ggml_add(., bq/bk/bv)
            q = q + w[p + "attn_q.bias"]
        if p + "attn_k.bias" in w:
            k = k + w[p + "attn_k.bias"]
        if p + "attn_v.bias" in w:
            v = v + w[p + "attn_v.bias"]
        q = q.reshape(n, H, hd)                               # ggml_reshape_3d(q, hd, H, n)
        k = k.reshape(n, Hkv, hd)
        v = v.reshape(n, Hkv, hdv)
        q = rope(q, pos, m.n_rot, m.freq_base, m.rope_mode, m.rope_freqs, m.freq_scale)  # ggml_rope_ext
        k = rope(k, pos, m.n_rot, m.freq_base, m.rope_mode, m.rope_freqs, m.freq_scale)
        q, k, v = rnd(q), rnd(k), rnd(v)                      # ggml_like: F16 KV cache, q -> F16 for the K dot

        attn = np.empty((n, H, hdv))
        for hh in range(H):
            g = hh // group                                   # GQA: query head hh reads kv head hh // (H/Hkv)
            s = (q[:, hh, :] @ k[:, g, :].T) * kq_scale       # ggml_mul_mat(k, q) * kq_scale
            s = np.where(causal, -np.inf, s)                  # + KQ mask
            s = s - s.max(axis=-1, keepdims=True)             # ggml_soft_max_ext
            e = np.exp(s)
            a = e / e.sum(axis=-1, keepdims=True)
            attn[:, hh, :] = rnd(a) @ v[:, g, :]              # ggml_mul_mat(v^T, kq)
        o = mm(attn.reshape(n, H * hdv), p + "attn_output.weight")  # ggml_mul_mat(wo, kqv)
        x = x + o                                             # ggml_add (residual)

        # --- feed-forward (SwiGLU) ----------------------------------------------
        h = rms_norm(x, w[p + "ffn_norm.weight"], m.eps)
        gate = mm(h, p + "ffn_gate.weight")                   # ggml_mul_mat(ffn_gate, h)
        up = mm(h, p + "ffn_up.weight")                       # ggml_mul_mat(ffn_up, h)
        f = mm(silu(gate) * up, p + "ffn_down.weight")        # ggml_silu, ggml_mul, ggml_mul_mat(ffn_down, .)
        x = x + f                                             # ggml_add (residual)

    x = x[logits_for]
    x = rms_norm(x, w["output_norm.weight"], m.eps)           # final ggml_rms_norm + ggml_mul
    return mm(x, m.output_name)                               # ggml_mul_mat(output, x) -> (n_out, n_vocab)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def greedy(m: Model, prompt, n_predict: int, ggml_like: bool = False):
    """Greedy decoding by re-running the full sequence (the oracle has no KV cache).
    Returns (ids, logprobs_of_chosen, top2 per step)."""
    seq = list(prompt)
    out, lps, top2 = [], [], []
    for _ in range(n_predict):
        z = forward(m, seq, logits_for=[len(seq) - 1], ggml_like=ggml_like)[0]
        lp = log_softmax(z)
        order = np.argsort(-lp)[:2]
        t = int(order[0])
        out.append(t)
        lps.append(float(lp[t]))
        top2.append([(int(i), float(lp[i])) for i in order])
        seq.append(t)
    return out, lps, top2


def fmt_row(row) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in row) + "]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", help="output JSON path (default: stdout summary only)")
    ap.add_argument("--all-positions", action="store_true", help="write logits for every position, not just the last")
    ap.add_argument("--ggml-like", action="store_true",
                    help="emulate llama.cpp CPU activation rounding (diagnostic, see quantize_activations)")
    ap.add_argument("--kv-f16", action="store_true", help="with --ggml-like: also round q/k/v/softmax to F16")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    tokens = [int(t) for t in args.tokens.replace(" ", "").split(",") if t != ""]
    if not tokens:
        raise SystemExit("no tokens")
    m = Model(args.model, verbose=args.verbose)
    bad = [t for t in tokens if not 0 <= t < m.n_vocab]
    if bad:
        raise SystemExit(f"token ids out of range [0,{m.n_vocab}): {bad}")
    positions = list(range(len(tokens))) if args.all_positions else [len(tokens) - 1]
    t0 = time.time()
    logits = forward(m, tokens, logits_for=positions, ggml_like=args.ggml_like, kv_f16=args.kv_f16)
    if args.verbose:
        print(f"[oracle] forward of {len(tokens)} tokens: {time.time() - t0:.2f}s", file=sys.stderr)

    last = logits[-1]
    lp = log_softmax(last)
    top = np.argsort(-last)[:5]
    print("last position top-5: " + ", ".join(f"{int(i)}:{last[i]:.4f} (lp {lp[i]:.4f})" for i in top),
          file=sys.stderr)

    if args.out:
        with open(args.out, "w") as f:
            f.write("{\n")
            f.write(f' "model": {json.dumps(args.model)},\n')
            f.write(f' "arch": {json.dumps(m.arch)},\n')
            f.write(f' "tokens": {json.dumps(tokens)},\n')
            f.write(f' "n_vocab": {m.n_vocab},\n')
            f.write(f' "positions": {json.dumps(positions)},\n')
            f.write(f' "mode": {json.dumps("ggml_like" if args.ggml_like else "exact_f64")},\n')
            f.write(' "logits": [\n')
            f.write(",\n".join("  " + fmt_row(r) for r in logits))
            f.write("\n ]\n}\n")


if __name__ == "__main__":
    main()
