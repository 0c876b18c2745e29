//! Decoders for llama.cpp's grid i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S,
//! IQ1_M), its ternary formats (TQ1_0, TQ2_0) and the FP4 formats (MXFP4, NVFP4), bit-exact with
//! `gguf.quants.dequantize` of the `gguf` Python package (gguf-py 0.19.0), from whose layouts
//! they are written.
//!
//! The grid i-quants store, per group of eight (or four) values, an index into a fixed grid of
//! points ([`grids`], generated from gguf-py by scripts/make_iquant_grids.py) and, in most
//! formats, eight sign bits; a small integer scale per sub-block times one f16 per 256-value
//! super-block scales the grid. The ternary formats store codes −1, 0, 1 (TQ2_0 also 2) and one
//! f16 scale; the FP4 formats store e2m1 levels ([`grids::KVALUES_FP4`], doubled) under a
//! power-of-two (MXFP4, e8m0) or e4m3 (NVFP4) scale per block.
//!
//! | format | block | bytes | layout, in byte order |
//! | --- | --- | --- | --- |
//! | iq2_xxs | 256 | 66 | d: f16, 8 × (u32: four 8-bit grid indices, u32: four 7-bit sign indices and a 4-bit scale) |
//! | iq2_xs | 256 | 74 | d: f16, qs: 32 × u16 (9-bit grid index, 7-bit sign index), scales: 8 (16 nibbles) |
//! | iq2_s | 256 | 82 | d: f16, qs: 32 (grid index low bits), signs: 32, qh: 8 (index high bits), scales: 8 |
//! | iq3_xxs | 256 | 98 | d: f16, qs: 64 (grid indices), 8 × u32 (four 7-bit sign indices and a 4-bit scale) |
//! | iq3_s | 256 | 110 | d: f16, qs: 64 (grid index low bits), qh: 8 (ninth bits), signs: 32, scales: 4 |
//! | iq1_s | 256 | 50 | d: f16, qs: 32 (grid index low bits), qh: 8 × u16 (high bits, scale, delta sign) |
//! | iq1_m | 256 | 56 | qs: 32, qh: 16 (high bits, delta signs), scales: 4 × u16 (3-bit scales; d: f16 in the top nibbles) |
//! | tq1_0 | 256 | 54 | qs: 48 (five base-3 digits a byte), qh: 4 (four digits a byte), d: f16 |
//! | tq2_0 | 256 | 66 | qs: 64 (2-bit codes), d: f16 |
//! | mxfp4 | 32 | 17 | e: u8 (e8m0 scale), qs: 16 (nibbles) |
//! | nvfp4 | 64 | 36 | d: 4 × u8 (e4m3 scale per 16 values), qs: 32 (nibbles) |
//!
//! Any bytes are a valid block: the decoders never fail on content, only on length. Non-finite
//! f16 scales give NaN and ±inf exactly as the reference gives them; the 8-bit scales of MXFP4
//! and NVFP4 have no NaN.
//!
//! Bit-exactness. The decoders do gguf-py's f32 operations in its order: the f16 scale widened
//! to f32; the sub-block scale `db` (`d · (0.5 + s) · 0.25` for IQ2, `d · (0.5 + s) · 0.5` for
//! IQ3_XXS, `d · (1 + 2s)` for IQ3_S and `d · (2s + 1)` for IQ1); then `(db · g) · ±1` for the
//! grid formats with signs, `dl · (g ± delta)` for IQ1, `d · q` for the ternary and FP4
//! formats. For finite values the order is in fact free: every operand has few significant
//! bits (an f16 scale 11, a sub-block factor at most 5, a grid value at most 6, `g ± 1/8` 4, a
//! ternary code or FP4 level at most 4) and every result lies within f32's range (the largest
//! magnitude is 65504·15.5·43/4, and MXFP4's 2¹²⁷·12 overflows to ±inf in any order), so every
//! product is exact. What the order decides is NaN: a NaN scale keeps its (quieted) payload
//! through the products, and x86's `v · (−1)` keeps a NaN's sign bit where a negation would
//! flip it, so signs are applied as that product behaves (`apply_sign`). `inf · 0` (a
//! ternary zero code under an infinite scale) gives the processor's default NaN on both sides.

use half::f16;

use super::blocks::{self, decode_blocks, f16_at, field};
use super::error::Result;

#[path = "iquant_grids.rs"]
pub mod grids;

use grids::{
    IQ1_DELTA, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS,
    KVALUES_FP4,
};

/// Values in a super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// Values in an MXFP4 block (ggml's `QK_MXFP4`).
pub const QK_MXFP4: usize = 32;

/// Values in an NVFP4 block: four sub-blocks of 16, each with its own scale.
pub const QK_NVFP4: usize = 64;

/// [`KVALUES_FP4`] as f32 (exact).
const FP4_F32: [f32; 16] = {
    let mut out = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = KVALUES_FP4[i] as f32;
        i += 1;
    }
    out
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IFormat {
    Iq2Xxs,
    Iq2Xs,
    Iq3Xxs,
    Iq1S,
    Iq3S,
    Iq2S,
    Iq1M,
    Tq1_0,
    Tq2_0,
    Mxfp4,
    Nvfp4,
}

impl IFormat {
    /// Every format, in ggml type order.
    pub const ALL: [IFormat; 11] = [
        IFormat::Iq2Xxs,
        IFormat::Iq2Xs,
        IFormat::Iq3Xxs,
        IFormat::Iq1S,
        IFormat::Iq3S,
        IFormat::Iq2S,
        IFormat::Iq1M,
        IFormat::Tq1_0,
        IFormat::Tq2_0,
        IFormat::Mxfp4,
        IFormat::Nvfp4,
    ];

    /// llama.cpp's spelling (as in `llama-quantize` and GGUF tensor dumps).
    pub fn name(self) -> &'static str {
        match self {
            IFormat::Iq2Xxs => "iq2_xxs",
            IFormat::Iq2Xs => "iq2_xs",
            IFormat::Iq3Xxs => "iq3_xxs",
            IFormat::Iq1S => "iq1_s",
            IFormat::Iq3S => "iq3_s",
            IFormat::Iq2S => "iq2_s",
            IFormat::Iq1M => "iq1_m",
            IFormat::Tq1_0 => "tq1_0",
            IFormat::Tq2_0 => "tq2_0",
            IFormat::Mxfp4 => "mxfp4",
            IFormat::Nvfp4 => "nvfp4",
        }
    }

    /// The format's id in GGUF files (ggml's `ggml_type`).
    pub fn ggml_type(self) -> u32 {
        match self {
            IFormat::Iq2Xxs => 16,
            IFormat::Iq2Xs => 17,
            IFormat::Iq3Xxs => 18,
            IFormat::Iq1S => 19,
            IFormat::Iq3S => 21,
            IFormat::Iq2S => 22,
            IFormat::Iq1M => 29,
            IFormat::Tq1_0 => 34,
            IFormat::Tq2_0 => 35,
            IFormat::Mxfp4 => 39,
            IFormat::Nvfp4 => 40,
        }
    }

    /// The format a GGUF file's type id stands for, when it is one of these.
    pub fn from_ggml_type(id: u32) -> Option<IFormat> {
        IFormat::ALL.into_iter().find(|f| f.ggml_type() == id)
    }

    /// Values per block: a 256-value super-block, 32 for MXFP4, 64 for NVFP4.
    pub fn block_values(self) -> usize {
        match self {
            IFormat::Mxfp4 => QK_MXFP4,
            IFormat::Nvfp4 => QK_NVFP4,
            _ => QK_K,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            IFormat::Iq2Xxs => 66,
            IFormat::Iq2Xs => 74,
            IFormat::Iq3Xxs => 98,
            IFormat::Iq1S => 50,
            IFormat::Iq3S => 110,
            IFormat::Iq2S => 82,
            IFormat::Iq1M => 56,
            IFormat::Tq1_0 => 54,
            IFormat::Tq2_0 => 66,
            IFormat::Mxfp4 => 17,
            IFormat::Nvfp4 => 36,
        }
    }

    /// Bytes for a row of `len` values, which must be a whole number of blocks.
    pub fn row_bytes(self, len: usize) -> Result<usize> {
        blocks::row_bytes(self.name(), len, self.block_values(), self.block_bytes())
    }

    /// Stored bits per value, the scales included (2.0625 for iq2_xxs).
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_values() as f64
    }
}

/// Decodes `bytes` (whole blocks for `len` values) into `out`, which is cleared first.
///
/// Any bytes of the right length decode; NaN and ±inf come out where the f16 scales make
/// them, as in the reference.
pub fn dequantize_row(format: IFormat, bytes: &[u8], len: usize, out: &mut Vec<f32>) -> Result<()> {
    let expected = format.row_bytes(len)?;
    super::error::check_row_bytes(format.name(), len, expected, bytes.len())?;
    out.clear();
    out.resize(len, 0.0);
    match format {
        IFormat::Iq2Xxs => decode_blocks(bytes, out, dequantize_block_iq2_xxs),
        IFormat::Iq2Xs => decode_blocks(bytes, out, dequantize_block_iq2_xs),
        IFormat::Iq3Xxs => decode_blocks(bytes, out, dequantize_block_iq3_xxs),
        IFormat::Iq1S => decode_blocks(bytes, out, dequantize_block_iq1_s),
        IFormat::Iq3S => decode_blocks(bytes, out, dequantize_block_iq3_s),
        IFormat::Iq2S => decode_blocks(bytes, out, dequantize_block_iq2_s),
        IFormat::Iq1M => decode_blocks(bytes, out, dequantize_block_iq1_m),
        IFormat::Tq1_0 => decode_blocks(bytes, out, dequantize_block_tq1_0),
        IFormat::Tq2_0 => decode_blocks(bytes, out, dequantize_block_tq2_0),
        IFormat::Mxfp4 => decode_blocks(bytes, out, dequantize_block_mxfp4),
        IFormat::Nvfp4 => decode_blocks(bytes, out, dequantize_block_nvfp4),
    }
    Ok(())
}

#[inline(always)]
fn u16_at(block: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(*field(block, at))
}

#[inline(always)]
fn u32_at(block: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(*field(block, at))
}

/// Value `k` of a grid row (value `k` in byte `k`), as f32.
#[inline(always)]
fn grid_value(row: u64, k: usize) -> f32 {
    f32::from((row >> (8 * k)) as u8)
}

/// `v · (−1)` when `negative`, else `v · 1`, as x86's multiply gives them: the sign flipped,
/// except that a NaN comes through with its own sign (a negation, which LLVM may also make of
/// a product by −1, would flip it). `v` is itself a product, so a NaN in it is already quiet,
/// which is what the product by ±1 would make of it.
#[inline(always)]
fn apply_sign(v: f32, negative: bool) -> f32 {
    let flip = u32::from(negative && !v.is_nan()) << 31;
    f32::from_bits(v.to_bits() ^ flip)
}

/// Eight values `(db · g) · ±1` of a grid row, bit `k` of `signs` making value `k` negative.
#[inline(always)]
fn signed_row(y: &mut [f32; 8], db: f32, row: u64, signs: u8) {
    for (k, y) in y.iter_mut().enumerate() {
        *y = apply_sign(db * grid_value(row, k), (signs >> k) & 1 != 0);
    }
}

/// IQ2_XXS, 66 bytes: `d: f16`, then per sub-block of 32 values two little-endian u32s.
///
/// The first u32's bytes index four rows of [`IQ2XXS_GRID`] (eight values each); bits
/// `7l..7l+7` of the second index [`KSIGNS`] for row `l`'s signs, and its top four bits are the
/// sub-block's scale `s`. `y = (d·(0.5 + s)·0.25) · g · ±1`.
fn dequantize_block_iq2_xxs(b: &[u8; 66], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let (subs, _) = y.as_chunks_mut::<32>();
    for (ib, y) in subs.iter_mut().enumerate() {
        let grid = u32_at(b, 2 + 8 * ib);
        let aux = u32_at(b, 2 + 8 * ib + 4);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
        let (rows, _) = y.as_chunks_mut::<8>();
        for (l, y) in rows.iter_mut().enumerate() {
            let row = IQ2XXS_GRID[((grid >> (8 * l)) & 0xff) as usize];
            let signs = KSIGNS[((aux >> (7 * l)) & 0x7f) as usize];
            signed_row(y, db, row, signs);
        }
    }
}

/// The 4-bit scale of sub-block `i` of 16 values in the nibble-packed scales of IQ2_XS,
/// IQ2_S and IQ3_S: the low nibble of byte `i / 2` for even `i`, the high nibble for odd.
#[inline(always)]
fn nibble(scales: &[u8], i: usize) -> u8 {
    (scales[i / 2] >> (4 * (i % 2))) & 0x0f
}

/// IQ2_XS, 74 bytes: `d: f16`, `qs: [u16; 32]`, `scales[8]`.
///
/// Each u16 of `qs` is a group of eight values: its low nine bits index [`IQ2XS_GRID`], its
/// top seven [`KSIGNS`]. Nibble `i` of `scales` is the scale `s` of values `16i..16i + 16`
/// (two groups). `y = (d·(0.5 + s)·0.25) · g · ±1`.
fn dequantize_block_iq2_xs(b: &[u8; 74], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let scales: &[u8; 8] = field(b, 66);
    let (groups, _) = y.as_chunks_mut::<8>();
    for (g, y) in groups.iter_mut().enumerate() {
        let db = d * (0.5 + f32::from(nibble(scales, g / 2))) * 0.25;
        let q = u16_at(b, 2 + 2 * g);
        let row = IQ2XS_GRID[usize::from(q & 0x1ff)];
        signed_row(y, db, row, KSIGNS[usize::from(q >> 9)]);
    }
}

/// IQ2_S, 82 bytes: `d: f16`, `qs[32]`, `signs[32]`, `qh[8]`, `scales[8]`.
///
/// Group `g` of eight values: grid row `qs[g] | ((qh[g / 4] >> 2(g % 4)) & 3) << 8` of
/// [`IQ2S_GRID`], its signs the bits of `signs[g]`. Scales as in IQ2_XS.
/// `y = (d·(0.5 + s)·0.25) · g · ±1`.
fn dequantize_block_iq2_s(b: &[u8; 82], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let qs: &[u8; 32] = field(b, 2);
    let signs: &[u8; 32] = field(b, 34);
    let qh: &[u8; 8] = field(b, 66);
    let scales: &[u8; 8] = field(b, 74);
    let (groups, _) = y.as_chunks_mut::<8>();
    for (g, y) in groups.iter_mut().enumerate() {
        let db = d * (0.5 + f32::from(nibble(scales, g / 2))) * 0.25;
        let high = usize::from((qh[g / 4] >> (2 * (g % 4))) & 3);
        let row = IQ2S_GRID[usize::from(qs[g]) | (high << 8)];
        signed_row(y, db, row, signs[g]);
    }
}

/// IQ3_XXS, 98 bytes: `d: f16`, `qs[64]`, then per sub-block of 32 values a little-endian u32.
///
/// Each byte of `qs` indexes a row of four values of [`IQ3XXS_GRID`]; sub-block `ib` has
/// `qs[8ib..8ib + 8]`. Its u32's bits `7l..7l+7` index [`KSIGNS`] for values `8l..8l + 8` (two
/// rows) and its top four bits are the scale `s`. `y = (d·(0.5 + s)·0.5) · g · ±1`.
fn dequantize_block_iq3_xxs(b: &[u8; 98], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let qs: &[u8; 64] = field(b, 2);
    let (subs, _) = y.as_chunks_mut::<32>();
    for (ib, y) in subs.iter_mut().enumerate() {
        let aux = u32_at(b, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        let (groups, _) = y.as_chunks_mut::<8>();
        for (l, y) in groups.iter_mut().enumerate() {
            let signs = KSIGNS[((aux >> (7 * l)) & 0x7f) as usize];
            let lo = IQ3XXS_GRID[usize::from(qs[8 * ib + 2 * l])];
            let hi = IQ3XXS_GRID[usize::from(qs[8 * ib + 2 * l + 1])];
            signed_row(y, db, u64::from(lo) | (u64::from(hi) << 32), signs);
        }
    }
}

/// IQ3_S, 110 bytes: `d: f16`, `qs[64]`, `qh[8]`, `signs[32]`, `scales[4]`.
///
/// Row `r` of four values is row `qs[r] | ((qh[r / 8] >> (r % 8)) & 1) << 8` of
/// [`IQ3S_GRID`]; bit `v % 8` of `signs[v / 8]` makes value `v` negative. Nibble `i` of
/// `scales` is the scale `s` of values `32i..32i + 32`. `y = (d·(1 + 2s)) · g · ±1`.
fn dequantize_block_iq3_s(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let qs: &[u8; 64] = field(b, 2);
    let qh: &[u8; 8] = field(b, 66);
    let signs: &[u8; 32] = field(b, 74);
    let scales: &[u8; 4] = field(b, 106);
    let (groups, _) = y.as_chunks_mut::<8>();
    for (g, y) in groups.iter_mut().enumerate() {
        let db = d * f32::from(1 + 2 * nibble(scales, g / 4));
        let row = |r: usize| {
            let high = usize::from((qh[r / 8] >> (r % 8)) & 1);
            u64::from(IQ3S_GRID[usize::from(qs[r]) | (high << 8)])
        };
        signed_row(y, db, row(2 * g) | (row(2 * g + 1) << 32), signs[g]);
    }
}

/// Eight values `dl · (g + delta)` of an IQ1 grid row (values −1, 0, 1 as i8 bytes).
#[inline(always)]
fn iq1_row(y: &mut [f32; 8], dl: f32, row: u64, delta: f32) {
    for (k, y) in y.iter_mut().enumerate() {
        *y = dl * (f32::from((row >> (8 * k)) as u8 as i8) + delta);
    }
}

/// IQ1_S, 50 bytes: `d: f16`, `qs[32]`, `qh: [u16; 8]`.
///
/// Sub-block `ib` of 32 values has four groups of eight; group `l` is row
/// `qs[4ib + l] | ((qh[ib] >> 3l) & 7) << 8` of [`IQ1S_GRID`]. Bits 12..15 of `qh[ib]` are the
/// scale `s`, and its top bit negates the delta. `y = (d·(2s + 1)) · (g ± 0.125)`.
fn dequantize_block_iq1_s(b: &[u8; 50], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let qs: &[u8; 32] = field(b, 2);
    let (subs, _) = y.as_chunks_mut::<32>();
    for (ib, y) in subs.iter_mut().enumerate() {
        let qh = u16_at(b, 34 + 2 * ib);
        let dl = d * f32::from(2 * ((qh >> 12) & 7) + 1);
        let delta = if qh & 0x8000 == 0 {
            IQ1_DELTA
        } else {
            -IQ1_DELTA
        };
        let (groups, _) = y.as_chunks_mut::<8>();
        for (l, y) in groups.iter_mut().enumerate() {
            let index = usize::from(qs[4 * ib + l]) | (usize::from((qh >> (3 * l)) & 7) << 8);
            iq1_row(y, dl, IQ1S_GRID[index], delta);
        }
    }
}

/// IQ1_M, 56 bytes: `qs[32]`, `qh[16]`, `scales: [u16; 4]`.
///
/// The f16 super-scale is the four top nibbles of `scales`, the first one lowest. Below them,
/// each u16 holds four 3-bit scales `s`, for sub-blocks of 16 values in order. Group `g` of
/// eight values is row `qs[g] | (n & 7) << 8` of [`IQ1S_GRID`], where `n` is nibble `g` of `qh`
/// (low nibble first), whose bit 3 negates the delta. `y = (d·(2s + 1)) · (g ± 0.125)`.
fn dequantize_block_iq1_m(b: &[u8; 56], y: &mut [f32; QK_K]) {
    let qs: &[u8; 32] = field(b, 0);
    let qh: &[u8; 16] = field(b, 32);
    let scales = [0, 1, 2, 3].map(|j| u16_at(b, 48 + 2 * j));
    let d_bits = scales
        .iter()
        .enumerate()
        .fold(0u16, |bits, (j, s)| bits | ((s >> 12) << (4 * j)));
    let d = f16::from_bits(d_bits).to_f32();
    let (groups, _) = y.as_chunks_mut::<8>();
    for (g, y) in groups.iter_mut().enumerate() {
        // Sub-block g / 2 of 16 values: scale (g / 2) % 4 of u16 g / 8.
        let s = (scales[g / 8] >> (3 * (g / 2 % 4))) & 7;
        let dl = d * f32::from(2 * s + 1);
        let n = (qh[g / 2] >> (4 * (g % 2))) & 0x0f;
        let delta = if n & 8 == 0 { IQ1_DELTA } else { -IQ1_DELTA };
        let index = usize::from(qs[g]) | (usize::from(n & 7) << 8);
        iq1_row(y, dl, IQ1S_GRID[index], delta);
    }
}

/// The ternary digit `(x · 3) >> 8` of a TQ1_0 byte, shifted to −1, 0, 1 and widened.
#[inline(always)]
fn trit(x: u8) -> f32 {
    f32::from(((u16::from(x) * 3) >> 8) as i8 - 1)
}

/// TQ1_0, 54 bytes: `qs[48]`, `qh[4]`, `d: f16`.
///
/// Each byte holds base-3 digits as a fixed-point fraction: digit `p` is the top of
/// `byte · 3^p` (mod 256) times three. Bytes 0..32 of `qs` give five digits each, digit `p` of
/// byte `l` being value `32p + l`; bytes 32..48 five each, values `160 + 16p + l`; the four of
/// `qh` four each, values `240 + 4p + l`. `y = d · (digit − 1)`.
fn dequantize_block_tq1_0(b: &[u8; 54], y: &mut [f32; QK_K]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let qs: &[u8; 48] = field(b, 0);
    let qh: &[u8; 4] = field(b, 48);
    let d = f16_at(b, 52);
    let (head, rest) = y.split_at_mut(160);
    let (middle, tail) = rest.split_at_mut(80);
    // Each part is one run of values per digit: 5 × 32, 5 × 16 and 4 × 4.
    let parts: [(&mut [f32], &[u8]); 3] = [(head, &qs[..32]), (middle, &qs[32..]), (tail, qh)];
    for (y, bytes) in parts {
        for (p, y) in y.chunks_exact_mut(bytes.len()).enumerate() {
            for (y, &q) in y.iter_mut().zip(bytes) {
                *y = d * trit(q.wrapping_mul(POW3[p]));
            }
        }
    }
}

/// TQ2_0, 66 bytes: `qs[64]`, `d: f16`.
///
/// 2-bit codes packed in planes: bits `2s..2s+2` of byte `32h + l` are value `128h + 32s + l`.
/// `y = d · (q − 1)`.
fn dequantize_block_tq2_0(b: &[u8; 66], y: &mut [f32; QK_K]) {
    let qs: &[u8; 64] = field(b, 0);
    let d = f16_at(b, 64);
    let (planes, _) = y.as_chunks_mut::<32>();
    for (j, y) in planes.iter_mut().enumerate() {
        let q: &[u8; 32] = field(qs, j / 4 * 32);
        let shift = j % 4 * 2;
        for (y, &q) in y.iter_mut().zip(q) {
            *y = d * f32::from(((q >> shift) & 3) as i8 - 1);
        }
    }
}

/// MXFP4's e8m0 scale halved (the FP4 levels are doubled): `2^(e − 128)`, subnormal for
/// `e` < 2, as ggml's `ggml_e8m0_to_fp32_half`. No NaN: `e` = 255 is 2¹²⁷.
#[inline(always)]
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// MXFP4, 17 bytes: `e: u8`, `qs[16]`.
///
/// The low nibble of `qs[l]` indexes value `l`'s level in [`KVALUES_FP4`], the high nibble
/// value `l + 16`'s. `y = 2^(e − 128) · k`.
fn dequantize_block_mxfp4(b: &[u8; 17], y: &mut [f32; QK_MXFP4]) {
    let d = e8m0_half(b[0]);
    let qs: &[u8; 16] = field(b, 1);
    let (first, second) = y.split_at_mut(16);
    for ((lo, hi), &q) in first.iter_mut().zip(second).zip(qs) {
        *lo = d * FP4_F32[usize::from(q & 0x0f)];
        *hi = d * FP4_F32[usize::from(q >> 4)];
    }
}

/// NVFP4's unsigned e4m3 scale (bias 7; bit 7 ignored), halved as MXFP4's is: exponent
/// `x >> 3 & 15`, mantissa `x & 7`, subnormal at exponent 0. The bytes 0x00 and 0x7f are zero
/// (0x7f, e4m3's NaN, included), as gguf-py decodes them. Every value is exact in f32.
#[inline(always)]
fn ue4m3_half(x: u8) -> f32 {
    let exponent = i32::from((x >> 3) & 0x0f);
    let mantissa = f32::from(x & 7);
    let raw = if exponent == 0 {
        mantissa * (1.0 / 512.0)
    } else {
        (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    };
    if x == 0 || x == 0x7f { 0.0 } else { raw * 0.5 }
}

/// NVFP4, 36 bytes: `d: [u8; 4]` (e4m3 scales), `qs[32]`.
///
/// Sub-block `s` of 16 values has scale `d[s]` and bytes `qs[8s..8s + 8]`: their low nibbles
/// index the levels ([`KVALUES_FP4`]) of values `16s..16s + 8`, their high nibbles those of
/// `16s + 8..16s + 16`. `y = e4m3(d[s]) / 2 · k`.
fn dequantize_block_nvfp4(b: &[u8; 36], y: &mut [f32; QK_NVFP4]) {
    let qs: &[u8; 32] = field(b, 4);
    let (subs, _) = y.as_chunks_mut::<16>();
    for (s, y) in subs.iter_mut().enumerate() {
        let d = ue4m3_half(b[s]);
        let q: &[u8; 8] = field(qs, 8 * s);
        let (first, second) = y.split_at_mut(8);
        for ((lo, hi), &q) in first.iter_mut().zip(second).zip(q) {
            *lo = d * FP4_F32[usize::from(q & 0x0f)];
            *hi = d * FP4_F32[usize::from(q >> 4)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::decoder_checks::{self, Decoder};

    #[test]
    fn sizes_ids_and_names() {
        let expected = [
            (IFormat::Iq2Xxs, "iq2_xxs", 16, 256, 66, 2.0625),
            (IFormat::Iq2Xs, "iq2_xs", 17, 256, 74, 2.3125),
            (IFormat::Iq3Xxs, "iq3_xxs", 18, 256, 98, 3.0625),
            (IFormat::Iq1S, "iq1_s", 19, 256, 50, 1.5625),
            (IFormat::Iq3S, "iq3_s", 21, 256, 110, 3.4375),
            (IFormat::Iq2S, "iq2_s", 22, 256, 82, 2.5625),
            (IFormat::Iq1M, "iq1_m", 29, 256, 56, 1.75),
            (IFormat::Tq1_0, "tq1_0", 34, 256, 54, 1.6875),
            (IFormat::Tq2_0, "tq2_0", 35, 256, 66, 2.0625),
            (IFormat::Mxfp4, "mxfp4", 39, 32, 17, 4.25),
            (IFormat::Nvfp4, "nvfp4", 40, 64, 36, 4.5),
        ];
        assert_eq!(expected.len(), IFormat::ALL.len());
        for (format, name, id, values, bytes, bits) in expected {
            assert_eq!(format.name(), name);
            assert_eq!(format.ggml_type(), id);
            assert_eq!(IFormat::from_ggml_type(id), Some(format));
            assert_eq!(format.block_values(), values);
            assert_eq!(format.block_bytes(), bytes);
            assert_eq!(format.bits_per_weight(), bits);
            assert_eq!(format.row_bytes(3 * values).unwrap(), 3 * bytes);
            assert_eq!(format.row_bytes(0).unwrap(), 0);
        }
        for id in [0, 2, 8, 12, 15, 20, 23, 30, 36, 41, u32::MAX] {
            assert_eq!(IFormat::from_ggml_type(id), None, "{id}");
        }
    }

    #[test]
    fn the_sign_table_is_seven_bits_and_even_parity() {
        for (i, &s) in KSIGNS.iter().enumerate() {
            assert_eq!(usize::from(s & 0x7f), i);
            assert_eq!(s.count_ones() % 2, 0, "{i}");
        }
    }

    #[test]
    fn grids_hold_only_their_levels() {
        let bytes = |row: u64, n: usize| (0..n).map(move |k| (row >> (8 * k)) as u8);
        for grid in [&IQ2XXS_GRID[..], &IQ2XS_GRID, &IQ2S_GRID] {
            assert!(
                grid.iter()
                    .flat_map(|&r| bytes(r, 8))
                    .all(|v| [8, 25, 43].contains(&v))
            );
        }
        let iq3xxs = [4, 12, 20, 28, 36, 44, 52, 62];
        assert!(
            IQ3XXS_GRID
                .iter()
                .flat_map(|&r| bytes(r.into(), 4))
                .all(|v| iq3xxs.contains(&v))
        );
        let iq3s = [1, 3, 5, 7, 9, 11, 13, 15];
        assert!(
            IQ3S_GRID
                .iter()
                .flat_map(|&r| bytes(r.into(), 4))
                .all(|v| iq3s.contains(&v))
        );
        assert!(
            IQ1S_GRID
                .iter()
                .flat_map(|&r| bytes(r, 8))
                .all(|v| [0xff, 0, 1].contains(&v))
        );
        // Every row differs from every other: an index picks one point.
        for grid in [&IQ2XXS_GRID[..], &IQ2XS_GRID, &IQ2S_GRID, &IQ1S_GRID] {
            let mut rows = grid.to_vec();
            rows.sort_unstable();
            rows.dedup();
            assert_eq!(rows.len(), grid.len());
        }
    }

    fn decoder(format: IFormat) -> Decoder {
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
        for format in IFormat::ALL {
            let d = decoder(format);
            decoder_checks::zero_blocks_decode_to_zeros(&d);
            decoder_checks::wrong_byte_lengths_are_refused(&d);
            decoder_checks::partial_blocks_are_refused(&d);
        }
    }

    #[test]
    fn a_negative_sign_keeps_a_nan_s_sign_bit() {
        let nan = f32::from_bits(0x7fc0_1234);
        assert_eq!(apply_sign(nan, true).to_bits(), 0x7fc0_1234);
        assert_eq!(apply_sign(-nan, true).to_bits(), 0xffc0_1234);
        assert_eq!(apply_sign(2.5, true), -2.5);
        assert_eq!(apply_sign(0.0, true).to_bits(), (-0.0f32).to_bits());
        assert_eq!(apply_sign(f32::INFINITY, true), f32::NEG_INFINITY);
        assert_eq!(apply_sign(-3.0, false), -3.0);
    }

    #[test]
    fn scales_of_the_fp4_formats() {
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(255), 2f32.powi(127));
        // e4m3 0x38 = 1.0 (exponent 7), halved; 0x7e = 448 (the largest), halved; the
        // smallest subnormal 2⁻⁹, halved; 0x7f (NaN in e4m3) is 0 as gguf-py has it.
        assert_eq!(ue4m3_half(0x38), 0.5);
        assert_eq!(ue4m3_half(0x7e), 224.0);
        assert_eq!(ue4m3_half(0x01), 2f32.powi(-10));
        assert_eq!(ue4m3_half(0x7f), 0.0);
        assert_eq!(ue4m3_half(0xb8), 0.5);
    }

    #[test]
    fn hand_made_blocks() {
        let one = f16::ONE.to_le_bytes();
        let mut out = Vec::new();

        // TQ2_0 with d = 1: byte 0 = 0b11_10_01_00 gives values 0, 32, 64, 96 = −1, 0, 1, 2.
        let mut b = [0u8; 66];
        b[0] = 0b1110_0100;
        b[64..].copy_from_slice(&one);
        dequantize_row(IFormat::Tq2_0, &b, 256, &mut out).unwrap();
        assert_eq!([out[0], out[32], out[64], out[96]], [-1.0, 0.0, 1.0, 2.0]);
        assert_eq!(out[1], -1.0);

        // TQ1_0 with d = 1: digits (2, 0, 1, 1, 2), most significant first, as gguf-py's
        // quantizer stores them: ceil((2·81 + 0·27 + 1·9 + 1·3 + 2) · 256 / 243) = 186. They
        // are values 0, 32, 64, 96 and 128, less one.
        let digits = [2u16, 0, 1, 1, 2];
        let n = digits.iter().fold(0u16, |n, &d| n * 3 + d);
        let byte = (n * 256).div_ceil(243) as u8;
        let mut b = [0u8; 54];
        b[0] = byte;
        b[52..].copy_from_slice(&one);
        dequantize_row(IFormat::Tq1_0, &b, 256, &mut out).unwrap();
        let got: Vec<f32> = (0..5).map(|p| out[32 * p]).collect();
        assert_eq!(got, [1.0, -1.0, 0.0, 0.0, 1.0]);

        // IQ2_XXS with d = 1, sub-block 0 scale 3 (db = 3.5 · 0.25 = 0.875), grid row 1
        // (0x080808080808082b), sign index 1 (ksigns 0x81: values 0 and 7 negative).
        let mut b = [0u8; 66];
        b[..2].copy_from_slice(&one);
        b[2] = 1;
        b[6..10].copy_from_slice(&(1u32 | 3 << 28).to_le_bytes());
        dequantize_row(IFormat::Iq2Xxs, &b, 256, &mut out).unwrap();
        assert_eq!(out[0], -0.875 * 43.0);
        assert_eq!(out[1..7], [0.875 * 8.0; 6]);
        assert_eq!(out[7], -0.875 * 8.0);

        // MXFP4 with e = 128, a scale of 2: nibble 7 is the e2m1 level 6 (stored doubled, 12),
        // so 12; nibble 0xd is −3, so −6.
        let mut b = [0u8; 17];
        b[0] = 128;
        b[1] = 0xd7;
        dequantize_row(IFormat::Mxfp4, &b, 32, &mut out).unwrap();
        assert_eq!((out[0], out[16]), (12.0, -6.0));
    }
}
