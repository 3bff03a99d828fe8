"""Simple numpy encoders for the GGML K-quant block formats (Q2_K .. Q6_K).

gguf-py (0.19) can *dequantize* every K-quant but can only *quantize* F16, BF16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0, TQ2_0 and MXFP4. These encoders fill the gap
for test models. They are plain min/max (not llama.cpp's error-minimising search),
which is fine: a test model only needs valid blocks; what the blocks *mean* is
defined by the decoder, and the oracle decodes them with gguf-py's own
gguf.quants.dequantize, never with anything from this file.

The byte layouts mirror gguf-py's dequantize_blocks (a port of ggml's
block_q*_K structs, QK_K = 256):
  Q2_K: scales[16] (lo nibble scale, hi nibble min) | qs[64] (2-bit) | d f16 | dmin f16    = 84 B
  Q3_K: hmask[32] | qs[64] (low 2 bits) | scales[12] (6-bit, packed) | d f16              = 110 B
  Q4_K: d f16 | dmin f16 | scales[12] (6-bit scale+min x8) | qs[128] (4-bit)              = 144 B
  Q5_K: d f16 | dmin f16 | scales[12] | qh[32] | qs[128]                                   = 176 B
  Q6_K: ql[128] | qh[64] | scales[16] (int8) | d f16                                       = 210 B

Run this file to round-trip random data through encode -> gguf-py decode.
"""
from __future__ import annotations

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

QK_K = 256


def _f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _safe_div(a, b):
    return np.where(b != 0, a / np.where(b != 0, b, 1), 0.0)


def _nearest(x):
    return np.round(x)


def _affine_subblocks(x, nsub, qmax, scale_bits):
    """x: (nb, nsub, sub). Affine quantization value = d*sc*q - dmin*m with
    q in [0,qmax], sc/m in [0, 2^scale_bits - 1]. Returns (d16, dmin16, sc, m, q)."""
    smax = (1 << scale_bits) - 1
    lo = np.minimum(x.min(axis=-1), 0.0)          # ggml keeps min <= 0, stores -min
    hi = x.max(axis=-1)
    scale = (hi - lo) / qmax                        # (nb, nsub)
    mins = -lo
    d = _f16(scale.max(axis=-1) / smax)             # (nb,)
    dmin = _f16(mins.max(axis=-1) / smax)
    df = d.astype(np.float32)[:, None]
    dminf = dmin.astype(np.float32)[:, None]
    sc = np.clip(_nearest(_safe_div(scale, df)), 0, smax).astype(np.uint8)
    m = np.clip(_nearest(_safe_div(mins, dminf)), 0, smax).astype(np.uint8)
    step = (df * sc)[..., None]
    off = (dminf * m)[..., None]
    q = np.clip(_nearest(_safe_div(x + off, step)), 0, qmax).astype(np.uint8)
    return d, dmin, sc, m, q


def _pack_scale_min_k4(sc, m):
    """Inverse of gguf-py Q4_K.get_scale_min: 8 x (6-bit scale, 6-bit min) -> 12 bytes."""
    nb = sc.shape[0]
    out = np.zeros((nb, 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return out


def _blocks(a):
    a = np.asarray(a, dtype=np.float32)
    assert a.shape[-1] % QK_K == 0, f"row length {a.shape[-1]} not a multiple of {QK_K}"
    return a.reshape(-1, QK_K)


def quantize_q4_k(a):
    x = _blocks(a)
    nb = x.shape[0]
    d, dmin, sc, m, q = _affine_subblocks(x.reshape(nb, 8, 32), 8, 15, 6)
    # qs byte [k*32 + l] = q[2k][l] | q[2k+1][l] << 4
    q = q.reshape(nb, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(nb, 128)
    out = np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8),
                          _pack_scale_min_k4(sc, m), qs], axis=1)
    return out.reshape(*np.shape(a)[:-1], -1)


def quantize_q5_k(a):
    x = _blocks(a)
    nb = x.shape[0]
    d, dmin, sc, m, q = _affine_subblocks(x.reshape(nb, 8, 32), 8, 31, 6)
    lo = q & 0x0F
    hi = (q >> 4) & 1                                        # (nb, 8, 32)
    lo = lo.reshape(nb, 4, 2, 32)
    qs = (lo[:, :, 0, :] | (lo[:, :, 1, :] << 4)).reshape(nb, 128)
    qh = np.zeros((nb, 32), dtype=np.uint8)                  # qh[l] bit j = high bit of sub-block j
    for j in range(8):
        qh |= (hi[:, j, :] << j).astype(np.uint8)
    out = np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8),
                          _pack_scale_min_k4(sc, m), qh, qs], axis=1)
    return out.reshape(*np.shape(a)[:-1], -1)


def quantize_q2_k(a):
    x = _blocks(a)
    nb = x.shape[0]
    d, dmin, sc, m, q = _affine_subblocks(x.reshape(nb, 16, 16), 16, 3, 4)
    scales = (sc & 0x0F) | ((m & 0x0F) << 4)
    qs = _pack_2bit(q.reshape(nb, QK_K))
    out = np.concatenate([scales, qs, d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8)],
                         axis=1)
    return out.reshape(*np.shape(a)[:-1], -1)


def _pack_2bit(q):
    """element h*128 + s*32 + l  ->  bits 2s..2s+1 of byte h*32 + l  (64 bytes)."""
    nb = q.shape[0]
    q = q.reshape(nb, 2, 4, 32)
    out = np.zeros((nb, 2, 32), dtype=np.uint8)
    for s in range(4):
        out |= (q[:, :, s, :] & 3) << (2 * s)
    return out.reshape(nb, 64)


def quantize_q3_k(a):
    x = _blocks(a)
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    # per sub-block signed scale so that the largest-magnitude value maps to q = -4
    idx = np.abs(xs).argmax(axis=-1)[..., None]
    amax = np.take_along_axis(xs, idx, axis=-1)[..., 0]     # signed
    s = -amax / 4.0
    d = _f16(np.abs(s).max(axis=-1) / 31.0)
    df = d.astype(np.float32)[:, None]
    sc = np.clip(_nearest(_safe_div(s, df)), -32, 31)       # signed 6-bit
    step = (df * sc)[..., None]
    q = np.clip(_nearest(_safe_div(xs, step)), -4, 3).astype(np.int16)  # (nb,16,16)
    qu = (q + 4).astype(np.uint8).reshape(nb, QK_K)          # 0..7
    qs = _pack_2bit(qu & 3)
    hbit = (qu >> 2) & 1                                      # element j*32 + l -> bit j of hmask[l]
    hbit = hbit.reshape(nb, 8, 32)
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for j in range(8):
        hmask |= (hbit[:, j, :] << j).astype(np.uint8)
    u = (sc + 32).astype(np.uint8)                            # 0..63
    scales = np.zeros((nb, 12), dtype=np.uint8)
    scales[:, 0:8] = (u[:, 0:8] & 0x0F) | ((u[:, 8:16] & 0x0F) << 4)
    for sh in range(4):                                        # index i = sh*4 + b -> byte 8+b bits 2sh..
        scales[:, 8:12] |= ((u[:, sh * 4:(sh + 1) * 4] >> 4) & 3) << (2 * sh)
    out = np.concatenate([hmask, qs, scales, d.reshape(nb, 1).view(np.uint8)], axis=1)
    return out.reshape(*np.shape(a)[:-1], -1)


def quantize_q6_k(a):
    x = _blocks(a)
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    idx = np.abs(xs).argmax(axis=-1)[..., None]
    amax = np.take_along_axis(xs, idx, axis=-1)[..., 0]
    s = -amax / 32.0                                          # largest magnitude -> q = -32
    d = _f16(np.abs(s).max(axis=-1) / 127.0)
    df = d.astype(np.float32)[:, None]
    sc = np.clip(_nearest(_safe_div(s, df)), -128, 127)
    step = (df * sc)[..., None]
    q = np.clip(_nearest(_safe_div(xs, step)), -32, 31).astype(np.int16)
    qu = (q + 32).astype(np.uint8).reshape(nb, QK_K)
    low = qu & 0x0F
    high = qu >> 4
    # ql byte [h*64 + l] = low[h*128 + l] | low[h*128 + 64 + l] << 4
    low = low.reshape(nb, 2, 2, 64)
    ql = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(nb, 128)
    # qh byte [h*32 + l] bits 2s..2s+1 = high[h*128 + s*32 + l]
    qh = _pack_2bit(high)
    out = np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.reshape(nb, 1).view(np.uint8)], axis=1)
    return out.reshape(*np.shape(a)[:-1], -1)


KQUANT_ENCODERS = {
    T.Q2_K: quantize_q2_k,
    T.Q3_K: quantize_q3_k,
    T.Q4_K: quantize_q4_k,
    T.Q5_K: quantize_q5_k,
    T.Q6_K: quantize_q6_k,
}


def quantize(a: np.ndarray, qtype: T) -> np.ndarray:
    """Quantize with gguf-py where it can, else with the K-quant encoders above."""
    if qtype in KQUANT_ENCODERS:
        out = KQUANT_ENCODERS[qtype](a)
        bs, ts = gguf.GGML_QUANT_SIZES[qtype]
        assert out.shape[-1] == a.shape[-1] // bs * ts, (out.shape, a.shape, qtype)
        return np.ascontiguousarray(out.astype(np.uint8))
    return gguf.quants.quantize(np.asarray(a, dtype=np.float32), qtype)


def _selftest():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((8, 512)) * 0.05).astype(np.float32)
    a[0, 3] = 0.9  # an outlier
    for qt in [T.Q8_0, T.Q5_1, T.Q5_0, T.Q4_1, T.Q4_0, T.Q6_K, T.Q5_K, T.Q4_K, T.Q3_K, T.Q2_K]:
        qb = quantize(a, qt)
        back = gguf.quants.dequantize(qb, qt)
        err = np.sqrt(np.mean((back - a) ** 2)) / np.sqrt(np.mean(a ** 2))
        print(f"{qt.name:5s} bytes/row={qb.shape[-1]:4d} rel-rms-err={err:.4f}")


if __name__ == "__main__":
    _selftest()
