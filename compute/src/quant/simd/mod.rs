//! SIMD versions of the dot products (`quant::dot`) and activation quantizers
//! (`quant::activation`), chosen at run time for the CPU at hand.
//!
//! Every SIMD kernel returns exactly the bits of its scalar reference: the same per-lane float
//! operations (fused or not), in the same order, with only the exact integer parts computed
//! differently. That keeps prima bit-identical to llama.cpp whichever path runs, and lets the
//! tests compare paths with `to_bits()`.
//!
//! [`Kernels`] is the dispatcher: a value names one instruction set that this CPU was checked to
//! support, which is what makes the `unsafe` calls into `avx2`/`avx512` sound. The process-wide
//! choice, [`Kernels::active`], is the best supported set unless `PRIMA_KERNEL=scalar|avx2|avx512`
//! forces one. Other architectures compile only the scalar path.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use std::sync::OnceLock;

use half::f16;

use super::activation::{self, BlockQ8K, BlockQ8Kx8, BlockQ8_0, BlockQ8_0x8, BlockQ8_1, BlockQ8_1x8};
use super::dot;
use crate::ops;

/// An instruction set with its own kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, on every CPU: the reference.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL and VNNI (256-bit `vpdpbusd` for the 8-bit products).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// The name `PRIMA_KERNEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU runs the set's kernels (std caches the CPUID answers).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The kernels of one instruction set that this CPU supports.
///
/// Invariant: `isa.is_supported()` was true when the value was made; the only constructor is
/// [`Kernels::new`]. The `unsafe` calls below rely on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// The kernels of `isa`, if this CPU supports it.
    pub fn new(isa: Isa) -> Option<Kernels> {
        isa.is_supported().then_some(Kernels { isa })
    }

    pub fn scalar() -> Kernels {
        Kernels { isa: Isa::Scalar }
    }

    /// The fastest supported set.
    pub fn best() -> Kernels {
        Isa::ALL.into_iter().rev().find_map(Kernels::new).unwrap_or_else(Kernels::scalar)
    }

    /// Every supported set, scalar first.
    pub fn supported() -> Vec<Kernels> {
        Isa::ALL.into_iter().filter_map(Kernels::new).collect()
    }

    /// The process-wide choice: `PRIMA_KERNEL` if set and supported, else [`Kernels::best`].
    /// Decided once, on first use.
    pub fn active() -> Kernels {
        static ACTIVE: OnceLock<Kernels> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let Some(v) = std::env::var_os("PRIMA_KERNEL") else { return Kernels::best() };
            let v = v.to_string_lossy();
            match Isa::from_name(&v) {
                Some(isa) => Kernels::new(isa).unwrap_or_else(|| {
                    // compute has no logger; a wrong override must not pass silently.
                    eprintln!("PRIMA_KERNEL={v}: this CPU does not support it, using {}", Kernels::best().isa.name());
                    Kernels::best()
                }),
                None => {
                    eprintln!(
                        "PRIMA_KERNEL={v}: expected scalar, avx2 or avx512; using {}",
                        Kernels::best().isa.name()
                    );
                    Kernels::best()
                }
            }
        })
    }

    pub fn isa(self) -> Isa {
        self.isa
    }
}

/// Calls `$f` from the module of the held instruction set, or the scalar `$scalar`.
macro_rules! dispatch {
    ($self:ident, $f:ident, $scalar:expr, ($($arg:expr),*)) => {
        match $self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` holds only an instruction set this CPU supports (see the type's
            // invariant); the kernel needs nothing else of its caller.
            Isa::Avx512 => unsafe { avx512::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; AVX2 support was checked when this `Kernels` was made.
            Isa::Avx2 => unsafe { avx2::$f($($arg),*) },
            _ => $scalar($($arg),*),
        }
    };
}

/// Calls the multi-row kernel `$f` of the held instruction set (AVX2 or AVX-512); the scalar path
/// runs the single-row reference `$single` once per activation row.
macro_rules! dispatch_rows {
    ($self:ident, $f:ident, $single:ident, ($w:expr, $a:expr, $out:expr)) => {
        match $self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` holds only an instruction set this CPU supports (see the type's
            // invariant); the kernel needs nothing else of its caller.
            Isa::Avx512 => unsafe { avx512::$f($w, $a, $out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; AVX2 support was checked when this `Kernels` was made.
            Isa::Avx2 => unsafe { avx2::$f($w, $a, $out) },
            _ => $self.rows_one_by_one($w, $a, $out, Kernels::$single),
        }
    };
}

/// Calls the four-weight-row kernel `$f`, or `$single` once per row.
macro_rules! dispatch_x4 {
    ($self:ident, $f:ident, $single:ident, ($w:expr, $a:expr)) => {
        match $self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` holds only an instruction set this CPU supports (see the type's
            // invariant); the kernel needs nothing else of its caller.
            Isa::Avx512 => unsafe { avx512::$f($w, $a) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; AVX2 support was checked when this `Kernels` was made.
            Isa::Avx2 => unsafe { avx2::$f($w, $a) },
            _ => {
                let rb = $w.len() / 4;
                std::array::from_fn(|r| $self.$single(&$w[r * rb..(r + 1) * rb], $a))
            }
        }
    };
}

/// Calls the interleaved eight-row kernel `$f` (AVX-512 only), or the scalar `dot::$f`.
macro_rules! dispatch_x8 {
    ($self:ident, $f:ident, ($($arg:expr),*)) => {
        match $self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` holds only an instruction set this CPU supports (see the type's
            // invariant); the kernel needs nothing else of its caller.
            Isa::Avx512 => unsafe { avx512::$f($($arg),*) },
            _ => dot::$f($($arg),*),
        }
    };
}

impl Kernels {
    pub fn vec_dot_q4_0_q8_0(self, w: &[u8], a: &[BlockQ8_0]) -> f32 {
        dispatch!(self, vec_dot_q4_0_q8_0, dot::vec_dot_q4_0_q8_0, (w, a))
    }

    pub fn vec_dot_q4_1_q8_1(self, w: &[u8], a: &[BlockQ8_1]) -> f32 {
        dispatch!(self, vec_dot_q4_1_q8_1, dot::vec_dot_q4_1_q8_1, (w, a))
    }

    pub fn vec_dot_q5_0_q8_0(self, w: &[u8], a: &[BlockQ8_0]) -> f32 {
        dispatch!(self, vec_dot_q5_0_q8_0, dot::vec_dot_q5_0_q8_0, (w, a))
    }

    /// No SIMD kernel yet: no test model holds Q5_1.
    pub fn vec_dot_q5_1_q8_1(self, w: &[u8], a: &[BlockQ8_1]) -> f32 {
        dot::vec_dot_q5_1_q8_1(w, a)
    }

    pub fn vec_dot_q8_0_q8_0(self, w: &[u8], a: &[BlockQ8_0]) -> f32 {
        dispatch!(self, vec_dot_q8_0_q8_0, dot::vec_dot_q8_0_q8_0, (w, a))
    }

    pub fn vec_dot_iq4_nl_q8_0(self, w: &[u8], a: &[BlockQ8_0]) -> f32 {
        dispatch!(self, vec_dot_iq4_nl_q8_0, dot::vec_dot_iq4_nl_q8_0, (w, a))
    }

    pub fn vec_dot_q2_k_q8_k(self, w: &[u8], a: &[BlockQ8K], halves: bool) -> f32 {
        dispatch!(self, vec_dot_q2_k_q8_k, dot::vec_dot_q2_k_q8_k, (w, a, halves))
    }

    pub fn vec_dot_q4_k_q8_k(self, w: &[u8], a: &[BlockQ8K]) -> f32 {
        dispatch!(self, vec_dot_q4_k_q8_k, dot::vec_dot_q4_k_q8_k, (w, a))
    }

    /// Four weight rows (`w`: all four, back to back) · one activation row: the bits of four
    /// [`Kernels::vec_dot_q4_0_q8_0`] calls, with the rows' block steps run side by side.
    pub fn vec_dot_q4_0_q8_0_x4(self, w: &[u8], a: &[BlockQ8_0]) -> [f32; 4] {
        dispatch_x4!(self, vec_dot_q4_0_q8_0_x4, vec_dot_q4_0_q8_0, (w, a))
    }

    /// As [`Kernels::vec_dot_q4_0_q8_0_x4`] for [`Kernels::vec_dot_iq4_nl_q8_0`].
    pub fn vec_dot_iq4_nl_q8_0_x4(self, w: &[u8], a: &[BlockQ8_0]) -> [f32; 4] {
        dispatch_x4!(self, vec_dot_iq4_nl_q8_0_x4, vec_dot_iq4_nl_q8_0, (w, a))
    }

    pub fn vec_dot_q5_k_q8_k(self, w: &[u8], a: &[BlockQ8K]) -> f32 {
        dispatch!(self, vec_dot_q5_k_q8_k, dot::vec_dot_q5_k_q8_k, (w, a))
    }

    pub fn vec_dot_q6_k_q8_k(self, w: &[u8], a: &[BlockQ8K]) -> f32 {
        dispatch!(self, vec_dot_q6_k_q8_k, dot::vec_dot_q6_k_q8_k, (w, a))
    }

    /// [`dot::vec_dot_q4_k_q8_k_tiled`]: Q4_K in llama.cpp's tiled-GEMM order.
    pub fn vec_dot_q4_k_q8_k_tiled(self, w: &[u8], a: &[BlockQ8K]) -> f32 {
        dispatch!(self, vec_dot_q4_k_q8_k_tiled, dot::vec_dot_q4_k_q8_k_tiled, (w, a))
    }

    /// [`dot::vec_dot_q6_k_q8_k_tiled`]: Q6_K in llama.cpp's tiled-GEMM order.
    pub fn vec_dot_q6_k_q8_k_tiled(self, w: &[u8], a: &[BlockQ8K]) -> f32 {
        dispatch!(self, vec_dot_q6_k_q8_k_tiled, dot::vec_dot_q6_k_q8_k_tiled, (w, a))
    }

    /// The scalar [`dot::vec_dot_iq1_s_q8_k_tiled`] (the fallback of its multi-row kernel).
    pub fn vec_dot_iq1_s_q8_k_tiled(self, w: &[u8], a: &[BlockQ8K]) -> f32 {
        dot::vec_dot_iq1_s_q8_k_tiled(w, a)
    }

    pub fn vec_dot_iq1_s_q8_k(self, w: &[u8], a: &[BlockQ8K]) -> f32 {
        dispatch!(self, vec_dot_iq1_s_q8_k, dot::vec_dot_iq1_s_q8_k, (w, a))
    }

    /// `out[t]` = the dot of `w` with activation row `t` of `a` (`out.len()` rows of equal length
    /// back to back), with exactly the bits of [`Kernels::vec_dot_q4_1_q8_1`]: each weight block
    /// is decoded once for all rows.
    pub fn vec_dot_q4_1_q8_1_rows(self, w: &[u8], a: &[BlockQ8_1], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q4_1_q8_1_rows, vec_dot_q4_1_q8_1, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_q8_0_q8_0`].
    pub fn vec_dot_q8_0_q8_0_rows(self, w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q8_0_q8_0_rows, vec_dot_q8_0_q8_0, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_q4_0_q8_0`].
    pub fn vec_dot_q4_0_q8_0_rows(self, w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q4_0_q8_0_rows, vec_dot_q4_0_q8_0, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_iq4_nl_q8_0`].
    pub fn vec_dot_iq4_nl_q8_0_rows(self, w: &[u8], a: &[BlockQ8_0], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_iq4_nl_q8_0_rows, vec_dot_iq4_nl_q8_0, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_iq1_s_q8_k`].
    pub fn vec_dot_iq1_s_q8_k_rows(self, w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_iq1_s_q8_k_rows, vec_dot_iq1_s_q8_k, (w, a, out))
    }

    /// `out[t]` = the dot of `w` with activation row `t` of `a`, each with exactly the bits of
    /// [`dot::vec_dot_iq1_s_q8_k_tiled`] (llama.cpp's tiled-GEMM order for IQ1_S).
    pub fn vec_dot_iq1_s_q8_k_tiled_rows(self, w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_iq1_s_q8_k_tiled_rows, vec_dot_iq1_s_q8_k_tiled, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_q4_k_q8_k_tiled`].
    pub fn vec_dot_q4_k_q8_k_tiled_rows(self, w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q4_k_q8_k_tiled_rows, vec_dot_q4_k_q8_k_tiled, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_q6_k_q8_k_tiled`].
    pub fn vec_dot_q6_k_q8_k_tiled_rows(self, w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q6_k_q8_k_tiled_rows, vec_dot_q6_k_q8_k_tiled, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_q4_k_q8_k`].
    pub fn vec_dot_q4_k_q8_k_rows(self, w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q4_k_q8_k_rows, vec_dot_q4_k_q8_k, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_q5_k_q8_k`].
    pub fn vec_dot_q5_k_q8_k_rows(self, w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q5_k_q8_k_rows, vec_dot_q5_k_q8_k, (w, a, out))
    }

    /// As [`Kernels::vec_dot_q4_1_q8_1_rows`] for [`Kernels::vec_dot_q6_k_q8_k`].
    pub fn vec_dot_q6_k_q8_k_rows(self, w: &[u8], a: &[BlockQ8K], out: &mut [f32]) {
        dispatch_rows!(self, vec_dot_q6_k_q8_k_rows, vec_dot_q6_k_q8_k, (w, a, out))
    }

    /// Whether this set has its own kernels for eight interleaved activation rows
    /// ([`Kernels::vec_dot_q4_0_q8_0x8`]); elsewhere they are the scalar reference, slower than
    /// the `_rows` kernels, so callers keep to those.
    pub fn has_x8_kernels(self) -> bool {
        self.isa == Isa::Avx512
    }

    /// Weight rows `w` (back to back) · `groups` groups of eight interleaved activation rows
    /// ([`BlockQ8_0x8`], each group's blocks in turn): `out[(i·groups + g)·8 + r]` has exactly
    /// the bits of [`Kernels::vec_dot_q4_0_q8_0`] of weight row `i` with row `r` of group `g`.
    pub fn vec_dot_q4_0_q8_0x8(self, w: &[u8], a: &[BlockQ8_0x8], groups: usize, out: &mut [f32]) {
        dispatch_x8!(self, vec_dot_q4_0_q8_0x8, (w, a, groups, out))
    }

    /// As [`Kernels::vec_dot_q4_0_q8_0x8`] for [`Kernels::vec_dot_q4_1_q8_1`] on Q8_1 rows.
    pub fn vec_dot_q4_1_q8_1x8(self, w: &[u8], a: &[BlockQ8_1x8], groups: usize, out: &mut [f32]) {
        dispatch_x8!(self, vec_dot_q4_1_q8_1x8, (w, a, groups, out))
    }

    /// As [`Kernels::vec_dot_q4_0_q8_0x8`] for [`Kernels::vec_dot_iq4_nl_q8_0`].
    pub fn vec_dot_iq4_nl_q8_0x8(self, w: &[u8], a: &[BlockQ8_0x8], groups: usize, out: &mut [f32]) {
        dispatch_x8!(self, vec_dot_iq4_nl_q8_0x8, (w, a, groups, out))
    }

    /// As [`Kernels::vec_dot_q4_k_q8_k_tiled_x8`] for [`dot::vec_dot_iq1_s_q8_k_tiled`].
    pub fn vec_dot_iq1_s_q8_k_tiled_x8(self, w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
        dispatch_x8!(self, vec_dot_iq1_s_q8_k_tiled_x8, (w, a, groups, out))
    }

    /// Weight rows `w` (back to back) · `groups` groups of eight interleaved activation rows
    /// (`a`, each group's blocks in turn): `out[(i·groups + g)·8 + r]` has exactly the bits of
    /// [`dot::vec_dot_q4_k_q8_k_tiled`] of weight row `i` with row `r` of group `g`.
    pub fn vec_dot_q4_k_q8_k_tiled_x8(self, w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
        dispatch_x8!(self, vec_dot_q4_k_q8_k_tiled_x8, (w, a, groups, out))
    }

    /// As [`Kernels::vec_dot_q4_k_q8_k_tiled_x8`] for [`dot::vec_dot_q6_k_q8_k_tiled`].
    pub fn vec_dot_q6_k_q8_k_tiled_x8(self, w: &[u8], a: &[BlockQ8Kx8], groups: usize, out: &mut [f32]) {
        dispatch_x8!(self, vec_dot_q6_k_q8_k_tiled_x8, (w, a, groups, out))
    }

    /// The single-row kernel `single` once per activation row: the fallback of the `_rows` kernels.
    fn rows_one_by_one<B>(self, w: &[u8], a: &[B], out: &mut [f32], single: impl Fn(Kernels, &[u8], &[B]) -> f32) {
        if out.is_empty() {
            return;
        }
        let n = a.len() / out.len();
        for (o, a) in out.iter_mut().zip(a.chunks_exact(n.max(1))) {
            *o = single(self, w, a);
        }
    }

    pub fn quantize_q8_0(self, x: &[f32], out: &mut Vec<BlockQ8_0>) {
        dispatch!(self, quantize_q8_0, activation::quantize_q8_0, (x, out))
    }

    pub fn quantize_q8_1(self, x: &[f32], out: &mut Vec<BlockQ8_1>) {
        dispatch!(self, quantize_q8_1, activation::quantize_q8_1, (x, out))
    }

    pub fn quantize_q8_k(self, x: &[f32], out: &mut Vec<BlockQ8K>) {
        dispatch!(self, quantize_q8_k, activation::quantize_q8_k, (x, out))
    }

    /// `ops::dot_f16_f32` (`k` and `q` of equal length).
    pub fn dot_f16_f32(self, k: &[f16], q: &[f32]) -> f32 {
        assert_eq!(k.len(), q.len(), "dot product of unequal lengths");
        dispatch!(self, dot_f16_f32, ops::dot_f16_f32, (k, q))
    }

    /// `ops::f16_axpy_ref`: `acc[i] = f16(v[i]·s + acc[i])`, fused.
    pub fn f16_axpy(self, acc: &mut [f16], v: &[f16], s: f32) {
        assert_eq!(acc.len(), v.len(), "axpy of unequal lengths");
        dispatch!(self, f16_axpy, ops::f16_axpy_ref, (acc, v, s))
    }

    /// `ops::f32_axpy_f16_ref`: `acc[i] += w·v[i]`, not fused.
    pub fn f32_axpy_f16(self, acc: &mut [f32], v: &[f16], w: f32) {
        assert_eq!(acc.len(), v.len(), "axpy of unequal lengths");
        dispatch!(self, f32_axpy_f16, ops::f32_axpy_f16_ref, (acc, v, w))
    }

    /// `ops::f16_scale_ref`: `acc[i] = f16(acc[i]·s)`.
    pub fn f16_scale(self, acc: &mut [f16], s: f32) {
        dispatch!(self, f16_scale, ops::f16_scale_ref, (acc, s))
    }

    /// `ops::swiglu_ref`: `gate = silu(gate) · up`.
    pub fn swiglu(self, gate: &mut [f32], up: &[f32]) {
        assert_eq!(gate.len(), up.len(), "swiglu of unequal lengths");
        dispatch!(self, swiglu, ops::swiglu_ref, (gate, up))
    }
}
