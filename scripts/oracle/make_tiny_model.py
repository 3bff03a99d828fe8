#!/usr/bin/env python3
"""Write a small random-weight llama / qwen2 GGUF in llama.cpp's conventions.

Usage:
    python3 scripts/oracle/make_tiny_model.py --arch llama|qwen2 --out DIR/model.gguf
        [--seed S] [--types f32|f16|bf16|mixed|kquant|<ggml type, e.g. q4_k>]
        [--tied] [--rope-freqs] [--n-layer N] [--n-embd N] [--n-head N] [--n-head-kv N]
        [--n-ff N] [--n-rot N] [--rope-base F] [--vocab N] [--tokenizer-from MODEL.gguf]

Tensors (numpy shape (n_out, n_in) == GGUF dims [n_in, n_out]):
    token_embd.weight            (n_vocab, n_embd)
    blk.N.attn_norm.weight       (n_embd,)                       F32
    blk.N.attn_q.weight          (n_head*head_dim, n_embd)
    blk.N.attn_k.weight          (n_head_kv*head_dim, n_embd)
    blk.N.attn_v.weight          (n_head_kv*head_dim, n_embd)
    blk.N.attn_{q,k,v}.bias      (n_out,)                        F32, qwen2 only
    blk.N.attn_output.weight     (n_embd, n_head*head_dim)
    blk.N.ffn_norm.weight        (n_embd,)                       F32
    blk.N.ffn_gate.weight        (n_ff, n_embd)
    blk.N.ffn_up.weight          (n_ff, n_embd)
    blk.N.ffn_down.weight        (n_embd, n_ff)
    output_norm.weight           (n_embd,)                       F32
    output.weight                (n_vocab, n_embd)               absent with --tied
    rope_freqs.weight            (n_rot/2,)                      F32, only with --rope-freqs

--types (2-D weights; 1-D tensors are always F32):
    f32     everything F32
    f16     all 2-D weights F16                  (bf16: all BF16)
    mixed   legacy quants, rotated over the 7 per-layer matrices layer by layer:
            Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 F16 F32; token_embd Q5_1, output Q8_0.
            Row lengths must be multiples of 32.
    kquant  K-quants rotated the same way: Q2_K Q3_K Q4_K Q5_K Q6_K Q8_0 Q4_K;
            token_embd Q4_K, output Q6_K. Row lengths must be multiples of 256
            (defaults switch to n_embd=256, head_dim=64, n_ff=512).
    <type>  one type for every 2-D weight (f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_k..q6_k).
gguf-py quantizes F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0; the K-quants come from kquants.py
(simple min/max encoders; the oracle decodes them with gguf-py).

The tokenizer (tokenizer.* metadata) is copied from the SmolLM2 model in models/ (gpt2 BPE,
49152 tokens). --vocab N keeps the first N tokens and the merges whose parts and result are
all kept (so the BPE tokenizer stays self-consistent).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kquants  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENIZER = os.path.normpath(os.path.join(HERE, "..", "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))

ROLES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
MIXED = dict(rot=[T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.F32], embd=T.Q5_1, out=T.Q8_0)
KQUANT = dict(rot=[T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0, T.Q4_K], embd=T.Q4_K, out=T.Q6_K)


def type_plan(types: str, n_layer: int):
    """-> (token_embd type, output type, [per-layer {role: type}])"""
    t = types.lower()
    if t in ("mixed", "kquant"):
        plan = MIXED if t == "mixed" else KQUANT
        rot = plan["rot"]
        layers = [{r: rot[(i + il) % len(rot)] for i, r in enumerate(ROLES)} for il in range(n_layer)]
        return plan["embd"], plan["out"], layers
    try:
        one = T[t.upper()]
    except KeyError:
        raise SystemExit(f"unknown --types {types!r}")
    return one, one, [{r: one for r in ROLES} for _ in range(n_layer)]


def encode(a: np.ndarray, qtype: T) -> tuple[np.ndarray, T | None]:
    """-> (array to hand to GGUFWriter.add_tensor, raw_dtype)"""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if qtype == T.F32:
        return a, None
    if qtype == T.F16:
        return a.astype(np.float16), None
    bs, _ = gguf.GGML_QUANT_SIZES[qtype]
    if a.shape[-1] % bs:
        raise SystemExit(f"row length {a.shape[-1]} is not a multiple of {bs} ({qtype.name}); "
                         f"change --n-embd/--n-ff/--n-head or --types")
    return kquants.quantize(a, qtype), qtype


def copy_tokenizer(w: gguf.GGUFWriter, src: str, n_vocab: int | None) -> int:
    r = gguf.GGUFReader(src)
    n_full = len(r.fields["tokenizer.ggml.tokens"].data)
    keep = n_full if n_vocab is None else min(n_vocab, n_full)
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        val = f.contents()
        sub = None
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
                val = val[:keep]
            elif key == "tokenizer.ggml.merges" and keep < n_full:
                vocab = set(r.fields["tokenizer.ggml.tokens"].contents()[:keep])
                kept = []
                for mrg in val:
                    a, _, b = mrg.partition(" ")
                    if a in vocab and b in vocab and (a + b) in vocab:
                        kept.append(mrg)
                val = kept
        elif key.endswith("_token_id") and int(val) >= keep:
            continue  # special token not in the truncated vocab
        w.add_key_value(key, val, vtype, sub)
    return keep


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["llama", "qwen2"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--types", default="mixed")
    ap.add_argument("--embd-type", help="override the token_embd.weight type (e.g. f32, q6_k)")
    ap.add_argument("--output-type", help="override the output.weight type")
    ap.add_argument("--tied", action="store_true", help="omit output.weight (logits use token_embd.weight)")
    ap.add_argument("--rope-freqs", action="store_true", help="add llama3.1-style rope_freqs.weight")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-head-kv", type=int, default=2)
    ap.add_argument("--n-ff", type=int)
    ap.add_argument("--n-rot", type=int, help="rope.dimension_count (default head_dim)")
    ap.add_argument("--rope-base", type=float)
    ap.add_argument("--eps", type=float)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--vocab", type=int, help="keep only the first N tokens (default: full 49152)")
    ap.add_argument("--tokenizer-from", default=DEFAULT_TOKENIZER)
    args = ap.parse_args()

    kq = any(t and (t.lower() == "kquant" or t.lower().endswith("_k"))
             for t in (args.types, args.embd_type, args.output_type))
    n_embd = args.n_embd or (256 if kq else 128)
    n_ff = args.n_ff or (512 if kq else 256)
    n_head, n_head_kv, n_layer = args.n_head, args.n_head_kv, args.n_layer
    assert n_embd % n_head == 0 and n_head % n_head_kv == 0
    head_dim = n_embd // n_head
    n_rot = args.n_rot or head_dim
    assert n_rot % 2 == 0 and n_rot <= head_dim
    arch = args.arch
    base = args.rope_base or (10000.0 if arch == "llama" else 1000000.0)
    eps = args.eps or (1e-5 if arch == "llama" else 1e-6)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    w = gguf.GGUFWriter(args.out, arch)
    w.add_name(f"tiny-{arch}-{args.types}{'-tied' if args.tied else ''}{'-ropefreqs' if args.rope_freqs else ''}"
               f"-seed{args.seed}")
    w.add_block_count(n_layer)
    w.add_context_length(args.context)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(base)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_dimension_count(n_rot)
    n_vocab = copy_tokenizer(w, args.tokenizer_from, args.vocab)
    w.add_vocab_size(n_vocab)

    rng = np.random.default_rng(args.seed)
    embd_t, out_t, layer_t = type_plan(args.types, n_layer)
    if args.embd_type:
        embd_t = T[args.embd_type.upper()]
    if args.output_type:
        out_t = T[args.output_type.upper()]

    def mat(n_out, n_in, gain):
        return rng.standard_normal((n_out, n_in)) * (gain / np.sqrt(n_in))

    def norm_w(n):
        return 1.0 + 0.1 * rng.standard_normal(n)

    summary = []

    def add(name, a, qtype=T.F32):
        data, raw = encode(a, qtype)
        w.add_tensor(name, data, raw_dtype=raw)
        summary.append(f"{name:28s} {qtype.name:5s} {tuple(a.shape)}")

    # token embedding: std 0.3 so tied logits (= E @ normed x) have a useful spread
    add("token_embd.weight", rng.standard_normal((n_vocab, n_embd)) * 0.3, embd_t)
    if args.rope_freqs:
        # llama3.1-style factors: 1 for high-frequency pairs rising to 8 for the lowest
        k = n_rot // 2
        ff = np.ones(k)
        ff[k // 4:] = np.linspace(1.0, 8.0, k - k // 4)
        add("rope_freqs.weight", ff)
    q_out, kv_out = n_head * head_dim, n_head_kv * head_dim
    for il in range(n_layer):
        p, lt = f"blk.{il}.", layer_t[il]
        add(p + "attn_norm.weight", norm_w(n_embd))
        add(p + "attn_q.weight", mat(q_out, n_embd, 1.0), lt["attn_q"])
        add(p + "attn_k.weight", mat(kv_out, n_embd, 1.0), lt["attn_k"])
        add(p + "attn_v.weight", mat(kv_out, n_embd, 1.0), lt["attn_v"])
        if arch == "qwen2":
            add(p + "attn_q.bias", 0.2 * rng.standard_normal(q_out))
            add(p + "attn_k.bias", 0.2 * rng.standard_normal(kv_out))
            add(p + "attn_v.bias", 0.2 * rng.standard_normal(kv_out))
        add(p + "attn_output.weight", mat(n_embd, q_out, 0.5), lt["attn_output"])
        add(p + "ffn_norm.weight", norm_w(n_embd))
        add(p + "ffn_gate.weight", mat(n_ff, n_embd, 1.0), lt["ffn_gate"])
        add(p + "ffn_up.weight", mat(n_ff, n_embd, 1.0), lt["ffn_up"])
        add(p + "ffn_down.weight", mat(n_embd, n_ff, 0.5), lt["ffn_down"])
    add("output_norm.weight", norm_w(n_embd))
    if not args.tied:
        add("output.weight", mat(n_vocab, n_embd, 3.0), out_t)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: arch={arch} n_layer={n_layer} n_embd={n_embd} n_head={n_head} "
          f"n_head_kv={n_head_kv} head_dim={head_dim} n_rot={n_rot} n_ff={n_ff} n_vocab={n_vocab} "
          f"base={base} eps={eps} tied={args.tied} rope_freqs={args.rope_freqs} types={args.types} "
          f"({os.path.getsize(args.out) / 1e6:.1f} MB)", file=sys.stderr)
    for s in summary:
        print("  " + s, file=sys.stderr)


if __name__ == "__main__":
    main()
