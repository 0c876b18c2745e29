//! Our encoder for llama.cpp's block formats: the layouts are llama.cpp's byte for byte (the
//! decoders in [`super::gguf`] and [`super::kquants`] read them), but the numbers written into
//! them are chosen to minimise each block's weighted squared error instead of by llama.cpp's
//! rules.
//!
//! Every format is one shape: a block of `subs` sub-blocks of `sub` values, each decoded as
//! `y = D·level(code) − M`, where `D` is the block's f16 `d` times the sub-block's small
//! integer scale (or `d` itself when the block is one sub-block) and `M` the sub-block's
//! minimum (an integer times the f16 `dmin`, an f16 of its own, or nothing). The search, per
//! block:
//!
//! 1. each sub-block's best continuous scale (and minimum): a few candidate scales, the codes
//!    they give, the least-squares scale (and minimum) for those codes, then alternating
//!    re-coding and re-fitting (Lloyd steps) from the best;
//! 2. the integer sub-scales and minima: `d` and `dmin` fitted by least squares to the
//!    continuous ones, weighted by how much each sub-block's error grows with a wrong scale,
//!    then rounded to f16, as stored;
//! 3. the codes for the stored scales, then coordinate refinement: each sub-block's integer
//!    scale and minimum moved by one step where that lowers its error, and a joint
//!    least-squares refit of `d` and `dmin` over the whole block, kept when it helps.
//!
//! The weights are the caller's per-value importance (a column's mean squared activation, when
//! known) times a data-free factor, by default 1 (see [`Weighting`], measured).
//!
//! Candidate scales put a sub-block's largest magnitude at the long end of a signed grid (−8
//! of −8…7, −127 of IQ4's −127…113), never at the short one: measured in llama.cpp, files
//! whose blocks all keep that orientation give outputs closer to the F32 model's than files
//! of lower squared error that mix both.

// The packers and the sub-block loops are index arithmetic over the layouts: indexed loops
// say it more plainly than zipped iterators.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::block_format::BlockFormat;
use super::error::{KernelError, Result};
use super::gguf::GgufFormat;
use super::kquants::{KFormat, KVALUES_F32, KVALUES_IQ4NL};

mod lanes;

use lanes::{LANES, Lanes, Mask, Portable, Vector};

/// The largest block (a k-quant super-block) and the most sub-blocks in one.
const MAX_BLOCK: usize = 256;
const MAX_SUBS: usize = 16;

/// The data-free part of each value's weight in the error the search minimises.
///
/// Measured on a real checkpoint in llama.cpp (benches/llama_cpp.sh, all-MiniLM-L6-v2, the
/// distance of its embeddings from the F32 model's): plain squared error served best for
/// every format tried (q4_K, q6_K, iq4_xs, q3_K), ahead of `σ² + x²` and `x²`, the forms
/// llama.cpp weighs by. So `Uniform` is the default; the others remain for comparison and as
/// the base an importance (per-column activation energy) multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Weighting {
    /// Plain squared error.
    #[default]
    Uniform,
    /// `σ² + x²`, σ² the block's mean square: large weights count more, small ones still
    /// count (llama.cpp's weighting when it has an importance matrix).
    SigmaSquare,
    /// `x²` (llama.cpp's weighting without an importance matrix for iq4_nl, q3_K, q6_K).
    Square,
}

/// How a code maps to its level.
#[derive(Debug, Clone, Copy)]
enum Codes {
    /// The integers `lo..=hi`.
    Linear { lo: i32, hi: i32 },
    /// Indices into llama.cpp's non-linear grid [`KVALUES_IQ4NL`].
    Grid,
}

/// How a sub-block's scale is stored.
#[derive(Debug, Clone, Copy)]
enum Scales {
    /// The block is one sub-block and its scale is the f16 `d`.
    Half,
    /// Integers `lo..=hi` times the block's f16 `d`.
    Int { lo: i32, hi: i32 },
}

/// How a sub-block's minimum is stored.
#[derive(Debug, Clone, Copy)]
enum Mins {
    /// Centred formats: none.
    None,
    /// The block is one sub-block with an f16 offset `m`: `y = d·q + m` (q4_1, q5_1).
    Half,
    /// Integers `0..=hi` times the block's f16 `dmin`, subtracted: `y = D·q − dmin·m`.
    Int { hi: i32 },
}

#[derive(Debug, Clone, Copy)]
struct Layout {
    sub: usize,
    subs: usize,
    codes: Codes,
    scales: Scales,
    mins: Mins,
}

/// A layout as compile-time constants: the search is compiled once per layout, so the
/// matches on codes, scales and minima fold away inside the per-value loops.
trait Fmt {
    const LAYOUT: Layout;
}

const fn one(codes: Codes, mins: Mins) -> Layout {
    Layout {
        sub: 32,
        subs: 1,
        codes,
        scales: Scales::Half,
        mins,
    }
}

const fn super_block(sub: usize, codes: Codes, scales: Scales, mins: Mins) -> Layout {
    Layout {
        sub,
        subs: 256 / sub,
        codes,
        scales,
        mins,
    }
}

macro_rules! layouts {
    ($($name:ident = $layout:expr;)*) => {
        $(
            struct $name;
            impl Fmt for $name {
                const LAYOUT: Layout = $layout;
            }
        )*
    };
}

layouts! {
    Q4_0 = one(Codes::Linear { lo: -8, hi: 7 }, Mins::None);
    Q5_0 = one(Codes::Linear { lo: -16, hi: 15 }, Mins::None);
    Q8_0 = one(Codes::Linear { lo: -128, hi: 127 }, Mins::None);
    Q4_1 = one(Codes::Linear { lo: 0, hi: 15 }, Mins::Half);
    Q5_1 = one(Codes::Linear { lo: 0, hi: 31 }, Mins::Half);
    Iq4Nl = one(Codes::Grid, Mins::None);
    Q2K = super_block(
        16,
        Codes::Linear { lo: 0, hi: 3 },
        Scales::Int { lo: 0, hi: 15 },
        Mins::Int { hi: 15 },
    );
    Q3K = super_block(
        16,
        Codes::Linear { lo: -4, hi: 3 },
        Scales::Int { lo: -32, hi: 31 },
        Mins::None,
    );
    Q4K = super_block(
        32,
        Codes::Linear { lo: 0, hi: 15 },
        Scales::Int { lo: 0, hi: 63 },
        Mins::Int { hi: 63 },
    );
    Q5K = super_block(
        32,
        Codes::Linear { lo: 0, hi: 31 },
        Scales::Int { lo: 0, hi: 63 },
        Mins::Int { hi: 63 },
    );
    Q6K = super_block(
        16,
        Codes::Linear { lo: -32, hi: 31 },
        Scales::Int { lo: -128, hi: 127 },
        Mins::None,
    );
    Iq4Xs = super_block(
        32,
        Codes::Grid,
        Scales::Int { lo: -32, hi: 31 },
        Mins::None,
    );
}

#[cfg(test)]
fn layout(format: BlockFormat) -> Layout {
    match format {
        BlockFormat::Legacy(f) => match f {
            GgufFormat::Q4_0 => Q4_0::LAYOUT,
            GgufFormat::Q5_0 => Q5_0::LAYOUT,
            GgufFormat::Q8_0 => Q8_0::LAYOUT,
            GgufFormat::Q4_1 => Q4_1::LAYOUT,
            GgufFormat::Q5_1 => Q5_1::LAYOUT,
        },
        BlockFormat::K(f) => match f {
            KFormat::Iq4Nl => Iq4Nl::LAYOUT,
            KFormat::Q2K => Q2K::LAYOUT,
            KFormat::Q3K => Q3K::LAYOUT,
            KFormat::Q4K => Q4K::LAYOUT,
            KFormat::Q5K => Q5K::LAYOUT,
            KFormat::Q6K => Q6K::LAYOUT,
            KFormat::Iq4Xs => Iq4Xs::LAYOUT,
        },
    }
}

/// One block as the search leaves it: what the packers write.
struct Block {
    d: f16,
    dmin: f16,
    /// Integer sub-scales (unused with [`Scales::Half`]).
    sc: [i32; MAX_SUBS],
    /// Integer minima (unused unless [`Mins::Int`]).
    m: [i32; MAX_SUBS],
    /// Codes in `lo..=hi`, or grid indices.
    q: [i32; MAX_BLOCK],
}

impl Default for Block {
    fn default() -> Self {
        Block {
            d: f16::ZERO,
            dmin: f16::ZERO,
            sc: [0; MAX_SUBS],
            m: [0; MAX_SUBS],
            q: [0; MAX_BLOCK],
        }
    }
}

/// Reusable state of the search, so a loop over rows allocates nothing once warm.
#[derive(Debug, Default)]
pub struct BlockSearch {
    weights: Vec<f32>,
}

impl BlockSearch {
    /// Appends the blocks of `row` (a whole number of blocks, finite values) to `out`.
    /// `importance`, when given, has one non-negative weight per value of the row.
    pub fn quantize_row(
        &mut self,
        format: BlockFormat,
        row: &[f32],
        importance: Option<&[f32]>,
        weighting: Weighting,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.quantize_row_on(true, format, row, importance, weighting, out)
    }

    /// [`quantize_row`](Self::quantize_row) on the portable path alone (what runs where AVX2
    /// is missing). The AVX2 path is the same code compiled for AVX2, without fused
    /// multiply-adds, so the two write the same bytes.
    pub fn quantize_row_portable(
        &mut self,
        format: BlockFormat,
        row: &[f32],
        importance: Option<&[f32]>,
        weighting: Weighting,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.quantize_row_on(false, format, row, importance, weighting, out)
    }

    fn quantize_row_on(
        &mut self,
        simd: bool,
        format: BlockFormat,
        row: &[f32],
        importance: Option<&[f32]>,
        weighting: Weighting,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let block_len = format.block_values();
        if !row.len().is_multiple_of(block_len) {
            return Err(KernelError::NotBlockMultiple {
                scheme: format.name(),
                len: row.len(),
                block: block_len,
            });
        }
        if let Some(imp) = importance
            && imp.len() != row.len()
        {
            return Err(KernelError::LengthMismatch {
                left: row.len(),
                right: imp.len(),
            });
        }
        let start = out.len();
        out.resize(start + row.len() / block_len * format.block_bytes(), 0);
        // A super-block's weights, or eight blocks' (blocks of one sub-block go eight at a time).
        self.weights.resize(MAX_BLOCK, 0.0);
        let args = RowArgs {
            format,
            row,
            importance,
            weighting,
        };
        let (w, dst) = (&mut self.weights[..], &mut out[start..]);
        #[cfg(target_arch = "x86_64")]
        let result = match super::cpu::Avx2::detect().filter(|_| simd) {
            // SAFETY: `cpu` proves AVX2 (and F16C).
            Some(cpu) => unsafe { encode_row_avx2(cpu, &args, w, dst) },
            None => encode_row(Portable, &args, w, dst),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let result = {
            let _ = simd;
            encode_row(Portable, &args, w, dst)
        };
        if let Err((group, value)) = result {
            out.truncate(start);
            return Err(KernelError::ScaleOverflow { group, value });
        }
        Ok(())
    }
}

struct RowArgs<'a> {
    format: BlockFormat,
    row: &'a [f32],
    importance: Option<&'a [f32]>,
    weighting: Weighting,
}

/// The row loop compiled for AVX2: the same code as the portable path over AVX2 lanes; no
/// fused multiply-add is used, so the bytes are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn encode_row_avx2(
    cpu: super::cpu::Avx2,
    args: &RowArgs,
    w: &mut [f32],
    dst: &mut [u8],
) -> Result<(), (usize, f32)> {
    encode_row(cpu, args, w, dst)
}

/// `Err((block, value))` for a block that needs a scale f16 cannot hold.
#[inline(always)]
fn encode_row<L: Lanes>(
    p: L,
    args: &RowArgs,
    w: &mut [f32],
    dst: &mut [u8],
) -> Result<(), (usize, f32)> {
    // Plain squared error needs no weights: its passes skip the multiplications by one
    // (which would change no bit).
    let weighted = args.importance.is_some() || args.weighting != Weighting::Uniform;
    // One copy of the search per layout, its constants folded into the loops.
    macro_rules! with {
        ($($pat:pat => $f:ty),* $(,)?) => {
            match (args.format, weighted) {
                $(
                    ($pat, true) => encode_row_as::<$f, L, true>(p, args, w, dst),
                    ($pat, false) => encode_row_as::<$f, L, false>(p, args, w, dst),
                )*
            }
        };
    }
    use BlockFormat::{K, Legacy};
    with! {
        Legacy(GgufFormat::Q4_0) => Q4_0,
        Legacy(GgufFormat::Q4_1) => Q4_1,
        Legacy(GgufFormat::Q5_0) => Q5_0,
        Legacy(GgufFormat::Q5_1) => Q5_1,
        Legacy(GgufFormat::Q8_0) => Q8_0,
        K(KFormat::Q2K) => Q2K,
        K(KFormat::Q3K) => Q3K,
        K(KFormat::Q4K) => Q4K,
        K(KFormat::Q5K) => Q5K,
        K(KFormat::Q6K) => Q6K,
        K(KFormat::Iq4Nl) => Iq4Nl,
        K(KFormat::Iq4Xs) => Iq4Xs,
    }
}

#[inline(always)]
fn encode_row_as<F: Fmt, L: Lanes, const W: bool>(
    p: L,
    args: &RowArgs,
    w: &mut [f32],
    dst: &mut [u8],
) -> Result<(), (usize, f32)> {
    let layout = F::LAYOUT;
    let n = layout.sub * layout.subs;
    let bytes = args.format.block_bytes();
    let mut block = Block::default();
    let mut groups = [Group::new(p), Group::new(p)];
    let mut fits = [LaneFit::new(p), LaneFit::new(p)];
    let zero = p.splat(0.0);
    let mut codes = [[zero; 32]; 2];
    let mut trial = [[zero; 32]; 2];
    let weights = |x: &[f32], first: usize, w: &mut [f32]| {
        if W {
            let importance = args.importance.map(|imp| &imp[first..][..x.len()]);
            block_weights(x, importance, args.weighting, w);
        }
    };
    if layout.subs == 1 {
        // Blocks of one sub-block, eight side by side (the last group padded with zeros).
        let blocks = args.row.len() / n;
        for first in (0..blocks).step_by(LANES) {
            let count = LANES.min(blocks - first);
            let x = &args.row[first * n..(first + count) * n];
            for (j, x) in x.chunks_exact(n).enumerate() {
                weights(x, (first + j) * n, &mut w[j * n..(j + 1) * n]);
            }
            let g = &mut groups[0];
            g.load::<W>(p, n, x, w, count);
            fits[0] = fit_group::<L, W>(p, &layout, g);
            let mut d = [0.0f32; LANES];
            let mut m = [0.0f32; LANES];
            let (c, t) = (&mut codes[0], &mut trial[0]);
            encode_single::<L, W>(p, &layout, g, &fits[0], c, t, &mut d, &mut m)
                .map_err(|(j, v)| (first + j, v))?;
            let mut lanes = [[0i32; LANES]; 32];
            for i in 0..n {
                c[i].store_i32(&mut lanes[i]);
            }
            for j in 0..count {
                block.d = f16::from_f32(d[j]);
                block.dmin = f16::from_f32(m[j]);
                for i in 0..n {
                    block.q[i] = lanes[i][j];
                }
                let at = (first + j) * bytes;
                pack(args.format, &block, &mut dst[at..at + bytes]);
            }
        }
        return Ok(());
    }
    let group_len = LANES * layout.sub;
    let blocks = args.row.chunks_exact(n).zip(dst.chunks_exact_mut(bytes));
    for (b, (x, dst)) in blocks.enumerate() {
        weights(x, b * n, &mut w[..n]);
        for (k, g) in groups[..n / group_len].iter_mut().enumerate() {
            let r = k * group_len..(k + 1) * group_len;
            g.load::<W>(p, layout.sub, &x[r.clone()], &w[r], LANES);
            fits[k] = fit_group::<L, W>(p, &layout, g);
        }
        let ng = n / group_len;
        encode_super::<L, W>(
            p,
            &layout,
            &groups[..ng],
            &fits[..ng],
            &mut codes[..ng],
            &mut trial[..ng],
            &mut block,
        )
        .map_err(|v| (b, v))?;
        pack(args.format, &block, dst);
    }
    Ok(())
}

#[inline(always)]
fn block_weights(x: &[f32], importance: Option<&[f32]>, weighting: Weighting, w: &mut [f32]) {
    match weighting {
        Weighting::Square => {
            for (w, &v) in w.iter_mut().zip(x) {
                *w = v * v;
            }
            if w.iter().all(|&w| w == 0.0) {
                w.fill(1.0);
            }
        }
        Weighting::Uniform => w.fill(1.0),
        Weighting::SigmaSquare => {
            let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
            for (w, &v) in w.iter_mut().zip(x) {
                *w = sigma2 + v * v;
            }
            // An all-zero block: every value counts the same.
            if sigma2 == 0.0 {
                w.fill(1.0);
            }
        }
    }
    if let Some(imp) = importance {
        for (w, &i) in w.iter_mut().zip(imp) {
            *w *= i.max(0.0);
        }
    }
}

/// `round(v)` for |v| < 2²²: adding and removing 1.5·2²³ leaves v rounded to the nearest
/// integer (ties to even) in any rounding of the vector units, without a libm call.
#[inline(always)]
fn round(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

const MAGIC: f32 = 12_582_912.0;

/// Midpoints between neighbouring grid levels: a value's nearest level is the number of
/// midpoints below it.
const GRID_MIDPOINTS: [f32; 15] = {
    let mut out = [0.0f32; 15];
    let mut i = 0;
    while i < 15 {
        out[i] = (KVALUES_IQ4NL[i] as f32 + KVALUES_IQ4NL[i + 1] as f32) * 0.5;
        i += 1;
    }
    out
};

/// The grid's levels as f32, the decoder's table.
const GRID: [f32; 16] = KVALUES_F32;

/// Where a sub-block's largest magnitude may land on the IQ4 grid: at or near its long end
/// −127 (beyond it, the value is clipped to −127).
const GRID_TARGETS: [f32; 10] = [
    -127.0, -123.0, -119.0, -115.0, -111.0, -131.0, -135.0, -139.0, -107.0, -143.0,
];

#[cfg(test)]
fn level(codes: Codes, q: i32) -> f32 {
    match codes {
        Codes::Linear { .. } => q as f32,
        Codes::Grid => GRID[q as usize],
    }
}

/// Eight sub-blocks side by side, one per lane: `x[i]` holds value `i` of each. The search
/// runs on all eight at once, its sums accumulated per lane, so no pass ends in a
/// horizontal sum.
struct Group<V> {
    x: [V; 32],
    w: [V; 32],
}

/// A group's codes, per value per lane: levels for linear codes, grid indices for the IQ4
/// grid, as f32.
type GroupCodes<V> = [V; 32];

impl<V: Vector> Group<V> {
    #[inline(always)]
    fn new<L: Lanes<V = V>>(p: L) -> Self {
        let zero = p.splat(0.0);
        Group {
            x: [zero; 32],
            w: [zero; 32],
        }
    }

    /// Transposes `count` sub-blocks of `sub` values (and their weights, when `W`) into the
    /// lanes; lanes past `count` are zero.
    #[inline(always)]
    fn load<const W: bool>(
        &mut self,
        p: impl Lanes<V = V>,
        sub: usize,
        x: &[f32],
        w: &[f32],
        count: usize,
    ) {
        transpose_into(p, sub, x, count, &mut self.x);
        if W {
            transpose_into(p, sub, w, count, &mut self.w);
        }
    }
}

/// `count` runs of `sub` values (`count ≤ 8`) into lanes: lane `j` of `out[i]` is value
/// `i` of run `j`; lanes past `count` are zero.
#[inline(always)]
fn transpose_into<L: Lanes>(p: L, sub: usize, x: &[f32], count: usize, out: &mut [L::V; 32]) {
    const ZERO: [f32; LANES] = [0.0; LANES];
    for i in (0..sub).step_by(LANES) {
        let rows = std::array::from_fn(|j| {
            if j < count {
                x[j * sub + i..][..LANES].try_into().expect("a whole lane")
            } else {
                &ZERO
            }
        });
        p.transpose(rows, &mut out[i..i + LANES]);
    }
}

/// Per lane, a sub-block's weighted sums that do not depend on its codes.
#[derive(Clone, Copy)]
struct Moments<V> {
    w: V,
    wx: V,
    wxx: V,
}

/// Per lane, a sub-block's weighted sums over its codes' levels `l`.
#[derive(Clone, Copy)]
struct CodeSums<V> {
    wl: V,
    wll: V,
    wxl: V,
}

impl<V: Vector> CodeSums<V> {
    #[inline(always)]
    fn select(mask: V::M, a: &Self, b: &Self) -> Self {
        CodeSums {
            wl: mask.select(a.wl, b.wl),
            wll: mask.select(a.wll, b.wll),
            wxl: mask.select(a.wxl, b.wxl),
        }
    }
}

/// Per lane, the best `(s, o)` for `x ≈ s·l + o` (with `o ≤ 0` when `nonpositive`; `o = 0`
/// unless `offset`) and its error.
#[inline(always)]
fn fit<L: Lanes>(
    p: L,
    m: &Moments<L::V>,
    c: &CodeSums<L::V>,
    offset: bool,
    nonpositive: bool,
) -> (L::V, L::V, L::V) {
    let zero = p.splat(0.0);
    // The scale alone.
    let positive = zero.lt(c.wll);
    let s0 = positive.select(c.wxl / c.wll, zero);
    let e0 = positive.select((m.wxx - s0 * c.wxl).max(zero), m.wxx);
    if !offset {
        return (s0, zero, e0);
    }
    let det = c.wll * m.w - c.wl * c.wl;
    let s1 = (m.w * c.wxl - c.wl * m.wx) / det;
    let o1 = (c.wll * m.wx - c.wl * c.wxl) / det;
    let regular = zero.lt(det);
    // Every code the same: only the offset is determined, the weighted mean.
    let constant = !regular & zero.lt(m.w);
    let (pair, mean) = if nonpositive {
        (regular & o1.le(zero), constant & m.wx.le(zero))
    } else {
        (regular, constant)
    };
    let s = pair.select(s1, mean.select(zero, s0));
    let o = pair.select(o1, mean.select(m.wx / m.w, zero));
    let e = (pair | mean).select(error(p, m, c, s, o), e0);
    (s, o, e)
}

/// Σ w·(s·l + o − x)² from the sums.
#[inline(always)]
fn error<L: Lanes>(p: L, m: &Moments<L::V>, c: &CodeSums<L::V>, s: L::V, o: L::V) -> L::V {
    let two = p.splat(2.0);
    let e =
        m.wxx - two * s * c.wxl - two * o * m.wx + s * s * c.wll + two * s * o * c.wl + o * o * m.w;
    e.max(p.splat(0.0))
}

/// One pass over the lanes' values for `x ≈ s·level + o` per lane (`o` ignored for centred
/// layouts): the codes' sums and, when `FULL`, the codes into `codes` and the weighted
/// squared error of the values as the decoder computes them (`s·level + o`).
#[inline(always)]
fn pass<L: Lanes, const W: bool, const FULL: bool>(
    p: L,
    layout: &Layout,
    g: &Group<L::V>,
    s: L::V,
    o: L::V,
    codes: &mut [L::V; 32],
) -> (CodeSums<L::V>, L::V) {
    let zero = p.splat(0.0);
    let inv = s.eq(zero).select(zero, p.splat(1.0) / s);
    let (lo, hi) = match layout.codes {
        Codes::Linear { lo, hi } => (p.splat(lo as f32), p.splat(hi as f32)),
        Codes::Grid => (zero, zero),
    };
    let magic = p.splat(MAGIC);
    // Two sets of sums, even and odd values: two chains of additions keep the vector units
    // busy where one would wait on each addition.
    let (mut even, mut odd) = ((zero, zero, zero, zero), (zero, zero, zero, zero));
    let consts = PassConsts {
        s,
        o,
        inv,
        lo,
        hi,
        magic,
    };
    for i in (0..layout.sub).step_by(2) {
        pass_step::<L, W, FULL>(layout, g, &consts, i, &mut even, codes);
        pass_step::<L, W, FULL>(layout, g, &consts, i + 1, &mut odd, codes);
    }
    let [(a0, a1, a2, a3), (b0, b1, b2, b3)] = [even, odd];
    let c = CodeSums {
        wl: a0 + b0,
        wll: a1 + b1,
        wxl: a2 + b2,
    };
    (c, a3 + b3)
}

/// What every value of a pass shares.
struct PassConsts<V> {
    s: V,
    o: V,
    inv: V,
    lo: V,
    hi: V,
    magic: V,
}

/// One value of every lane of a pass, into the sums `(wl, wll, wxl, err)`.
#[inline(always)]
fn pass_step<L: Lanes, const W: bool, const FULL: bool>(
    layout: &Layout,
    g: &Group<L::V>,
    c: &PassConsts<L::V>,
    i: usize,
    (wl, wll, wxl, err): &mut (L::V, L::V, L::V, L::V),
    codes: &mut [L::V; 32],
) {
    let offset = !matches!(layout.mins, Mins::None);
    let x = g.x[i];
    let t = if offset { (x - c.o) * c.inv } else { x * c.inv };
    let (code, l) = match layout.codes {
        Codes::Grid => t.grid(),
        Codes::Linear { .. } => {
            let l = (t.max(c.lo).min(c.hi) + c.magic) - c.magic;
            (l, l)
        }
    };
    let a = if W { g.w[i] * l } else { l };
    *wl = *wl + a;
    *wll = *wll + a * l;
    *wxl = *wxl + a * x;
    if FULL {
        codes[i] = code;
        let e = if offset {
            c.s * l + c.o - x
        } else {
            c.s * l - x
        };
        *err = *err + if W { g.w[i] * e * e } else { e * e };
    }
}

/// Stage 1, per lane: the best continuous scale and offset of the sub-block, the weight of
/// its scale (Σ w·l², how fast its error grows with the scale's error) and its moments.
#[derive(Clone, Copy)]
struct LaneFit<V> {
    s: V,
    o: V,
    scale_weight: V,
    moments: Moments<V>,
}

impl<V: Vector> LaneFit<V> {
    #[inline(always)]
    fn new<L: Lanes<V = V>>(p: L) -> Self {
        let zero = p.splat(0.0);
        LaneFit {
            s: zero,
            o: zero,
            scale_weight: zero,
            moments: Moments {
                w: zero,
                wx: zero,
                wxx: zero,
            },
        }
    }
}

#[inline(always)]
fn fit_group<L: Lanes, const W: bool>(p: L, layout: &Layout, g: &Group<L::V>) -> LaneFit<L::V> {
    let offset = !matches!(layout.mins, Mins::None);
    let nonpositive = matches!(layout.mins, Mins::Int { .. });
    let zero = p.splat(0.0);
    // The range, the largest magnitude (the first value of it: its sign orients the signed
    // grids) and the moments.
    let (mut lo_x, mut hi_x) = (p.splat(f32::MAX), p.splat(f32::MIN));
    let (mut amax, mut xm) = (zero, zero);
    let (mut sw, mut swx, mut swxx) = (zero, zero, zero);
    for i in 0..layout.sub {
        let x = g.x[i];
        lo_x = x.min(lo_x);
        hi_x = x.max(hi_x);
        let a = x.abs();
        xm = a.gt(amax).select(x, xm);
        amax = a.max(amax);
        let wx = if W { g.w[i] * x } else { x };
        sw = sw + if W { g.w[i] } else { p.splat(1.0) };
        swx = swx + wx;
        swxx = swxx + wx * x;
    }
    let moments = Moments {
        w: sw,
        wx: swx,
        wxx: swxx,
    };
    // Candidate (scale, offset) pairs that map the block's range onto the codes' range.
    let mut candidates = [(zero, zero); 10];
    let count;
    match layout.codes {
        Codes::Linear { lo, hi } if offset => {
            if nonpositive {
                lo_x = lo_x.min(zero);
            }
            let span = hi_x - lo_x;
            let n = (hi - lo) as f32;
            for (c, delta) in candidates.iter_mut().zip([0.0, -0.5, 0.5, -1.0, 1.0, 0.25]) {
                *c = (span / p.splat(n + delta), lo_x);
            }
            count = 6;
        }
        Codes::Linear { lo, .. } => {
            // The value of largest magnitude at the long end of the range (lo) or near it,
            // inside or a little beyond (clipped).
            let lo = lo as f32;
            for (c, t) in
                candidates
                    .iter_mut()
                    .zip([lo, lo + 0.5, lo - 0.5, lo + 1.0, lo - 1.0, lo + 0.25])
            {
                *c = (xm / p.splat(t), zero);
            }
            count = 6;
        }
        Codes::Grid => {
            // The grid is asymmetric (−127 … 113): the largest magnitude at or near its long
            // end (measured: the short end's candidates lower the error but not the outputs').
            for (c, t) in candidates.iter_mut().zip(GRID_TARGETS) {
                *c = (xm / p.splat(t), zero);
            }
            count = GRID_TARGETS.len();
        }
    }
    // Codes of the candidates are not kept: only their sums.
    let mut scratch = [zero; 32];
    let (mut best_e, mut best_s, mut best_o, mut best_w) = (p.splat(f32::MAX), zero, zero, zero);
    for &(s, o) in &candidates[..count] {
        let (c, _) = pass::<L, W, false>(p, layout, g, s, o, &mut scratch);
        let (s, o, e) = fit(p, &moments, &c, offset, nonpositive);
        let better = e.lt(best_e);
        best_e = better.select(e, best_e);
        best_s = better.select(s, best_s);
        best_o = better.select(o, best_o);
        best_w = better.select(c.wll, best_w);
    }
    // Lloyd steps from the best: re-code for the fitted scale, re-fit for the codes. A lane
    // that does not improve would repeat itself: the steps end when none does.
    for _ in 0..2 {
        let (c, _) = pass::<L, W, false>(p, layout, g, best_s, best_o, &mut scratch);
        let (s, o, e) = fit(p, &moments, &c, offset, nonpositive);
        let better = e.lt(best_e);
        if !better.any() {
            break;
        }
        best_e = better.select(e, best_e);
        best_s = better.select(s, best_s);
        best_o = better.select(o, best_o);
        best_w = better.select(c.wll, best_w);
    }
    // An all-zero sub-block: scale and offset zero.
    let empty = amax.eq(zero);
    LaneFit {
        s: empty.select(zero, best_s),
        o: empty.select(zero, best_o),
        scale_weight: empty.select(zero, best_w),
        moments,
    }
}

/// `Err((lane, value))` for the first lane whose `a` (then `b`) is beyond f16's range.
#[inline(always)]
fn lanes_within_f16<V: Vector>(a: V, b: V) -> Result<(), (usize, f32)> {
    let (mut a_, mut b_) = ([0.0f32; LANES], [0.0f32; LANES]);
    a.store(&mut a_);
    b.store(&mut b_);
    for j in 0..LANES {
        within_f16(&[a_[j], b_[j]]).map_err(|v| (j, v))?;
    }
    Ok(())
}

/// Blocks of one sub-block (the legacy formats, iq4_nl), eight at a time: `d` (and `m`) are
/// f16 of their own; Lloyd steps with the rounded values. The codes go to `codes`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn encode_single<L: Lanes, const W: bool>(
    p: L,
    layout: &Layout,
    g: &Group<L::V>,
    fit_: &LaneFit<L::V>,
    codes: &mut GroupCodes<L::V>,
    trial: &mut GroupCodes<L::V>,
    d_out: &mut [f32; LANES],
    m_out: &mut [f32; LANES],
) -> Result<(), (usize, f32)> {
    lanes_within_f16(fit_.s, fit_.o)?;
    let offset = matches!(layout.mins, Mins::Half);
    let zero = p.splat(0.0);
    let f16_max = p.splat(f16::MAX.to_f32());
    let mut d = fit_.s.round_f16();
    let mut m = if offset { fit_.o.round_f16() } else { zero };
    let (mut sums, mut best) = pass::<L, W, true>(p, layout, g, d, m, codes);
    for _ in 0..2 {
        // `sums` are those of the codes for the current (d, m).
        let (s, o, _) = fit(p, &fit_.moments, &sums, offset, false);
        let (d2, m2) = (s.round_f16(), o.round_f16());
        let finite = d2.abs().le(f16_max) & m2.abs().le(f16_max);
        let (sums2, e) = pass::<L, W, true>(p, layout, g, d2, m2, trial);
        let better = finite & e.lt(best);
        if !better.any() {
            break;
        }
        best = better.select(e, best);
        d = better.select(d2, d);
        m = better.select(m2, m);
        sums = CodeSums::select(better, &sums2, &sums);
        for i in 0..layout.sub {
            codes[i] = better.select(trial[i], codes[i]);
        }
    }
    d.store(d_out);
    m.store(m_out);
    Ok(())
}

/// `Err(v)` for the first of `values` beyond f16's range.
#[inline(always)]
fn within_f16(values: &[f32]) -> Result<(), f32> {
    match values
        .iter()
        .find(|v| v.is_nan() || v.abs() > f16::MAX.to_f32())
    {
        Some(&v) => Err(v),
        None => Ok(()),
    }
}

/// A sub-block's stage-1 result as scalars, for the super-block's integer steps.
#[derive(Default, Clone, Copy)]
struct SubFit {
    s: f32,
    o: f32,
    scale_weight: f32,
    w: f32,
    wx: f32,
}

/// A sub-block's code sums and error for its stored scale and minimum.
#[derive(Default, Clone, Copy)]
struct SubCodes {
    wl: f32,
    wll: f32,
    wxl: f32,
    err: f32,
}

/// The lanes of `v` as eight scalars.
#[inline(always)]
fn lanes_of<V: Vector>(v: V) -> [f32; LANES] {
    let mut out = [0.0f32; LANES];
    v.store(&mut out);
    out
}

/// A super-block: integer sub-scales (and minima) under f16 `d` (and `dmin`). `groups` hold
/// its sub-blocks eight at a time, `fits` their stage-1 results.
#[inline(always)]
fn encode_super<L: Lanes, const W: bool>(
    p: L,
    layout: &Layout,
    groups: &[Group<L::V>],
    fits: &[LaneFit<L::V>],
    codes_v: &mut [GroupCodes<L::V>],
    trial_v: &mut [GroupCodes<L::V>],
    block: &mut Block,
) -> Result<(), f32> {
    let subs = layout.subs;
    let Scales::Int { lo, hi } = layout.scales else {
        unreachable!("super-blocks have integer scales")
    };
    let min_hi = match layout.mins {
        Mins::Int { hi } => Some(hi),
        _ => None,
    };
    let mut sub_fits = [SubFit::default(); MAX_SUBS];
    for (k, f) in fits.iter().enumerate() {
        let (s, o, sw) = (lanes_of(f.s), lanes_of(f.o), lanes_of(f.scale_weight));
        let (w, wx) = (lanes_of(f.moments.w), lanes_of(f.moments.wx));
        for j in 0..LANES {
            sub_fits[k * LANES + j] = SubFit {
                s: s[j],
                o: o[j],
                scale_weight: sw[j],
                w: w[j],
                wx: wx[j],
            };
        }
    }
    let sub_fits = &sub_fits[..subs];
    let mut v = [0.0f32; MAX_SUBS];
    let mut vw = [0.0f32; MAX_SUBS];
    for j in 0..subs {
        v[j] = sub_fits[j].s;
        vw[j] = sub_fits[j].scale_weight;
    }
    let d = fit_steps(&v[..subs], &vw[..subs], lo, hi, &mut block.sc[..subs]);
    let mut dmin = 0.0;
    if let Some(mhi) = min_hi {
        for j in 0..subs {
            v[j] = -sub_fits[j].o;
            vw[j] = sub_fits[j].w;
        }
        dmin = fit_steps(&v[..subs], &vw[..subs], 0, mhi, &mut block.m[..subs]);
    }
    within_f16(&[d, dmin])?;
    // Stored as f16: the integers re-rounded for the rounded steps.
    let d16 = f16::from_f32(d);
    let dmin16 = f16::from_f32(dmin);
    rescale(
        sub_fits,
        d16.to_f32(),
        lo,
        hi,
        |f| f.s,
        &mut block.sc[..subs],
    );
    if let Some(mhi) = min_hi {
        rescale(
            sub_fits,
            dmin16.to_f32(),
            0,
            mhi,
            |f| -f.o,
            &mut block.m[..subs],
        );
    }
    let (df, dminf) = (d16.to_f32(), dmin16.to_f32());
    let mut codes = [SubCodes::default(); MAX_SUBS];
    let (sc, m) = (block.sc, block.m);
    code_all::<L, W>(
        p,
        layout,
        groups,
        (df, dminf),
        (&sc, &m),
        codes_v,
        &mut codes,
    );
    refine_steps::<L, W>(
        p,
        layout,
        groups,
        (df, dminf),
        (lo, hi, min_hi),
        block,
        codes_v,
        &mut codes,
    );
    // A joint least-squares refit of d and dmin for the integer products, kept if it helps.
    block.d = d16;
    block.dmin = dmin16;
    let before: f32 = codes[..subs].iter().map(|c| c.err).sum();
    let (d_new, dmin_new) = refit_super(layout, sub_fits, block, &codes);
    let (d2, dmin2) = (f16::from_f32(d_new), f16::from_f32(dmin_new));
    if d2.is_finite() && dmin2.is_finite() {
        let mut trial = [SubCodes::default(); MAX_SUBS];
        let (d2f, dmin2f) = (d2.to_f32(), dmin2.to_f32());
        let (sc, m) = (block.sc, block.m);
        code_all::<L, W>(
            p,
            layout,
            groups,
            (d2f, dmin2f),
            (&sc, &m),
            trial_v,
            &mut trial,
        );
        let after: f32 = trial[..subs].iter().map(|c| c.err).sum();
        if after < before {
            block.d = d2;
            block.dmin = dmin2;
            codes_v.copy_from_slice(trial_v);
        }
    }
    // The codes, back from the lanes.
    for (k, codes) in codes_v.iter().enumerate() {
        for i in 0..layout.sub {
            let mut c = [0i32; LANES];
            codes[i].store_i32(&mut c);
            for j in 0..LANES {
                block.q[(k * LANES + j) * layout.sub + i] = c[j];
            }
        }
    }
    Ok(())
}

#[inline(always)]
fn rescale(
    fits: &[SubFit],
    step: f32,
    lo: i32,
    hi: i32,
    value: impl Fn(&SubFit) -> f32,
    k: &mut [i32],
) {
    let inv = if step != 0.0 { 1.0 / step } else { 0.0 };
    for (f, k) in fits.iter().zip(k.iter_mut()) {
        *k = round((value(f) * inv).clamp(lo as f32, hi as f32)) as i32;
    }
}

/// Scale and offset of sub-block `j` as the decoder computes them.
#[inline(always)]
fn sub_params(d: f32, dmin: f32, sc: i32, m: i32, has_min: bool) -> (f32, f32) {
    let s = d * sc as f32;
    let o = if has_min { -(dmin * m as f32) } else { 0.0 };
    (s, o)
}

/// Per-lane scale and offset of group `k` for the integer scales and minima.
#[inline(always)]
fn group_params<L: Lanes>(
    p: L,
    k: usize,
    d: f32,
    dmin: f32,
    sc: &[i32; MAX_SUBS],
    m: &[i32; MAX_SUBS],
    has_min: bool,
) -> (L::V, L::V) {
    let (mut s, mut o) = ([0.0f32; LANES], [0.0f32; LANES]);
    for j in 0..LANES {
        (s[j], o[j]) = sub_params(d, dmin, sc[k * LANES + j], m[k * LANES + j], has_min);
    }
    (p.load(&s), p.load(&o))
}

/// The sums and error of a pass's lanes into `codes[k·8..]`.
#[inline(always)]
fn store_codes<V: Vector>(k: usize, c: &CodeSums<V>, e: V, codes: &mut [SubCodes; MAX_SUBS]) {
    let (wl, wll, wxl, err) = (
        lanes_of(c.wl),
        lanes_of(c.wll),
        lanes_of(c.wxl),
        lanes_of(e),
    );
    for j in 0..LANES {
        codes[k * LANES + j] = SubCodes {
            wl: wl[j],
            wll: wll[j],
            wxl: wxl[j],
            err: err[j],
        };
    }
}

/// Codes every sub-block for the stored scales into `codes_v`; each sub-block's sums and
/// error into `out`.
#[inline(always)]
fn code_all<L: Lanes, const W: bool>(
    p: L,
    layout: &Layout,
    groups: &[Group<L::V>],
    (d, dmin): (f32, f32),
    (sc, m): (&[i32; MAX_SUBS], &[i32; MAX_SUBS]),
    codes_v: &mut [GroupCodes<L::V>],
    out: &mut [SubCodes; MAX_SUBS],
) {
    let has_min = matches!(layout.mins, Mins::Int { .. });
    for (k, (g, codes)) in groups.iter().zip(codes_v.iter_mut()).enumerate() {
        let (s, o) = group_params(p, k, d, dmin, sc, m, has_min);
        let (c, e) = pass::<L, W, true>(p, layout, g, s, o, codes);
        store_codes(k, &c, e, out);
    }
}

/// Coordinate refinement: each sub-block's integer scale (and minimum) moved one step either
/// way where that lowers the sub-block's error (its codes re-chosen for the new step); the
/// moves are tried in turn, on eight sub-blocks at once.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn refine_steps<L: Lanes, const W: bool>(
    p: L,
    layout: &Layout,
    groups: &[Group<L::V>],
    (d, dmin): (f32, f32),
    (lo, hi, min_hi): (i32, i32, Option<i32>),
    block: &mut Block,
    codes_v: &mut [GroupCodes<L::V>],
    codes: &mut [SubCodes; MAX_SUBS],
) {
    let has_min = min_hi.is_some();
    let moves: &[(i32, i32)] = if has_min {
        &[(-1, 0), (1, 0), (0, -1), (0, 1)]
    } else {
        &[(-1, 0), (1, 0)]
    };
    let zero = p.splat(0.0);
    let mut trial_codes = [SubCodes::default(); MAX_SUBS];
    let mut trial = [zero; 32];
    for (k, (g, group_codes)) in groups.iter().zip(codes_v.iter_mut()).enumerate() {
        for &(ds, dm) in moves {
            let (mut sc, mut m) = (block.sc, block.m);
            let mut valid = [false; LANES];
            for j in 0..LANES {
                let at = k * LANES + j;
                sc[at] += ds;
                m[at] += dm;
                valid[j] =
                    sc[at] >= lo && sc[at] <= hi && m[at] >= 0 && min_hi.is_none_or(|h| m[at] <= h);
            }
            let (s, o) = group_params(p, k, d, dmin, &sc, &m, has_min);
            let (c, e) = pass::<L, W, true>(p, layout, g, s, o, &mut trial);
            store_codes(k, &c, e, &mut trial_codes);
            let mut take = [0.0f32; LANES];
            for j in 0..LANES {
                let at = k * LANES + j;
                if valid[j] && trial_codes[at].err < codes[at].err {
                    codes[at] = trial_codes[at];
                    block.sc[at] = sc[at];
                    block.m[at] = m[at];
                    take[j] = 1.0;
                }
            }
            let take = p.load(&take).gt(zero);
            if take.any() {
                for i in 0..layout.sub {
                    group_codes[i] = take.select(trial[i], group_codes[i]);
                }
            }
        }
    }
}

/// Least-squares `d` and `dmin` for the block's integer scales, minima and codes:
/// `x ≈ d·(sc·level) − dmin·m` is linear in the two. Per sub-block the integers are
/// constant, so its code sums give the block's.
#[inline(always)]
fn refit_super(
    layout: &Layout,
    fits: &[SubFit],
    block: &Block,
    codes: &[SubCodes; MAX_SUBS],
) -> (f32, f32) {
    let has_min = matches!(layout.mins, Mins::Int { .. });
    // Sums for a = sc·level, b = −m.
    let (mut aa, mut ab, mut bb, mut ax, mut bx) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for j in 0..layout.subs {
        let (c, f) = (&codes[j], &fits[j]);
        let sc = block.sc[j] as f32;
        let b = -(block.m[j] as f32);
        aa += sc * sc * c.wll;
        ab += sc * b * c.wl;
        bb += b * b * f.w;
        ax += sc * c.wxl;
        bx += b * f.wx;
    }
    if !has_min || bb <= 0.0 {
        return (if aa > 0.0 { ax / aa } else { 0.0 }, block.dmin.to_f32());
    }
    let det = aa * bb - ab * ab;
    if det <= 0.0 {
        return (block.d.to_f32(), block.dmin.to_f32());
    }
    let d = (ax * bb - bx * ab) / det;
    let dmin = (aa * bx - ab * ax) / det;
    (d, dmin)
}

/// Integers `k_j ∈ lo..=hi` and a step `d` with `d·k_j ≈ v_j`, weighted by `weight_j`: `d`
/// maps the largest magnitude onto the range's long end, then alternates rounding and a
/// weighted least-squares refit.
#[inline(always)]
fn fit_steps(v: &[f32], weight: &[f32], lo: i32, hi: i32, k: &mut [i32]) -> f32 {
    let (mut vmax, mut amax) = (0.0f32, 0.0f32);
    for &v in v {
        if v.abs() > amax {
            amax = v.abs();
            vmax = v;
        }
    }
    if amax == 0.0 {
        k.fill(0);
        return 0.0;
    }
    // Unsigned ranges (lo = 0) take the positive values; signed ones put the largest
    // magnitude at lo, the end with one more step.
    let end = if lo < 0 { lo as f32 } else { hi as f32 };
    let mut d = vmax / end;
    let mut best = (f32::MAX, d);
    for _ in 0..3 {
        let inv = 1.0 / d;
        let (mut num, mut den, mut err) = (0.0f32, 0.0f32, 0.0f32);
        for ((&v, &w), k) in v.iter().zip(weight).zip(k.iter_mut()) {
            let r = round((v * inv).clamp(lo as f32, hi as f32));
            *k = r as i32;
            num += w * v * r;
            den += w * r * r;
            let e = v - d * r;
            err += w * e * e;
        }
        if err < best.0 {
            best = (err, d);
        }
        if den <= 0.0 {
            break;
        }
        d = num / den;
    }
    d = best.1;
    let inv = 1.0 / d;
    for (&v, k) in v.iter().zip(k.iter_mut()) {
        *k = round((v * inv).clamp(lo as f32, hi as f32)) as i32;
    }
    d
}

/// Writes `block` in `format`'s bytes (the layouts the decoders document).
fn pack(format: BlockFormat, b: &Block, dst: &mut [u8]) {
    let d = b.d.to_le_bytes();
    let dmin = b.dmin.to_le_bytes();
    // Nibbles of a 32-value run: value l in the low nibble of byte l, value l + 16 in the high.
    let nibbles = |q: &[i32], bias: i32, out: &mut [u8]| {
        for l in 0..16 {
            out[l] = (((q[l] + bias) & 15) | (((q[l + 16] + bias) & 15) << 4)) as u8;
        }
    };
    let fifth = |q: &[i32], bias: i32| -> [u8; 4] {
        let mut h = 0u32;
        for (j, &q) in q.iter().take(32).enumerate() {
            h |= ((((q + bias) >> 4) & 1) as u32) << j;
        }
        h.to_le_bytes()
    };
    match format {
        BlockFormat::Legacy(f) => match f {
            GgufFormat::Q4_0 => {
                dst[..2].copy_from_slice(&d);
                nibbles(&b.q, 8, &mut dst[2..18]);
            }
            GgufFormat::Q4_1 => {
                dst[..2].copy_from_slice(&d);
                dst[2..4].copy_from_slice(&dmin);
                nibbles(&b.q, 0, &mut dst[4..20]);
            }
            GgufFormat::Q5_0 => {
                dst[..2].copy_from_slice(&d);
                dst[2..6].copy_from_slice(&fifth(&b.q, 16));
                nibbles(&b.q, 16, &mut dst[6..22]);
            }
            GgufFormat::Q5_1 => {
                dst[..2].copy_from_slice(&d);
                dst[2..4].copy_from_slice(&dmin);
                dst[4..8].copy_from_slice(&fifth(&b.q, 0));
                nibbles(&b.q, 0, &mut dst[8..24]);
            }
            GgufFormat::Q8_0 => {
                dst[..2].copy_from_slice(&d);
                for (o, &q) in dst[2..34].iter_mut().zip(&b.q) {
                    *o = q as i8 as u8;
                }
            }
        },
        BlockFormat::K(f) => match f {
            KFormat::Iq4Nl => {
                dst[..2].copy_from_slice(&d);
                nibbles(&b.q, 0, &mut dst[2..18]);
            }
            KFormat::Q2K => {
                for j in 0..16 {
                    dst[j] = (b.sc[j] | (b.m[j] << 4)) as u8;
                }
                pack_planes_2bit(&b.q, 0, &mut dst[16..80]);
                dst[80..82].copy_from_slice(&d);
                dst[82..84].copy_from_slice(&dmin);
            }
            KFormat::Q3K => {
                // Codes −4..3 biased to 0..7: low two bits in planes, the third in hmask.
                let hmask = &mut dst[..32];
                hmask.fill(0);
                for (i, &q) in b.q.iter().enumerate() {
                    if (q + 4) & 4 != 0 {
                        hmask[i % 32] |= 1 << (i / 32);
                    }
                }
                pack_planes_2bit(&b.q, 4, &mut dst[32..96]);
                let sc = &mut dst[96..108];
                sc.fill(0);
                for j in 0..16 {
                    let v = (b.sc[j] + 32) as u8;
                    if j < 8 {
                        sc[j] |= v & 0x0f;
                    } else {
                        sc[j - 8] |= (v & 0x0f) << 4;
                    }
                    sc[8 + j % 4] |= (v >> 4) << (j / 4 * 2);
                }
                dst[108..110].copy_from_slice(&d);
            }
            KFormat::Q4K | KFormat::Q5K => {
                dst[..2].copy_from_slice(&d);
                dst[2..4].copy_from_slice(&dmin);
                let scales = &mut dst[4..16];
                pack_scale_min_k4(&b.sc, &b.m, scales);
                let qs_at = if f == KFormat::Q4K { 16 } else { 48 };
                if f == KFormat::Q5K {
                    let qh = &mut dst[16..48];
                    qh.fill(0);
                    for j in 0..8 {
                        for l in 0..32 {
                            qh[l] |= (((b.q[32 * j + l] >> 4) & 1) as u8) << j;
                        }
                    }
                }
                let qs = &mut dst[qs_at..qs_at + 128];
                for c in 0..4 {
                    for l in 0..32 {
                        let lo = b.q[64 * c + l] & 15;
                        let hi = b.q[64 * c + 32 + l] & 15;
                        qs[32 * c + l] = (lo | (hi << 4)) as u8;
                    }
                }
            }
            KFormat::Q6K => {
                let (ql, rest) = dst.split_at_mut(128);
                let (qh, rest) = rest.split_at_mut(64);
                ql.fill(0);
                qh.fill(0);
                for half in 0..2 {
                    for t in 0..4 {
                        for l in 0..32 {
                            let q = (b.q[half * 128 + 32 * t + l] + 32) as u8;
                            ql[half * 64 + t % 2 * 32 + l] |= (q & 0x0f) << (t / 2 * 4);
                            qh[half * 32 + l] |= (q >> 4) << (t * 2);
                        }
                    }
                }
                for j in 0..16 {
                    rest[j] = b.sc[j] as i8 as u8;
                }
                rest[16..18].copy_from_slice(&d);
            }
            KFormat::Iq4Xs => {
                dst[..2].copy_from_slice(&d);
                let mut high = 0u16;
                let mut low = [0u8; 4];
                for j in 0..8 {
                    let v = (b.sc[j] + 32) as u16;
                    low[j / 2] |= ((v & 0x0f) as u8) << (j % 2 * 4);
                    high |= (v >> 4) << (2 * j);
                }
                dst[2..4].copy_from_slice(&high.to_le_bytes());
                dst[4..8].copy_from_slice(&low);
                for j in 0..8 {
                    nibbles(&b.q[32 * j..], 0, &mut dst[8 + 16 * j..8 + 16 * (j + 1)]);
                }
            }
        },
    }
}

/// Two-bit codes (biased by `bias`) in q2_K/q3_K's planes: per half of 128 values, bits
/// `2s..2s+2` of byte `l` hold value `32s + l`.
fn pack_planes_2bit(q: &[i32], bias: i32, qs: &mut [u8]) {
    qs.fill(0);
    for half in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let v = ((q[half * 128 + 32 * s + l] + bias) & 3) as u8;
                qs[half * 32 + l] |= v << (2 * s);
            }
        }
    }
}

/// Eight 6-bit scales and minima into q4_K/q5_K's 12 bytes (the inverse of the decoder's
/// `scale_min_k4`).
fn pack_scale_min_k4(sc: &[i32], m: &[i32], out: &mut [u8]) {
    out.fill(0);
    for j in 0..8 {
        let (s, mm) = (sc[j] as u8, m[j] as u8);
        if j < 4 {
            out[j] |= s & 0x3f;
            out[j + 4] |= mm & 0x3f;
        } else {
            out[j + 4] |= (s & 0x0f) | ((mm & 0x0f) << 4);
            out[j - 4] |= (s >> 4) << 6;
            out[j] |= (mm >> 4) << 6;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{gguf, kquants};

    const ALL: [BlockFormat; 12] = [
        BlockFormat::Legacy(GgufFormat::Q4_0),
        BlockFormat::Legacy(GgufFormat::Q4_1),
        BlockFormat::Legacy(GgufFormat::Q5_0),
        BlockFormat::Legacy(GgufFormat::Q5_1),
        BlockFormat::Legacy(GgufFormat::Q8_0),
        BlockFormat::K(KFormat::Q2K),
        BlockFormat::K(KFormat::Q3K),
        BlockFormat::K(KFormat::Q4K),
        BlockFormat::K(KFormat::Q5K),
        BlockFormat::K(KFormat::Q6K),
        BlockFormat::K(KFormat::Iq4Nl),
        BlockFormat::K(KFormat::Iq4Xs),
    ];

    fn decode(format: BlockFormat, bytes: &[u8], len: usize) -> Vec<f32> {
        let mut out = Vec::new();
        match format {
            BlockFormat::Legacy(f) => gguf::dequantize_row(f, bytes, len, &mut out).unwrap(),
            BlockFormat::K(f) => kquants::dequantize_row(f, bytes, len, &mut out).unwrap(),
        }
        out
    }

    /// A small deterministic generator (xorshift), Gaussian by the sum of uniforms.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
        fn gaussian(&mut self) -> f32 {
            (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
        }
        fn int(&mut self, lo: i32, hi: i32) -> i32 {
            lo + (self.uniform() * (hi - lo + 1) as f32) as i32
        }
    }

    /// Every field the search can set, at random, packs into bytes the decoders read back
    /// as `D·level(q) − M`: the packers are the decoders' inverses.
    #[test]
    fn packed_blocks_decode_to_their_fields() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for format in ALL {
            let layout = layout(format);
            for _ in 0..50 {
                let mut b = Block {
                    d: f16::from_f32(rng.gaussian() * 0.01),
                    dmin: f16::from_f32(rng.uniform() * 0.01),
                    ..Block::default()
                };
                if let Scales::Int { lo, hi } = layout.scales {
                    for j in 0..layout.subs {
                        b.sc[j] = rng.int(lo, hi);
                    }
                }
                if let Mins::Int { hi } = layout.mins {
                    for j in 0..layout.subs {
                        b.m[j] = rng.int(0, hi);
                    }
                }
                if matches!(layout.mins, Mins::Half) {
                    b.dmin = f16::from_f32(rng.gaussian() * 0.01);
                }
                let n = format.block_values();
                for i in 0..n {
                    b.q[i] = match layout.codes {
                        Codes::Linear { lo, hi } => rng.int(lo, hi),
                        Codes::Grid => rng.int(0, 15),
                    };
                }
                let mut bytes = vec![0u8; format.block_bytes()];
                pack(format, &b, &mut bytes);
                let y = decode(format, &bytes, n);
                let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
                for i in 0..n {
                    let j = i / layout.sub;
                    let l = level(layout.codes, b.q[i]);
                    let expected = match (layout.scales, layout.mins) {
                        (Scales::Half, Mins::Half) => l * d + dmin,
                        (Scales::Half, _) => l * d,
                        (Scales::Int { .. }, Mins::Int { .. }) => {
                            d * b.sc[j] as f32 * l - dmin * b.m[j] as f32
                        }
                        (Scales::Int { .. }, _) => d * b.sc[j] as f32 * l,
                    };
                    assert!(
                        (y[i] - expected).abs() <= 1e-6 * expected.abs().max(1e-3),
                        "{}: value {i}: decoded {} expected {expected}",
                        format.name(),
                        y[i]
                    );
                }
            }
        }
    }

    fn mse(x: &[f32], y: &[f32]) -> f64 {
        x.iter()
            .zip(y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / x.len() as f64
    }

    fn search_mse(format: BlockFormat, x: &[f32], weighting: Weighting) -> f64 {
        let mut out = Vec::new();
        BlockSearch::default()
            .quantize_row(format, x, None, weighting, &mut out)
            .unwrap();
        assert_eq!(
            out.len(),
            x.len() / format.block_values() * format.block_bytes()
        );
        mse(x, &decode(format, &out, x.len()))
    }

    /// On Gaussian rows the search beats llama.cpp's reference rule for every legacy format,
    /// and the formats rank by their bits.
    #[test]
    fn search_beats_the_reference_and_formats_rank_by_bits() {
        let mut rng = Rng(42);
        let x: Vec<f32> = (0..256 * 64).map(|_| rng.gaussian()).collect();
        for f in [
            GgufFormat::Q4_0,
            GgufFormat::Q4_1,
            GgufFormat::Q5_0,
            GgufFormat::Q5_1,
            GgufFormat::Q8_0,
        ] {
            let mut reference = Vec::new();
            gguf::quantize_row(f, &x, &mut reference).unwrap();
            let reference = mse(&x, &decode(BlockFormat::Legacy(f), &reference, x.len()));
            let ours = search_mse(BlockFormat::Legacy(f), &x, Weighting::Uniform);
            eprintln!("{}: search mse {ours}, reference {reference}", f.name());
            assert!(
                ours < reference * 0.95,
                "{}: {ours} vs reference {reference}",
                f.name()
            );
        }
        let k = |f| search_mse(BlockFormat::K(f), &x, Weighting::Uniform);
        let ranked = [
            k(KFormat::Q2K),
            k(KFormat::Q3K),
            k(KFormat::Iq4Xs),
            k(KFormat::Q4K),
            k(KFormat::Q5K),
            k(KFormat::Q6K),
        ];
        for pair in ranked.windows(2) {
            assert!(pair[1] < pair[0], "{ranked:?}");
        }
        // Relative errors near what these widths give on Gaussian data.
        eprintln!(
            "k-quant mse (unit variance): {ranked:?}, iq4_nl {}",
            k(KFormat::Iq4Nl)
        );
    }

    #[test]
    fn refuses_partial_blocks_and_mismatched_importance() {
        let mut s = BlockSearch::default();
        let mut out = vec![7u8];
        let f = BlockFormat::K(KFormat::Q4K);
        assert!(matches!(
            s.quantize_row(f, &[0.0; 100], None, Weighting::Uniform, &mut out),
            Err(KernelError::NotBlockMultiple {
                len: 100,
                block: 256,
                ..
            })
        ));
        assert!(matches!(
            s.quantize_row(
                f,
                &[0.0; 256],
                Some(&[1.0; 10]),
                Weighting::Uniform,
                &mut out
            ),
            Err(KernelError::LengthMismatch { .. })
        ));
        assert_eq!(out, [7]);
    }

    #[test]
    fn zero_and_constant_blocks_are_exact_or_close() {
        for format in ALL {
            let n = format.block_values();
            assert_eq!(
                search_mse(format, &vec![0.0; n], Weighting::SigmaSquare),
                0.0
            );
            let c = search_mse(format, &vec![0.5; n], Weighting::SigmaSquare);
            assert!(c < 1e-5, "{}: constant block mse {c}", format.name());
        }
    }

    /// The AVX2 path writes the portable path's bytes, for every format and weighting, with
    /// and without importance, on rows that include zero, constant and outlier blocks.
    #[test]
    fn avx2_and_portable_paths_write_the_same_bytes() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let mut x: Vec<f32> = (0..256 * 24).map(|_| rng.gaussian() * 0.02).collect();
        x[256..512].fill(0.0);
        x[512..768].fill(0.37);
        for i in (800..6000).step_by(97) {
            x[i] *= 40.0;
        }
        for v in &mut x[4096..4352] {
            *v = v.abs();
        }
        let importance: Vec<f32> = (0..x.len()).map(|_| rng.uniform() * 3.0).collect();
        let (mut a, mut b) = (BlockSearch::default(), BlockSearch::default());
        for format in ALL {
            for weighting in [
                Weighting::Uniform,
                Weighting::SigmaSquare,
                Weighting::Square,
            ] {
                for imp in [None, Some(&importance[..])] {
                    let (mut fast, mut portable) = (Vec::new(), Vec::new());
                    a.quantize_row(format, &x, imp, weighting, &mut fast)
                        .unwrap();
                    b.quantize_row_portable(format, &x, imp, weighting, &mut portable)
                        .unwrap();
                    assert!(
                        fast == portable,
                        "{} {weighting:?} importance {}",
                        format.name(),
                        imp.is_some()
                    );
                }
            }
        }
    }

    /// Blocks go through the search eight at a time, one per lane: a row whose block count
    /// is not a multiple of eight (a padded last group) writes, block for block, what each
    /// block gives alone, on either path.
    #[test]
    fn blocks_encode_alike_whatever_their_lane_and_group() {
        let mut rng = Rng(0xabad_1dea_0000_0001);
        let mut s = BlockSearch::default();
        for format in ALL {
            let n = format.block_values();
            for blocks in [1, 3, 11] {
                let x: Vec<f32> = (0..n * blocks).map(|_| rng.gaussian() * 0.05).collect();
                let mut row = Vec::new();
                s.quantize_row(format, &x, None, Weighting::SigmaSquare, &mut row)
                    .unwrap();
                let mut portable = Vec::new();
                s.quantize_row_portable(format, &x, None, Weighting::SigmaSquare, &mut portable)
                    .unwrap();
                assert!(row == portable, "{} {blocks} blocks", format.name());
                for (b, bytes) in row.chunks_exact(format.block_bytes()).enumerate() {
                    let mut alone = Vec::new();
                    s.quantize_row(
                        format,
                        &x[b * n..][..n],
                        None,
                        Weighting::SigmaSquare,
                        &mut alone,
                    )
                    .unwrap();
                    assert!(bytes == alone, "{} block {b} of {blocks}", format.name());
                }
            }
        }
    }

    #[test]
    fn huge_values_are_refused_with_the_block() {
        let mut s = BlockSearch::default();
        let mut x = vec![1.0f32; 512];
        x[300] = 3.0e38;
        let mut out = Vec::new();
        let err = s
            .quantize_row(
                BlockFormat::K(KFormat::Q6K),
                &x,
                None,
                Weighting::Uniform,
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(err, KernelError::ScaleOverflow { group: 1, .. }),
            "{err:?}"
        );
        assert!(out.is_empty());
        // Blocks of one sub-block go eight to a group: the error still names the block.
        let mut x = vec![1.0f32; 32 * 11];
        x[9 * 32 + 5] = 3.0e38;
        let err = s
            .quantize_row(
                BlockFormat::Legacy(GgufFormat::Q8_0),
                &x,
                None,
                Weighting::Uniform,
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(err, KernelError::ScaleOverflow { group: 9, .. }),
            "{err:?}"
        );
        assert!(out.is_empty());
    }
}
