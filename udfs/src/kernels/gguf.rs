//! llama.cpp's legacy block formats, bit-exact with its reference quantizer (as mirrored by
//! `gguf.quants.quantize` of the `gguf` Python package): a row's bytes are exactly the blocks
//! llama.cpp writes for that row, so concatenating rows gives GGUF tensor data.
//!
//! | format | block bytes | layout |
//! | --- | --- | --- |
//! | q4_0 | 18 | d: f16, qs: 16 × (low nibble = value j, high nibble = value j + 16) |
//! | q4_1 | 20 | d: f16, m: f16, qs: 16 |
//! | q5_0 | 22 | d: f16, qh: u32 (fifth bit of value j at bit j), qs: 16 |
//! | q5_1 | 24 | d: f16, m: f16, qh: u32, qs: 16 |
//! | q8_0 | 34 | d: f16, qs: 32 × i8 |

use half::f16;

use super::error::{KernelError, Result};

/// Values per block, for every legacy format.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl GgufFormat {
    pub fn name(self) -> &'static str {
        match self {
            GgufFormat::Q4_0 => "q4_0",
            GgufFormat::Q4_1 => "q4_1",
            GgufFormat::Q5_0 => "q5_0",
            GgufFormat::Q5_1 => "q5_1",
            GgufFormat::Q8_0 => "q8_0",
        }
    }

    /// The format's id in GGUF files (ggml's `ggml_type`).
    pub fn ggml_type(self) -> u32 {
        match self {
            GgufFormat::Q4_0 => 2,
            GgufFormat::Q4_1 => 3,
            GgufFormat::Q5_0 => 6,
            GgufFormat::Q5_1 => 7,
            GgufFormat::Q8_0 => 8,
        }
    }

    /// The format a GGUF file's type id stands for, when it is one of these.
    pub fn from_ggml_type(id: u32) -> Option<GgufFormat> {
        use GgufFormat::*;
        [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0]
            .into_iter()
            .find(|f| f.ggml_type() == id)
    }

    pub fn bits(self) -> u8 {
        match self {
            GgufFormat::Q4_0 | GgufFormat::Q4_1 => 4,
            GgufFormat::Q5_0 | GgufFormat::Q5_1 => 5,
            GgufFormat::Q8_0 => 8,
        }
    }

    pub fn block_values(self) -> usize {
        BLOCK
    }

    pub fn block_bytes(self) -> usize {
        match self {
            GgufFormat::Q4_0 => 18,
            GgufFormat::Q4_1 => 20,
            GgufFormat::Q5_0 => 22,
            GgufFormat::Q5_1 => 24,
            GgufFormat::Q8_0 => 34,
        }
    }

    /// Bytes for a row of `len` values (which must be a whole number of blocks).
    pub fn row_bytes(self, len: usize) -> Result<usize> {
        super::blocks::row_bytes(self.name(), len, BLOCK, self.block_bytes())
    }
}

/// Appends the blocks of `row` to `out`. A block whose scale (or minimum) f16 cannot hold is
/// refused: llama.cpp would store an infinity there and decode the block to NaN and ±inf.
pub fn quantize_row(format: GgufFormat, row: &[f32], out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.resize(start + format.row_bytes(row.len())?, 0);
    let dst = &mut out[start..];
    write_blocks(format, row, dst);
    if let Some((block, _)) = non_finite_param(format, dst) {
        let x: &[f32; BLOCK] = row[block * BLOCK..][..BLOCK]
            .try_into()
            .expect("a whole block");
        let value = block_params(format, x)
            .into_iter()
            .find(|v| !f16::from_f32(*v).is_finite())
            .unwrap_or(f32::INFINITY);
        out.truncate(start);
        return Err(KernelError::ScaleOverflow {
            group: block,
            value,
        });
    }
    Ok(())
}

fn write_blocks(format: GgufFormat, row: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(cpu) = super::cpu::Avx2::detect() {
            // SAFETY: `cpu` proves AVX2 and F16C.
            unsafe { quantize_blocks_avx2(cpu, format, row, dst) };
            return;
        }
    }
    quantize_blocks(format, row, dst);
}

/// Byte offsets of a block's f16 parameters: the scale, and the minimum of q4_1 and q5_1.
fn param_offsets(format: GgufFormat) -> &'static [usize] {
    match format {
        GgufFormat::Q4_1 | GgufFormat::Q5_1 => &[0, 2],
        _ => &[0],
    }
}

/// The first block of `bytes` (whole blocks) whose scale or minimum is NaN or infinite, with
/// that value: what a stored row must not hold.
pub fn non_finite_param(format: GgufFormat, bytes: &[u8]) -> Option<(usize, f32)> {
    const EXPONENT: u16 = 0x7c00;
    let params = param_offsets(format);
    for (block, src) in bytes.chunks_exact(format.block_bytes()).enumerate() {
        for &at in params {
            let bits = u16::from_le_bytes([src[at], src[at + 1]]);
            if bits & EXPONENT == EXPONENT {
                return Some((block, f16::from_bits(bits).to_f32()));
            }
        }
    }
    None
}

/// The scale and minimum (0 for the centred formats) the reference computes for a block,
/// before they are rounded to f16: for the message when f16 cannot hold them.
fn block_params(format: GgufFormat, x: &[f32; BLOCK]) -> [f32; 2] {
    let spread = |levels: f32| {
        let (min, max) = min_max(x);
        [(max - min) / levels, min]
    };
    match format {
        GgufFormat::Q4_0 => [signed_absmax(x) / -8.0, 0.0],
        GgufFormat::Q5_0 => [signed_absmax(x) / -16.0, 0.0],
        GgufFormat::Q8_0 => [absmax(x) / 127.0, 0.0],
        GgufFormat::Q4_1 => spread(15.0),
        GgufFormat::Q5_1 => spread(31.0),
    }
}

/// The block loop compiled for AVX2: the same code, vectorised eight lanes wide (and with
/// SSE4.1 rounding instructions instead of libm calls); no fused multiply-add is requested,
/// so the bytes are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn quantize_blocks_avx2(_cpu: super::cpu::Avx2, format: GgufFormat, row: &[f32], dst: &mut [u8]) {
    match format {
        // The two most used formats have hand-written blocks.
        GgufFormat::Q4_0 | GgufFormat::Q8_0 => {
            let blocks = dst.chunks_exact_mut(format.block_bytes());
            for (dst, x) in blocks.zip(row.chunks_exact(BLOCK)) {
                let x: &[f32; BLOCK] = x.try_into().expect("chunks are whole blocks");
                if format == GgufFormat::Q4_0 {
                    avx2::quantize_block_q4_0(x, dst);
                } else {
                    avx2::quantize_block_q8_0(x, dst);
                }
            }
        }
        _ => quantize_blocks(format, row, dst),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! q4_0 and q8_0 blocks with AVX2 intrinsics: the reference's operations (one product,
    //! one sum, truncation; roundf as `trunc(v + copysign(0.5⁻, v))`, which is exact), eight
    //! lanes at a time. The tests hold them to the reference vectors bit for bit.

    use std::arch::x86_64::*;

    use super::{BLOCK, inverse};

    /// The four vectors of a block, and the largest magnitude with its first position.
    #[target_feature(enable = "avx2")]
    fn load_and_absmax(x: &[f32; BLOCK]) -> ([__m256; 4], f32, usize) {
        // SAFETY: a block holds 32 f32, four unaligned loads of 8.
        let v = unsafe {
            let p = x.as_ptr();
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        };
        let sign = _mm256_set1_ps(-0.0);
        let a = v.map(|v| _mm256_andnot_ps(sign, v));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        let amax = _mm_cvtss_f32(m);
        let target = _mm256_set1_ps(amax);
        let mut mask = 0u32;
        for (i, a) in a.iter().enumerate() {
            mask |= (_mm256_movemask_ps(_mm256_cmp_ps(*a, target, _CMP_EQ_OQ)) as u32) << (8 * i);
        }
        (v, amax, mask.trailing_zeros().min(31) as usize)
    }

    #[target_feature(enable = "avx2,f16c")]
    fn f16_bits(v: f32) -> [u8; 2] {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
        (_mm_extract_epi16(h, 0) as u16).to_le_bytes()
    }

    /// Eight i32 lanes to eight bytes.
    #[target_feature(enable = "avx2")]
    fn bytes(q: __m256i) -> __m128i {
        let words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_packs_epi16(words, words)
    }

    #[target_feature(enable = "avx2,f16c")]
    pub fn quantize_block_q4_0(x: &[f32; BLOCK], dst: &mut [u8]) {
        let (v, _, first) = load_and_absmax(x);
        let d = x[first] / -8.0;
        let id = _mm256_set1_ps(inverse(d));
        let bias = _mm256_set1_ps(8.5);
        let top = _mm256_set1_epi32(15);
        let q = v.map(|v| {
            _mm256_min_epi32(
                _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, id), bias)),
                top,
            )
        });
        // Values 0..16 and 16..32 of the block: the low and high nibbles.
        let low = _mm_unpacklo_epi64(bytes(q[0]), bytes(q[1]));
        let high = _mm_unpacklo_epi64(bytes(q[2]), bytes(q[3]));
        let packed = _mm_or_si128(low, _mm_slli_epi16(high, 4));
        dst[..2].copy_from_slice(&f16_bits(d));
        // SAFETY: a q4_0 block has 16 bytes of codes after its scale.
        unsafe { _mm_storeu_si128(dst[2..18].as_mut_ptr().cast(), packed) };
    }

    #[target_feature(enable = "avx2,f16c")]
    pub fn quantize_block_q8_0(x: &[f32; BLOCK], dst: &mut [u8]) {
        let (v, amax, _) = load_and_absmax(x);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(inverse(d));
        let sign = _mm256_set1_ps(-0.0);
        let half_down = _mm256_set1_ps(0.499_999_97);
        let q = v.map(|v| {
            let t = _mm256_mul_ps(v, id);
            let nudge = _mm256_or_ps(half_down, _mm256_and_ps(t, sign));
            _mm256_cvttps_epi32(_mm256_add_ps(t, nudge))
        });
        let low = _mm_unpacklo_epi64(bytes(q[0]), bytes(q[1]));
        let high = _mm_unpacklo_epi64(bytes(q[2]), bytes(q[3]));
        dst[..2].copy_from_slice(&f16_bits(d));
        // SAFETY: a q8_0 block has 32 bytes of codes after its scale.
        unsafe {
            _mm_storeu_si128(dst[2..18].as_mut_ptr().cast(), low);
            _mm_storeu_si128(dst[18..34].as_mut_ptr().cast(), high);
        }
    }
}

/// The block decoding loop compiled for AVX2 and F16C: the same code, vectorised (no fused
/// multiply-add is requested, so the values are identical).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn dequantize_blocks_avx2(
    _cpu: super::cpu::Avx2,
    format: GgufFormat,
    bytes: &[u8],
    out: &mut [f32],
) {
    dequantize_blocks(format, bytes, out)
}

/// Decodes whole blocks of `bytes` into `out`.
#[inline(always)]
fn dequantize_blocks(format: GgufFormat, bytes: &[u8], out: &mut [f32]) {
    let blocks = bytes.chunks_exact(format.block_bytes());
    for (src, y) in blocks.zip(out.chunks_exact_mut(BLOCK)) {
        let y: &mut [f32; BLOCK] = y.try_into().expect("chunks are whole blocks");
        match format {
            GgufFormat::Q4_0 => dequantize_block_q4_0(src, y),
            GgufFormat::Q4_1 => dequantize_block_q4_1(src, y),
            GgufFormat::Q5_0 => dequantize_block_q5_0(src, y),
            GgufFormat::Q5_1 => dequantize_block_q5_1(src, y),
            GgufFormat::Q8_0 => dequantize_block_q8_0(src, y),
        }
    }
}

/// The portable reference: whole blocks of `row` into `dst`.
#[inline(always)]
pub fn quantize_blocks(format: GgufFormat, row: &[f32], dst: &mut [u8]) {
    let blocks = dst.chunks_exact_mut(format.block_bytes());
    for (dst, x) in blocks.zip(row.chunks_exact(BLOCK)) {
        let x: &[f32; BLOCK] = x.try_into().expect("chunks are whole blocks");
        match format {
            GgufFormat::Q4_0 => quantize_block_q4_0(x, dst),
            GgufFormat::Q4_1 => quantize_block_q4_1(x, dst),
            GgufFormat::Q5_0 => quantize_block_q5_0(x, dst),
            GgufFormat::Q5_1 => quantize_block_q5_1(x, dst),
            GgufFormat::Q8_0 => quantize_block_q8_0(x, dst),
        }
    }
}

/// Decodes `bytes` (whole blocks for `len` values) into `out`, which is cleared first.
pub fn dequantize_row(
    format: GgufFormat,
    bytes: &[u8],
    len: usize,
    out: &mut Vec<f32>,
) -> Result<()> {
    let expected = format.row_bytes(len)?;
    super::error::check_row_bytes(format.name(), len, expected, bytes.len())?;
    out.clear();
    out.resize(len, 0.0);
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(cpu) = super::cpu::Avx2::detect() {
            // SAFETY: `cpu` proves AVX2 and F16C.
            unsafe { dequantize_blocks_avx2(cpu, format, bytes, out) };
            return Ok(());
        }
    }
    dequantize_blocks(format, bytes, out);
    Ok(())
}

#[inline(always)]
fn put_f16(dst: &mut [u8], value: f32) {
    dst[..2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
}

fn get_f16(src: &[u8]) -> f32 {
    f16::from_le_bytes([src[0], src[1]]).to_f32()
}

/// The value of largest magnitude, the first one on ties (as llama.cpp's `amax < |v|` scan):
/// the magnitude by a vectorisable reduction, then the first value that has it.
#[inline(always)]
fn signed_absmax(x: &[f32; BLOCK]) -> f32 {
    let amax = absmax(x);
    // Which chunk of eight holds it is a branch-free test; only that chunk is scanned.
    for c in x.chunks_exact(8) {
        if c.iter().fold(false, |hit, v| hit | (v.abs() == amax)) {
            return c.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
        }
    }
    0.0
}

/// The largest magnitude, in eight independent lanes: max is exact in any order, and the
/// lanes let the compiler use vector instructions (it will not reorder a float reduction).
#[inline(always)]
fn absmax(x: &[f32; BLOCK]) -> f32 {
    let mut m = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            let a = c[i].abs();
            m[i] = if a > m[i] { a } else { m[i] };
        }
    }
    m.iter()
        .fold(0.0f32, |acc, &v| if v > acc { v } else { acc })
}

#[inline(always)]
fn min_max(x: &[f32; BLOCK]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::MAX; 8], [f32::MIN; 8]);
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    (
        lo.iter().fold(f32::MAX, |a, &v| if v < a { v } else { a }),
        hi.iter().fold(f32::MIN, |a, &v| if v > a { v } else { a }),
    )
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// Codes of a zero-centred block: `min(levels - 1, trunc(x·id + levels + 0.5))` (the cast
/// truncates).
#[inline(always)]
fn centred_codes(x: &[f32; BLOCK], id: f32, levels: f32, max_code: u8) -> [u8; BLOCK] {
    let bias = levels + 0.5;
    let mut q = [0u8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        // Two roundings (product, then sum) as the reference does without FMA.
        *q = ((v * id + bias) as u8).min(max_code);
    }
    q
}

/// Codes of an offset block: `min(max_code, trunc((x − min)·id + 0.5))`.
#[inline(always)]
fn offset_codes(x: &[f32; BLOCK], min: f32, id: f32, max_code: u8) -> [u8; BLOCK] {
    let mut q = [0u8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as u8).min(max_code);
    }
    q
}

#[inline(always)]
fn put_nibbles(q: &[u8; BLOCK], qs: &mut [u8]) {
    for j in 0..BLOCK / 2 {
        qs[j] = (q[j] & 0x0f) | ((q[j + BLOCK / 2] & 0x0f) << 4);
    }
}

#[inline(always)]
fn fifth_bits(q: &[u8; BLOCK]) -> [u8; 4] {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &c)| acc | (u32::from(c >> 4) << j));
    qh.to_le_bytes()
}

#[inline(always)]
fn quantize_block_q4_0(x: &[f32; BLOCK], dst: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let q = centred_codes(x, inverse(d), 8.0, 15);
    put_f16(dst, d);
    put_nibbles(&q, &mut dst[2..]);
}

#[inline(always)]
fn quantize_block_q4_1(x: &[f32; BLOCK], dst: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let q = offset_codes(x, min, inverse(d), 15);
    put_f16(dst, d);
    put_f16(&mut dst[2..], min);
    put_nibbles(&q, &mut dst[4..]);
}

#[inline(always)]
fn quantize_block_q5_0(x: &[f32; BLOCK], dst: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let q = centred_codes(x, inverse(d), 16.0, 31);
    put_f16(dst, d);
    dst[2..6].copy_from_slice(&fifth_bits(&q));
    put_nibbles(&q, &mut dst[6..]);
}

#[inline(always)]
fn quantize_block_q5_1(x: &[f32; BLOCK], dst: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let q = offset_codes(x, min, inverse(d), 31);
    put_f16(dst, d);
    put_f16(&mut dst[2..], min);
    dst[4..8].copy_from_slice(&fifth_bits(&q));
    put_nibbles(&q, &mut dst[8..]);
}

#[inline(always)]
fn quantize_block_q8_0(x: &[f32; BLOCK], dst: &mut [u8]) {
    let d = absmax(x) / 127.0;
    let id = inverse(d);
    put_f16(dst, d);
    for (byte, &v) in dst[2..].iter_mut().zip(x) {
        // roundf: halves away from zero, as llama.cpp's reference.
        *byte = ((v * id).round() as i8) as u8;
    }
}

fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < BLOCK / 2 {
        qs[j] & 0x0f
    } else {
        qs[j - BLOCK / 2] >> 4
    }
}

/// The low nibbles hold the block's first half, the high nibbles its second: two straight
/// loops the compiler vectorises (`nibble` with its branch per value does not).
#[inline(always)]
fn dequantize_nibbles(qs: &[u8], y: &mut [f32; BLOCK], value: impl Fn(u8) -> f32) {
    let (first, second) = y.split_at_mut(BLOCK / 2);
    for (y, &q) in first.iter_mut().zip(&qs[..BLOCK / 2]) {
        *y = value(q & 0x0f);
    }
    for (y, &q) in second.iter_mut().zip(&qs[..BLOCK / 2]) {
        *y = value(q >> 4);
    }
}

#[inline(always)]
fn dequantize_block_q4_0(src: &[u8], y: &mut [f32; BLOCK]) {
    let d = get_f16(src);
    dequantize_nibbles(&src[2..], y, |q| (f32::from(q) - 8.0) * d);
}

#[inline(always)]
fn dequantize_block_q4_1(src: &[u8], y: &mut [f32; BLOCK]) {
    let (d, m) = (get_f16(src), get_f16(&src[2..]));
    dequantize_nibbles(&src[4..], y, |q| f32::from(q) * d + m);
}

fn five_bit(qh: u32, qs: &[u8], j: usize) -> u8 {
    nibble(qs, j) | ((((qh >> j) & 1) as u8) << 4)
}

fn dequantize_block_q5_0(src: &[u8], y: &mut [f32; BLOCK]) {
    let d = get_f16(src);
    let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
    for (j, y) in y.iter_mut().enumerate() {
        *y = (f32::from(five_bit(qh, &src[6..], j)) - 16.0) * d;
    }
}

fn dequantize_block_q5_1(src: &[u8], y: &mut [f32; BLOCK]) {
    let (d, m) = (get_f16(src), get_f16(&src[2..]));
    let qh = u32::from_le_bytes([src[4], src[5], src[6], src[7]]);
    for (j, y) in y.iter_mut().enumerate() {
        *y = f32::from(five_bit(qh, &src[8..], j)) * d + m;
    }
}

fn dequantize_block_q8_0(src: &[u8], y: &mut [f32; BLOCK]) {
    let d = get_f16(src);
    for (y, &q) in y.iter_mut().zip(&src[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_paths_agree_bit_for_bit() {
        let row: Vec<f32> = (0..4096)
            .map(|i| ((i as f32) * 0.73).sin() * (1.0 + (i % 97) as f32 * 0.05))
            .collect();
        for format in [
            GgufFormat::Q4_0,
            GgufFormat::Q4_1,
            GgufFormat::Q5_0,
            GgufFormat::Q5_1,
            GgufFormat::Q8_0,
        ] {
            let mut bytes = Vec::new();
            quantize_row(format, &row, &mut bytes).unwrap();
            let mut dispatched = Vec::new();
            dequantize_row(format, &bytes, row.len(), &mut dispatched).unwrap();
            let mut portable = vec![0.0; row.len()];
            dequantize_blocks(format, &bytes, &mut portable);
            assert_eq!(
                dispatched.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{}",
                format.name()
            );
            let cosine = crate::kernels::metrics::PairSums::of(&row, &dispatched)
                .unwrap()
                .cosine()
                .unwrap();
            assert!(cosine > 0.99, "{}: cosine {cosine}", format.name());
        }
    }
}
