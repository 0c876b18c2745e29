//! Decoders for llama.cpp's k-quant and IQ4 block formats, bit-exact with
//! `gguf.quants.dequantize` of the `gguf` Python package (llama.cpp's own port of its
//! `dequantize_row_*` reference functions).
//!
//! The k-quants cut a super-block of 256 values into sub-blocks of 16 or 32 that each have a
//! small integer scale (and, for the "affine" ones, a minimum); one or two f16 numbers per
//! super-block scale those integers. The IQ4 formats store 4-bit indices into llama.cpp's
//! fixed non-linear grid [`KVALUES_IQ4NL`] instead of linear codes.
//!
//! | format | block | bytes | layout, in byte order |
//! | --- | --- | --- | --- |
//! | q2_K | 256 | 84 | scales: 16 × (low nibble scale, high nibble min), qs: 64 (2-bit codes), d: f16, dmin: f16 |
//! | q3_K | 256 | 110 | hmask: 32 (third bit of each code), qs: 64 (low two bits), scales: 12 (16 × 6 bits), d: f16 |
//! | q4_K | 256 | 144 | d: f16, dmin: f16, scales: 12 (8 × 6-bit scale and min), qs: 128 (nibbles) |
//! | q5_K | 256 | 176 | d: f16, dmin: f16, scales: 12, qh: 32 (fifth bit of each code), qs: 128 |
//! | q6_K | 256 | 210 | ql: 128 (low nibbles), qh: 64 (top two bits), scales: 16 × i8, d: f16 |
//! | iq4_nl | 32 | 18 | d: f16, qs: 16 (nibble indices into the grid) |
//! | iq4_xs | 256 | 136 | d: f16, scales_h: u16, scales_l: 4 (8 × 6-bit scales), qs: 128 (indices) |
//!
//! Any bytes are a valid block: the decoders never fail on content, only on length. Non-finite
//! f16 super-scales give NaN and ±inf exactly as the reference gives them.
//!
//! Bit-exactness. The decoders do the reference's f32 operations in its order: the f16
//! super-scale widened to f32, `dl = d · sc` once per sub-block, the value `dl · q`, and for the
//! affine formats (q2_K, q4_K, q5_K) `dl · q − dmin · m` with the minimum subtracted last.
//! For finite values that order is in fact free: every product is exact in f32 (an f16 has 11
//! significant bits and an integer scale times a code at most 12, as q6_K's 127·31 or
//! iq4_xs's 31·127: 23 bits; the largest magnitude, 65504·128·32, and the smallest nonzero
//! one, 2⁻²⁴, are far inside f32's normal range), so `d · (sc · q)`, or a fused multiply-add
//! for the subtraction, would give the same bits (checked exhaustively over every f16 `d`). What the order does decide is NaN: when `dl · q` and `dmin · m` are both NaN,
//! x86 (as numpy on x86, where the reference vectors were made) keeps the left operand's
//! payload, so the subtraction must keep the product on its left. NaN payloads are otherwise
//! kept (quieted) by the f16 widening and the products on both sides.

use super::blocks::{self, decode_blocks, f16_at, field};
use super::error::Result;

/// Values in a k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// Values in an IQ4_NL block (ggml's `QK4_NL`).
pub const QK4_NL: usize = 32;

/// llama.cpp's `kvalues_iq4nl`: the 16 levels of the IQ4 formats, denser near zero, where
/// most weights are, than a linear 4-bit grid.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// [`KVALUES_IQ4NL`] as f32 (exact), so the decoder's inner loop is one lookup and one product.
pub const KVALUES_F32: [f32; 16] = {
    let mut out = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    out
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KFormat {
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Iq4Nl,
    Iq4Xs,
}

impl KFormat {
    /// Every format, in ggml type order.
    pub const ALL: [KFormat; 7] = [
        KFormat::Q2K,
        KFormat::Q3K,
        KFormat::Q4K,
        KFormat::Q5K,
        KFormat::Q6K,
        KFormat::Iq4Nl,
        KFormat::Iq4Xs,
    ];

    /// llama.cpp's spelling (as in `llama-quantize` and GGUF tensor dumps).
    pub fn name(self) -> &'static str {
        match self {
            KFormat::Q2K => "q2_K",
            KFormat::Q3K => "q3_K",
            KFormat::Q4K => "q4_K",
            KFormat::Q5K => "q5_K",
            KFormat::Q6K => "q6_K",
            KFormat::Iq4Nl => "iq4_nl",
            KFormat::Iq4Xs => "iq4_xs",
        }
    }

    /// The format's id in GGUF files (ggml's `ggml_type`).
    pub fn ggml_type(self) -> u32 {
        match self {
            KFormat::Q2K => 10,
            KFormat::Q3K => 11,
            KFormat::Q4K => 12,
            KFormat::Q5K => 13,
            KFormat::Q6K => 14,
            KFormat::Iq4Nl => 20,
            KFormat::Iq4Xs => 23,
        }
    }

    /// The format a GGUF file's type id stands for, when it is one of these.
    pub fn from_ggml_type(id: u32) -> Option<KFormat> {
        KFormat::ALL.into_iter().find(|f| f.ggml_type() == id)
    }

    /// Values per block: a 256-value super-block, or 32 for IQ4_NL.
    pub fn block_values(self) -> usize {
        match self {
            KFormat::Iq4Nl => QK4_NL,
            _ => QK_K,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            KFormat::Q2K => 84,
            KFormat::Q3K => 110,
            KFormat::Q4K => 144,
            KFormat::Q5K => 176,
            KFormat::Q6K => 210,
            KFormat::Iq4Nl => 18,
            KFormat::Iq4Xs => 136,
        }
    }

    /// Bytes for a row of `len` values, which must be a whole number of blocks.
    pub fn row_bytes(self, len: usize) -> Result<usize> {
        blocks::row_bytes(self.name(), len, self.block_values(), self.block_bytes())
    }

    /// Stored bits per value, the f16 scales included (4.5 for q4_K).
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_values() as f64
    }
}

/// Decodes `bytes` (whole blocks for `len` values) into `out`, which is cleared first.
///
/// Any bytes of the right length decode; NaN and ±inf come out where the f16 scales make
/// them, as in the reference.
pub fn dequantize_row(format: KFormat, bytes: &[u8], len: usize, out: &mut Vec<f32>) -> Result<()> {
    let expected = format.row_bytes(len)?;
    super::error::check_row_bytes(format.name(), len, expected, bytes.len())?;
    out.clear();
    out.resize(len, 0.0);
    match format {
        KFormat::Q2K => decode_blocks(bytes, out, dequantize_block_q2_k),
        KFormat::Q3K => decode_blocks(bytes, out, dequantize_block_q3_k),
        KFormat::Q4K => decode_blocks(bytes, out, dequantize_block_q4_k),
        KFormat::Q5K => decode_blocks(bytes, out, dequantize_block_q5_k),
        KFormat::Q6K => decode_blocks(bytes, out, dequantize_block_q6_k),
        KFormat::Iq4Nl => decode_blocks(bytes, out, dequantize_block_iq4_nl),
        KFormat::Iq4Xs => decode_blocks(bytes, out, dequantize_block_iq4_xs),
    }
    Ok(())
}

/// Q2_K, 84 bytes: `scales[16]`, `qs[64]`, `d: f16`, `dmin: f16`.
///
/// Sixteen sub-blocks of 16 values; byte `j` of `scales` holds sub-block `j`'s 4-bit scale
/// (low nibble) and 4-bit minimum (high nibble). The 2-bit codes are packed in planes: each
/// half of the block (128 values) has 32 bytes of `qs`, and bits `2s..2s+2` of byte `l` hold
/// value `32s + l` of that half (llama.cpp's layout, so that one shift and mask unpacks 32
/// values at once). `y = (d·sc)·q − dmin·m`.
fn dequantize_block_q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let scales: &[u8; 16] = field(b, 0);
    let qs: &[u8; 64] = field(b, 16);
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    let (subs, _) = y.as_chunks_mut::<16>();
    for (j, (y, &sc)) in subs.iter_mut().zip(scales).enumerate() {
        let dl = d * f32::from(sc & 0x0f);
        let ml = dmin * f32::from(sc >> 4);
        // Sub-block j: half j / 8, plane (j % 8) / 2, bytes 0..16 or 16..32 of that half.
        let q: &[u8; 16] = field(qs, j / 8 * 32 + j % 2 * 16);
        let shift = j % 8 / 2 * 2;
        for (y, &q) in y.iter_mut().zip(q) {
            *y = dl * f32::from((q >> shift) & 3) - ml;
        }
    }
}

/// Q3_K, 110 bytes: `hmask[32]`, `qs[64]`, `scales[12]`, `d: f16`.
///
/// Sixteen sub-blocks of 16 values with signed 6-bit scales, stored biased by 32: the low
/// nibbles of sub-blocks 0..8 are the low nibbles of `scales[0..8]`, those of 8..16 their high
/// nibbles, and bits `2k..2k+2` of `scales[8 + j % 4]` are the top two bits of sub-block `j`
/// (`k = j / 4`). Codes are 3 bits: the low two packed in planes as in Q2_K, the third is bit
/// `i / 32` of `hmask[i % 32]` for value `i`. A clear `hmask` bit subtracts 4 (so the codes
/// run −4..3, centred). `y = (d·(sc − 32))·q`.
fn dequantize_block_q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let hmask: &[u8; 32] = field(b, 0);
    let qs: &[u8; 64] = field(b, 32);
    let sc: &[u8; 12] = field(b, 96);
    let d = f16_at(b, 108);
    let (subs, _) = y.as_chunks_mut::<16>();
    for (j, y) in subs.iter_mut().enumerate() {
        let low = if j < 8 { sc[j] & 0x0f } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (j / 4 * 2)) & 3;
        let dl = d * f32::from((low | (high << 4)) as i8 - 32);
        let l0 = j % 2 * 16;
        let q: &[u8; 16] = field(qs, j / 8 * 32 + l0);
        let m: &[u8; 16] = field(hmask, l0);
        let shift = j % 8 / 2 * 2;
        let bit = j / 2;
        for ((y, &q), &m) in y.iter_mut().zip(q).zip(m) {
            let q = ((q >> shift) & 3) as i8 - ((((m >> bit) & 1) ^ 1) << 2) as i8;
            *y = dl * f32::from(q);
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) in Q4_K and Q5_K's 12 scale bytes:
/// bytes 0..4 hold scales 0..4 and bytes 4..8 minima 0..4 in their low six bits; scales and
/// minima 4..8 have their low nibbles in bytes 8..12 (scale low, minimum high) and their top
/// two bits in the top bits of bytes 0..4 and 4..8 (ggml's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(s: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3f, s[j + 4] & 0x3f)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K, 144 bytes: `d: f16`, `dmin: f16`, `scales[12]`, `qs[128]`.
///
/// Eight sub-blocks of 32 with 6-bit scales and minima ([`scale_min_k4`]). Each 32 bytes of
/// `qs` hold two sub-blocks: the low nibbles sub-block `2c`, the high nibbles `2c + 1`.
/// `y = (d·sc)·q − dmin·m`.
fn dequantize_block_q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales: &[u8; 12] = field(b, 4);
    let qs: &[u8; 128] = field(b, 16);
    let (subs, _) = y.as_chunks_mut::<32>();
    for (j, y) in subs.iter_mut().enumerate() {
        let (sc, m) = scale_min_k4(scales, j);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(m);
        let q: &[u8; 32] = field(qs, j / 2 * 32);
        let shift = j % 2 * 4;
        for (y, &q) in y.iter_mut().zip(q) {
            *y = dl * f32::from((q >> shift) & 0x0f) - ml;
        }
    }
}

/// Q5_K, 176 bytes: `d: f16`, `dmin: f16`, `scales[12]`, `qh[32]`, `qs[128]`.
///
/// Q4_K with a fifth bit per code: bit `j` of `qh[l]` is the top bit of value `l` of
/// sub-block `j`. `y = (d·sc)·q − dmin·m`.
fn dequantize_block_q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales: &[u8; 12] = field(b, 4);
    let qh: &[u8; 32] = field(b, 16);
    let qs: &[u8; 128] = field(b, 48);
    let (subs, _) = y.as_chunks_mut::<32>();
    for (j, y) in subs.iter_mut().enumerate() {
        let (sc, m) = scale_min_k4(scales, j);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(m);
        let q: &[u8; 32] = field(qs, j / 2 * 32);
        let shift = j % 2 * 4;
        for ((y, &q), &h) in y.iter_mut().zip(q).zip(qh) {
            let q = ((q >> shift) & 0x0f) | (((h >> j) & 1) << 4);
            *y = dl * f32::from(q) - ml;
        }
    }
}

/// Q6_K, 210 bytes: `ql[128]`, `qh[64]`, `scales[16]: i8`, `d: f16`.
///
/// Sixteen sub-blocks of 16 with signed 8-bit scales. Codes are 6 bits, stored biased by 32.
/// Per half of the block (128 values): 64 bytes of `ql`, whose low nibbles are values 0..64
/// and high nibbles values 64..128, and 32 bytes of `qh`, whose bits `2s..2s+2` of byte `l`
/// are the top two bits of value `32s + l`. `y = (d·sc)·(q − 32)`.
fn dequantize_block_q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let ql: &[u8; 128] = field(b, 0);
    let qh: &[u8; 64] = field(b, 128);
    let scales: &[u8; 16] = field(b, 192);
    let d = f16_at(b, 208);
    let (subs, _) = y.as_chunks_mut::<16>();
    for (j, (y, &sc)) in subs.iter_mut().zip(scales).enumerate() {
        let dl = d * f32::from(sc as i8);
        // Sub-block j: half j / 8, quarter t of that half, first or second 16 of the quarter.
        let (half, t, l0) = (j / 8, j % 8 / 2, j % 2 * 16);
        let lo: &[u8; 16] = field(ql, half * 64 + t % 2 * 32 + l0);
        let hi: &[u8; 16] = field(qh, half * 32 + l0);
        let (lo_shift, hi_shift) = (t / 2 * 4, t * 2);
        for ((y, &lo), &hi) in y.iter_mut().zip(lo).zip(hi) {
            let q = ((lo >> lo_shift) & 0x0f) | (((hi >> hi_shift) & 3) << 4);
            *y = dl * f32::from(q as i8 - 32);
        }
    }
}

/// IQ4_NL, 18 bytes: `d: f16`, `qs[16]`.
///
/// One scale for 32 values; the low nibble of `qs[l]` indexes value `l`'s level in
/// [`KVALUES_IQ4NL`], the high nibble value `l + 16`'s. `y = d·k`.
fn dequantize_block_iq4_nl(b: &[u8; 18], y: &mut [f32; QK4_NL]) {
    let d = f16_at(b, 0);
    let qs: &[u8; 16] = field(b, 2);
    let (first, second) = y.split_at_mut(16);
    for ((lo, hi), &q) in first.iter_mut().zip(second).zip(qs) {
        *lo = d * KVALUES_F32[usize::from(q & 0x0f)];
        *hi = d * KVALUES_F32[usize::from(q >> 4)];
    }
}

/// IQ4_XS, 136 bytes: `d: f16`, `scales_h: u16`, `scales_l[4]`, `qs[128]`.
///
/// IQ4_NL's grid in a super-block of eight sub-blocks of 32, each with a signed 6-bit scale
/// biased by 32: its low nibble is nibble `j % 2` of `scales_l[j / 2]`, its top two bits are
/// bits `2j..2j+2` of the little-endian `scales_h`. Each sub-block's 16 bytes of `qs` are
/// packed as an IQ4_NL block's. `y = (d·(sc − 32))·k`.
fn dequantize_block_iq4_xs(b: &[u8; 136], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes(*field(b, 2));
    let scales_l: &[u8; 4] = field(b, 4);
    let qs: &[u8; 128] = field(b, 8);
    let (subs, _) = y.as_chunks_mut::<32>();
    for (j, y) in subs.iter_mut().enumerate() {
        let low = (scales_l[j / 2] >> (j % 2 * 4)) & 0x0f;
        let high = ((scales_h >> (2 * j)) & 3) as u8;
        let dl = d * f32::from((low | (high << 4)) as i8 - 32);
        let q: &[u8; 16] = field(qs, j * 16);
        let (first, second) = y.split_at_mut(16);
        for ((lo, hi), &q) in first.iter_mut().zip(second).zip(q) {
            *lo = dl * KVALUES_F32[usize::from(q & 0x0f)];
            *hi = dl * KVALUES_F32[usize::from(q >> 4)];
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::kernels::decoder_checks::{self, Decoder};

    #[test]
    fn sizes_ids_and_names() {
        let expected = [
            (KFormat::Q2K, "q2_K", 10, 256, 84, 2.625),
            (KFormat::Q3K, "q3_K", 11, 256, 110, 3.4375),
            (KFormat::Q4K, "q4_K", 12, 256, 144, 4.5),
            (KFormat::Q5K, "q5_K", 13, 256, 176, 5.5),
            (KFormat::Q6K, "q6_K", 14, 256, 210, 6.5625),
            (KFormat::Iq4Nl, "iq4_nl", 20, 32, 18, 4.5),
            (KFormat::Iq4Xs, "iq4_xs", 23, 256, 136, 4.25),
        ];
        assert_eq!(expected.len(), KFormat::ALL.len());
        for (format, name, id, values, bytes, bits) in expected {
            assert_eq!(format.name(), name);
            assert_eq!(format.ggml_type(), id);
            assert_eq!(KFormat::from_ggml_type(id), Some(format));
            assert_eq!(format.block_values(), values);
            assert_eq!(format.block_bytes(), bytes);
            assert_eq!(format.bits_per_weight(), bits);
            assert_eq!(format.row_bytes(3 * values).unwrap(), 3 * bytes);
            assert_eq!(format.row_bytes(0).unwrap(), 0);
        }
        for id in [0, 1, 2, 8, 9, 15, 16, 19, 21, 22, 24, u32::MAX] {
            assert_eq!(KFormat::from_ggml_type(id), None, "{id}");
        }
    }

    fn decoder(format: KFormat) -> Decoder {
        Decoder {
            name: format.name(),
            block_values: format.block_values(),
            block_bytes: format.block_bytes(),
            row_bytes: Box::new(move |len| format.row_bytes(len)),
            decode: Box::new(move |bytes, len, out| dequantize_row(format, bytes, len, out)),
        }
    }

    #[test]
    fn zero_blocks_wrong_byte_counts_and_partial_blocks() {
        for format in KFormat::ALL {
            let d = decoder(format);
            decoder_checks::zero_blocks_decode_to_zeros(&d);
            decoder_checks::wrong_byte_lengths_are_refused(&d);
            decoder_checks::partial_blocks_are_refused(&d);
        }
    }

    #[test]
    fn hand_made_blocks() {
        let one = f16::ONE.to_le_bytes();
        // IQ4_NL with d = 1: indices 0..16 in the low nibbles, 15..0 in the high ones.
        let mut b = [0u8; 18];
        b[..2].copy_from_slice(&one);
        for l in 0..16 {
            b[2 + l] = l as u8 | ((15 - l as u8) << 4);
        }
        let mut out = Vec::new();
        dequantize_row(KFormat::Iq4Nl, &b, 32, &mut out).unwrap();
        for l in 0..16 {
            assert_eq!(out[l], f32::from(KVALUES_IQ4NL[l]));
            assert_eq!(out[l + 16], f32::from(KVALUES_IQ4NL[15 - l]));
        }

        // Q4_K with d = 1, dmin = 1: sub-block 0 scale 3 min 2, sub-block 5 scale 33 min 17
        // (the split 6-bit fields); codes 0x?5 give 5 in sub-block 0, 0x9? give 9 in block 5.
        let mut b = [0u8; 144];
        b[..2].copy_from_slice(&one);
        b[2..4].copy_from_slice(&one);
        let s = &mut b[4..16];
        s[0] = 3;
        s[4] = 2;
        s[1] = 0b10 << 6; // top bits of scale 5 (33 = 0b10_0001)
        s[5] = 0b01 << 6; // top bits of min 5 (17 = 0b01_0001)
        s[9] = 0x11; // low nibbles of scale 5 and min 5
        b[16..48].fill(0x05);
        b[80..112].fill(0x90);
        dequantize_row(KFormat::Q4K, &b, 256, &mut out).unwrap();
        assert!(out[..32].iter().all(|&v| v == 3.0 * 5.0 - 2.0));
        assert!(out[160..192].iter().all(|&v| v == 33.0 * 9.0 - 17.0));
    }
}
