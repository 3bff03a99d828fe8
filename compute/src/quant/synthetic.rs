//! Random but valid quantized blocks: what tests, benches, device profiling and synthetic
//! models need. Random bytes are valid blocks of every type once their f16 scale fields hold
//! finite values, so only those fields are written.

use gguf::GgmlType;
use half::f16;

/// Byte offsets of the f16 scale fields (`d`, and `m`/`dmin` where the type has one) in a
/// block of `ty`; empty for types without f16 scales.
pub fn f16_scale_offsets(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ1_S => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q6_K => &[208],
        _ => &[],
    }
}

/// `n` deterministic pseudo-random bytes (xorshift64 from `seed`), so failures reproduce.
pub fn xorshift_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Overwrites every f16 scale field of the blocks of `ty` in `blocks` with `scale(old bits)`.
pub fn set_f16_scales(ty: GgmlType, blocks: &mut [u8], mut scale: impl FnMut(u16) -> f16) {
    let offsets = f16_scale_offsets(ty);
    if offsets.is_empty() {
        return;
    }
    for blk in blocks.chunks_exact_mut(ty.type_size()) {
        for &o in offsets {
            let old = u16::from_le_bytes([blk[o], blk[o + 1]]);
            blk[o..o + 2].copy_from_slice(&scale(old).to_le_bytes());
        }
    }
}

/// A random `n_out × n_in` matrix of `ty` whose scales are all 0.01 (F32/F16: every value
/// 0.01); `None` when `n_in` is not a whole number of blocks.
pub fn random_matrix(ty: GgmlType, n_in: usize, n_out: usize, seed: u64) -> Option<Vec<u8>> {
    let row = ty.row_bytes(n_in as u64)? as usize;
    let mut v = xorshift_bytes(row * n_out, seed);
    match ty {
        GgmlType::F32 => v.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&0.01f32.to_le_bytes())),
        GgmlType::F16 => v.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&f16::from_f32(0.01).to_le_bytes())),
        _ => set_f16_scales(ty, &mut v, |_| f16::from_f32(0.01)),
    }
    Some(v)
}

/// `n` elements of random `ty` blocks whose f16 scale fields are small finite numbers that
/// differ between blocks (0.01 plus a little of the field's old low byte): test inputs.
#[cfg(test)]
pub(crate) fn random_blocks_varied(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut b = xorshift_bytes(ty.row_bytes(n as u64).expect("whole blocks") as usize, seed);
    set_f16_scales(ty, &mut b, |old| f16::from_f32(0.01 + (old & 0xff) as f32 / 5000.0));
    b
}
