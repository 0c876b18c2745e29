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
        self.weights.resize(block_len, 0.0);
        let args = RowArgs {
            format,
            row,
            importance,
            weighting,
        };
        let (w, dst) = (&mut self.weights[..block_len], &mut out[start..]);
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

/// The row loop compiled for AVX2: the same code as the portable path, its eight-lane sums
/// vectorised; no fused multiply-add is requested, so the bytes are identical.
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
fn encode_row<P: Passes>(
    p: P,
    args: &RowArgs,
    w: &mut [f32],
    dst: &mut [u8],
) -> Result<(), (usize, f32)> {
    // One copy of the search per layout, its constants folded into the loops.
    macro_rules! with {
        ($($pat:pat => $f:ty),* $(,)?) => {
            match args.format {
                $($pat => encode_row_as::<$f, P>(p, args, w, dst),)*
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
fn encode_row_as<F: Fmt, P: Passes>(
    p: P,
    args: &RowArgs,
    w: &mut [f32],
    dst: &mut [u8],
) -> Result<(), (usize, f32)> {
    let layout = F::LAYOUT;
    let n = layout.sub * layout.subs;
    let bytes = args.format.block_bytes();
    let mut block = Block::default();
    let blocks = args.row.chunks_exact(n).zip(dst.chunks_exact_mut(bytes));
    for (b, (x, dst)) in blocks.enumerate() {
        let importance = args.importance.map(|imp| &imp[b * n..][..n]);
        block_weights(x, importance, args.weighting, w);
        encode_block(p, &layout, x, w, &mut block).map_err(|v| (b, v))?;
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

/// Independent partial sums per weighted sum: a single f32 sum is a serial chain the compiler
/// may not reorder, eight of them vectorise. Sub-blocks (16 or 32 values) are whole lanes.
const LANES: usize = 8;
type Lanes = [f32; LANES];

/// The lanes summed in a fixed order (the same on every path).
#[inline(always)]
fn hsum(v: Lanes) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

#[inline(always)]
fn lanes(s: &[f32]) -> &Lanes {
    s.try_into().expect("a whole lane")
}

/// A sub-block's weighted sums that do not depend on its codes.
#[derive(Default, Clone, Copy)]
struct Moments {
    w: f32,
    wx: f32,
    wxx: f32,
}

/// A sub-block's weighted sums over its codes' levels `l`.
#[derive(Default, Clone, Copy)]
struct CodeSums {
    wl: f32,
    wll: f32,
    wxl: f32,
}

/// What the least-squares fits of a scale (and offset) need.
#[derive(Default, Clone, Copy)]
struct Sums {
    w: f32,
    wl: f32,
    wll: f32,
    wx: f32,
    wxl: f32,
    wxx: f32,
}

impl Sums {
    #[inline(always)]
    fn new(m: &Moments, c: &CodeSums) -> Self {
        Sums {
            w: m.w,
            wl: c.wl,
            wll: c.wll,
            wx: m.wx,
            wxl: c.wxl,
            wxx: m.wxx,
        }
    }

    /// Best scale for `x ≈ s·l` and its error.
    #[inline(always)]
    fn scale_only(&self) -> (f32, f32) {
        if self.wll <= 0.0 {
            return (0.0, self.wxx);
        }
        let s = self.wxl / self.wll;
        (s, (self.wxx - s * self.wxl).max(0.0))
    }

    /// Best `(s, o)` for `x ≈ s·l + o`, with `o ≤ 0` when `nonpositive`, and its error.
    #[inline(always)]
    fn scale_offset(&self, nonpositive: bool) -> (f32, f32, f32) {
        let det = self.wll * self.w - self.wl * self.wl;
        if det > 0.0 {
            let s = (self.w * self.wxl - self.wl * self.wx) / det;
            let o = (self.wll * self.wx - self.wl * self.wxl) / det;
            if !nonpositive || o <= 0.0 {
                return (s, o, self.error(s, o));
            }
        } else if self.w > 0.0 && (!nonpositive || self.wx <= 0.0) {
            // Every code the same: only the offset is determined, the weighted mean.
            let o = self.wx / self.w;
            return (0.0, o, self.error(0.0, o));
        }
        let (s, e) = self.scale_only();
        (s, 0.0, e)
    }

    #[inline(always)]
    fn error(&self, s: f32, o: f32) -> f32 {
        let e = self.wxx - 2.0 * s * self.wxl - 2.0 * o * self.wx
            + s * s * self.wll
            + 2.0 * s * o * self.wl
            + o * o * self.w;
        e.max(0.0)
    }

    /// The least-squares fit for these sums: `(s, o, error)`.
    #[inline(always)]
    fn fit(&self, offset: bool, nonpositive: bool) -> (f32, f32, f32) {
        if offset {
            self.scale_offset(nonpositive)
        } else {
            let (s, e) = self.scale_only();
            (s, 0.0, e)
        }
    }
}

/// The range, largest magnitude and moments of a sub-block.
#[derive(Default, Clone, Copy)]
struct Extent {
    lo: f32,
    hi: f32,
    amax: f32,
    moments: Moments,
}

/// The two passes over a sub-block's values that the search repeats, portable or AVX2.
/// Both do the same f32 operations lane for lane and sum the lanes in the same order
/// ([`hsum`]), so they give the same bits.
trait Passes: Copy {
    fn extent(self, x: &[f32], w: &[f32]) -> Extent;

    /// One pass for `x ≈ s·level + o` (`o` ignored unless `OFFSET`; levels on the IQ4 grid
    /// when `ON_GRID`, else the integers `lo..=hi`): the codes' sums and, when `FULL`, the
    /// codes into `q` and the weighted squared error of the values as the decoder computes
    /// them (`s·level + o`).
    #[allow(clippy::too_many_arguments)]
    fn pass<const ON_GRID: bool, const OFFSET: bool, const FULL: bool>(
        self,
        lo: f32,
        hi: f32,
        x: &[f32],
        w: &[f32],
        s: f32,
        o: f32,
        q: &mut [i32],
    ) -> (CodeSums, f32);
}

/// [`Passes::pass`] for `layout` (the constant parameters folded per layout).
#[inline(always)]
fn pass<P: Passes, const FULL: bool>(
    p: P,
    layout: &Layout,
    x: &[f32],
    w: &[f32],
    s: f32,
    o: f32,
    q: &mut [i32],
) -> (CodeSums, f32) {
    let offset = !matches!(layout.mins, Mins::None);
    match (layout.codes, offset) {
        (Codes::Linear { lo, hi }, false) => {
            p.pass::<false, false, FULL>(lo as f32, hi as f32, x, w, s, o, q)
        }
        (Codes::Linear { lo, hi }, true) => {
            p.pass::<false, true, FULL>(lo as f32, hi as f32, x, w, s, o, q)
        }
        (Codes::Grid, false) => p.pass::<true, false, FULL>(0.0, 0.0, x, w, s, o, q),
        (Codes::Grid, true) => p.pass::<true, true, FULL>(0.0, 0.0, x, w, s, o, q),
    }
}

/// The reference passes: plain Rust over eight lanes.
#[derive(Clone, Copy)]
struct Portable;

impl Passes for Portable {
    #[inline(always)]
    fn extent(self, x: &[f32], w: &[f32]) -> Extent {
        let (mut lo, mut hi, mut amax) = ([f32::MAX; LANES], [f32::MIN; LANES], [0.0f32; LANES]);
        let (mut sw, mut swx, mut swxx) = ([0.0f32; LANES], [0.0; LANES], [0.0; LANES]);
        for (x, w) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
            let (x, w) = (lanes(x), lanes(w));
            for k in 0..LANES {
                // As minps / maxps.
                lo[k] = if x[k] < lo[k] { x[k] } else { lo[k] };
                hi[k] = if x[k] > hi[k] { x[k] } else { hi[k] };
                let a = x[k].abs();
                amax[k] = if a > amax[k] { a } else { amax[k] };
                sw[k] += w[k];
                let wx = w[k] * x[k];
                swx[k] += wx;
                swxx[k] += wx * x[k];
            }
        }
        Extent {
            lo: lo.iter().fold(f32::MAX, |a, &b| a.min(b)),
            hi: hi.iter().fold(f32::MIN, |a, &b| a.max(b)),
            amax: amax.iter().fold(0.0f32, |a, &b| a.max(b)),
            moments: Moments {
                w: hsum(sw),
                wx: hsum(swx),
                wxx: hsum(swxx),
            },
        }
    }

    #[inline(always)]
    fn pass<const ON_GRID: bool, const OFFSET: bool, const FULL: bool>(
        self,
        lo: f32,
        hi: f32,
        x: &[f32],
        w: &[f32],
        s: f32,
        o: f32,
        q: &mut [i32],
    ) -> (CodeSums, f32) {
        let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
        let (mut wl, mut wll, mut wxl) = ([0.0f32; LANES], [0.0; LANES], [0.0; LANES]);
        let mut err = [0.0f32; LANES];
        for (i, (x, w)) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)).enumerate() {
            let (x, w) = (lanes(x), lanes(w));
            for k in 0..LANES {
                let t = if OFFSET { (x[k] - o) * inv } else { x[k] * inv };
                let (code, l) = if ON_GRID {
                    let n = GRID_MIDPOINTS.iter().filter(|&&m| t > m).count();
                    (n as i32, GRID[n])
                } else {
                    // As maxps then minps.
                    let c = if t > lo { t } else { lo };
                    let c = if c < hi { c } else { hi };
                    let r = c + MAGIC;
                    // The integer sits in the low bits of `r`'s mantissa.
                    (r.to_bits() as i32 - MAGIC.to_bits() as i32, r - MAGIC)
                };
                let a = w[k] * l;
                wl[k] += a;
                wll[k] += a * l;
                wxl[k] += w[k] * x[k] * l;
                if FULL {
                    q[i * LANES + k] = code;
                    let e = if OFFSET {
                        s * l + o - x[k]
                    } else {
                        s * l - x[k]
                    };
                    err[k] += w[k] * e * e;
                }
            }
        }
        let sums = CodeSums {
            wl: hsum(wl),
            wll: hsum(wll),
            wxl: hsum(wxl),
        };
        (sums, hsum(err))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! [`Portable`](super::Portable)'s passes with AVX2 intrinsics: the same operations,
    //! eight lanes at a time (no fused multiply-add).

    use std::arch::x86_64::*;

    use super::{CodeSums, Extent, GRID, GRID_MIDPOINTS, LANES, MAGIC, Moments, Passes};
    use crate::kernels::cpu::Avx2;

    impl Passes for Avx2 {
        #[inline(always)]
        fn extent(self, x: &[f32], w: &[f32]) -> Extent {
            // SAFETY: `self` is the token `Avx2::detect` makes only where AVX2 is present.
            unsafe { extent(x, w) }
        }

        #[inline(always)]
        fn pass<const ON_GRID: bool, const OFFSET: bool, const FULL: bool>(
            self,
            lo: f32,
            hi: f32,
            x: &[f32],
            w: &[f32],
            s: f32,
            o: f32,
            q: &mut [i32],
        ) -> (CodeSums, f32) {
            // SAFETY: `self` is the token `Avx2::detect` makes only where AVX2 is present.
            unsafe { pass::<ON_GRID, OFFSET, FULL>(lo, hi, x, w, s, o, q) }
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn load(x: &[f32]) -> __m256 {
        let x: &[f32; LANES] = x.try_into().expect("a whole lane");
        // SAFETY: `x` holds 8 f32; an unaligned load has no alignment requirement.
        unsafe { _mm256_loadu_ps(x.as_ptr()) }
    }

    /// The lanes' sum in [`hsum`](super::hsum)'s order: ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7)).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
    }

    /// Lanes folded with `op` (a minimum or maximum, where the order does not matter).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn fold(v: __m256, op: impl Fn(f32, f32) -> f32, init: f32) -> f32 {
        let mut out = [0.0f32; LANES];
        // SAFETY: `out` holds 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out.iter().fold(init, |a, &b| op(a, b))
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn extent(x: &[f32], w: &[f32]) -> Extent {
        let (mut lo, mut hi) = (_mm256_set1_ps(f32::MAX), _mm256_set1_ps(f32::MIN));
        let mut amax = _mm256_setzero_ps();
        let (mut sw, mut swx, mut swxx) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let sign = _mm256_set1_ps(-0.0);
        for (x, w) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
            let (x, w) = (load(x), load(w));
            // minps(a, b) is `if a < b { a } else { b }`, maxps likewise.
            lo = _mm256_min_ps(x, lo);
            hi = _mm256_max_ps(x, hi);
            amax = _mm256_max_ps(_mm256_andnot_ps(sign, x), amax);
            sw = _mm256_add_ps(sw, w);
            let wx = _mm256_mul_ps(w, x);
            swx = _mm256_add_ps(swx, wx);
            swxx = _mm256_add_ps(swxx, _mm256_mul_ps(wx, x));
        }
        Extent {
            lo: fold(lo, f32::min, f32::MAX),
            hi: fold(hi, f32::max, f32::MIN),
            amax: fold(amax, f32::max, 0.0),
            moments: Moments {
                w: hsum(sw),
                wx: hsum(swx),
                wxx: hsum(swxx),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    #[inline]
    fn pass<const ON_GRID: bool, const OFFSET: bool, const FULL: bool>(
        lo: f32,
        hi: f32,
        x: &[f32],
        w: &[f32],
        s: f32,
        o: f32,
        q: &mut [i32],
    ) -> (CodeSums, f32) {
        let inv = _mm256_set1_ps(if s != 0.0 { 1.0 / s } else { 0.0 });
        let (vs, vo) = (_mm256_set1_ps(s), _mm256_set1_ps(o));
        let (vlo, vhi, magic) = (
            _mm256_set1_ps(lo),
            _mm256_set1_ps(hi),
            _mm256_set1_ps(MAGIC),
        );
        let magic_bits = _mm256_set1_epi32(MAGIC.to_bits() as i32);
        let grid_lo = _mm256_setr_ps(
            GRID[0], GRID[1], GRID[2], GRID[3], GRID[4], GRID[5], GRID[6], GRID[7],
        );
        let grid_hi = _mm256_setr_ps(
            GRID[8], GRID[9], GRID[10], GRID[11], GRID[12], GRID[13], GRID[14], GRID[15],
        );
        let seven = _mm256_set1_epi32(7);
        let (mut wl, mut wll, mut wxl) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let mut err = _mm256_setzero_ps();
        for (i, (x, w)) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)).enumerate() {
            let (x, w) = (load(x), load(w));
            let t = if OFFSET {
                _mm256_mul_ps(_mm256_sub_ps(x, vo), inv)
            } else {
                _mm256_mul_ps(x, inv)
            };
            let (code, l) = if ON_GRID {
                // The number of midpoints below t (each true comparison is −1), then its
                // level from the two halves of the grid.
                let mut n = _mm256_setzero_si256();
                for m in GRID_MIDPOINTS {
                    let above = _mm256_cmp_ps::<_CMP_GT_OQ>(t, _mm256_set1_ps(m));
                    n = _mm256_sub_epi32(n, _mm256_castps_si256(above));
                }
                let low = _mm256_permutevar8x32_ps(grid_lo, n);
                let high = _mm256_permutevar8x32_ps(grid_hi, n);
                let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(n, seven));
                (n, _mm256_blendv_ps(low, high, upper))
            } else {
                let c = _mm256_min_ps(_mm256_max_ps(t, vlo), vhi);
                let r = _mm256_add_ps(c, magic);
                let code = _mm256_sub_epi32(_mm256_castps_si256(r), magic_bits);
                (code, _mm256_sub_ps(r, magic))
            };
            let a = _mm256_mul_ps(w, l);
            wl = _mm256_add_ps(wl, a);
            wll = _mm256_add_ps(wll, _mm256_mul_ps(a, l));
            wxl = _mm256_add_ps(wxl, _mm256_mul_ps(_mm256_mul_ps(w, x), l));
            if FULL {
                let q: &mut [i32; LANES] = (&mut q[i * LANES..][..LANES])
                    .try_into()
                    .expect("a whole lane");
                // SAFETY: `q` holds 8 i32; an unaligned store has no alignment requirement.
                unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), code) };
                let y = _mm256_mul_ps(vs, l);
                let e = if OFFSET {
                    _mm256_sub_ps(_mm256_add_ps(y, vo), x)
                } else {
                    _mm256_sub_ps(y, x)
                };
                err = _mm256_add_ps(err, _mm256_mul_ps(_mm256_mul_ps(w, e), e));
            }
        }
        let sums = CodeSums {
            wl: hsum(wl),
            wll: hsum(wll),
            wxl: hsum(wxl),
        };
        (sums, hsum(err))
    }
}

/// Stage 1: the best continuous scale and offset of one sub-block, the weight of its scale
/// (Σ w·l², how fast its error grows with the scale's error) for stage 2, and its moments.
#[derive(Default, Clone, Copy)]
struct SubFit {
    s: f32,
    o: f32,
    scale_weight: f32,
    moments: Moments,
}

#[inline(always)]
fn fit_sub<P: Passes>(p: P, layout: &Layout, x: &[f32], w: &[f32]) -> SubFit {
    let codes = layout.codes;
    let offset = !matches!(layout.mins, Mins::None);
    let nonpositive = matches!(layout.mins, Mins::Int { .. });
    let Extent {
        lo: mut lo_x,
        hi: hi_x,
        amax,
        moments,
    } = p.extent(x, w);
    if amax == 0.0 {
        return SubFit {
            moments,
            ..SubFit::default()
        };
    }
    // The first value of largest magnitude (its sign orients the signed grids).
    let xm = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
    // Candidate (scale, offset) pairs that map the block's range onto the codes' range.
    let mut candidates = [(0.0f32, 0.0f32); 10];
    let count;
    match codes {
        Codes::Linear { lo, hi } if offset => {
            if nonpositive && lo_x > 0.0 {
                lo_x = 0.0;
            }
            let span = hi_x - lo_x;
            let n = (hi - lo) as f32;
            for (c, delta) in candidates.iter_mut().zip([0.0, -0.5, 0.5, -1.0, 1.0, 0.25]) {
                *c = (span / (n + delta), lo_x);
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
                *c = (xm / t, 0.0);
            }
            count = 6;
        }
        Codes::Grid => {
            // The grid is asymmetric (−127 … 113): the largest magnitude at or near its long
            // end (measured: the short end's candidates lower the error but not the outputs').
            for (c, t) in candidates.iter_mut().zip(GRID_TARGETS) {
                *c = (xm / t, 0.0);
            }
            count = GRID_TARGETS.len();
        }
    }
    // Codes of the candidates are not kept: only their sums.
    let mut scratch = [0i32; 32];
    let scratch = &mut scratch[..x.len()];
    let mut best = (f32::MAX, 0.0f32, 0.0f32, 0.0f32);
    for &(s, o) in &candidates[..count] {
        let (c, _) = pass::<P, false>(p, layout, x, w, s, o, scratch);
        let (s, o, e) = Sums::new(&moments, &c).fit(offset, nonpositive);
        if e < best.0 {
            best = (e, s, o, c.wll);
        }
    }
    // Lloyd steps from the best: re-code for the fitted scale, re-fit for the codes.
    for _ in 0..2 {
        let (c, _) = pass::<P, false>(p, layout, x, w, best.1, best.2, scratch);
        let (s, o, e) = Sums::new(&moments, &c).fit(offset, nonpositive);
        if e < best.0 {
            best = (e, s, o, c.wll);
        } else {
            break;
        }
    }
    SubFit {
        s: best.1,
        o: best.2,
        scale_weight: best.3,
        moments,
    }
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

/// Encodes one block; `Err` carries a scale or minimum the block needs that f16 cannot hold
/// (beyond ±65504), as llama.cpp's reference would need it too: the block is refused rather
/// than stored with its values clipped.
#[inline(always)]
fn encode_block<P: Passes>(
    p: P,
    layout: &Layout,
    x: &[f32],
    w: &[f32],
    block: &mut Block,
) -> Result<(), f32> {
    let (sub, subs) = (layout.sub, layout.subs);
    let mut fits = [SubFit::default(); MAX_SUBS];
    for j in 0..subs {
        let r = j * sub..(j + 1) * sub;
        fits[j] = fit_sub(p, layout, &x[r.clone()], &w[r]);
    }
    match layout.scales {
        Scales::Half => encode_single(p, layout, x, w, &fits[0], block),
        Scales::Int { lo, hi } => encode_super(p, layout, x, w, &fits[..subs], (lo, hi), block),
    }
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

/// A block that is one sub-block (the legacy formats, iq4_nl): `d` (and `m`) are f16 of their
/// own; Lloyd steps with the rounded values.
#[inline(always)]
fn encode_single<P: Passes>(
    p: P,
    layout: &Layout,
    x: &[f32],
    w: &[f32],
    fit: &SubFit,
    block: &mut Block,
) -> Result<(), f32> {
    within_f16(&[fit.s, fit.o])?;
    let offset = matches!(layout.mins, Mins::Half);
    let q = &mut block.q[..x.len()];
    let mut d = f16::from_f32(fit.s);
    let mut m = f16::from_f32(fit.o);
    let (mut sums, mut best) = pass::<P, true>(p, layout, x, w, d.to_f32(), m.to_f32(), q);
    let mut trial = [0i32; 32];
    let trial = &mut trial[..x.len()];
    for _ in 0..2 {
        // `sums` are those of the codes for the current (d, m).
        let (s, o, _) = Sums::new(&fit.moments, &sums).fit(offset, false);
        let (d2, m2) = (f16::from_f32(s), f16::from_f32(o));
        if !(d2.is_finite() && m2.is_finite()) {
            break;
        }
        let (sums2, e) = pass::<P, true>(p, layout, x, w, d2.to_f32(), m2.to_f32(), trial);
        if e < best {
            best = e;
            d = d2;
            m = m2;
            sums = sums2;
            q.copy_from_slice(trial);
        } else {
            break;
        }
    }
    block.d = d;
    block.dmin = if offset { m } else { f16::ZERO };
    Ok(())
}

/// A super-block: integer sub-scales (and minima) under f16 `d` (and `dmin`).
#[inline(always)]
fn encode_super<P: Passes>(
    p: P,
    layout: &Layout,
    x: &[f32],
    w: &[f32],
    fits: &[SubFit],
    (lo, hi): (i32, i32),
    block: &mut Block,
) -> Result<(), f32> {
    let subs = layout.subs;
    let min_hi = match layout.mins {
        Mins::Int { hi } => Some(hi),
        _ => None,
    };
    let mut v = [0.0f32; MAX_SUBS];
    let mut vw = [0.0f32; MAX_SUBS];
    for j in 0..subs {
        v[j] = fits[j].s;
        vw[j] = fits[j].scale_weight;
    }
    let d = fit_steps(&v[..subs], &vw[..subs], lo, hi, &mut block.sc[..subs]);
    let mut dmin = 0.0;
    if let Some(mhi) = min_hi {
        for j in 0..subs {
            v[j] = -fits[j].o;
            vw[j] = fits[j].moments.w;
        }
        dmin = fit_steps(&v[..subs], &vw[..subs], 0, mhi, &mut block.m[..subs]);
    }
    within_f16(&[d, dmin])?;
    // Stored as f16: the integers re-rounded for the rounded steps.
    let d16 = f16::from_f32(d);
    let dmin16 = f16::from_f32(dmin);
    rescale(
        &fits[..subs],
        d16.to_f32(),
        lo,
        hi,
        |f| f.s,
        &mut block.sc[..subs],
    );
    if let Some(mhi) = min_hi {
        rescale(
            &fits[..subs],
            dmin16.to_f32(),
            0,
            mhi,
            |f| -f.o,
            &mut block.m[..subs],
        );
    }
    let mut errors = [0.0f32; MAX_SUBS];
    let mut sums = [CodeSums::default(); MAX_SUBS];
    let (df, dminf) = (d16.to_f32(), dmin16.to_f32());
    code_all(p, layout, x, w, df, dminf, block, &mut errors, &mut sums);
    refine_steps(
        p,
        layout,
        x,
        w,
        df,
        dminf,
        (lo, hi, min_hi),
        block,
        &mut errors,
        &mut sums,
    );
    // A joint least-squares refit of d and dmin for the integer products, kept if it helps.
    block.d = d16;
    block.dmin = dmin16;
    let (d_new, dmin_new) = refit_super(layout, fits, block, &sums);
    let (d2, dmin2) = (f16::from_f32(d_new), f16::from_f32(dmin_new));
    let before: f32 = errors[..subs].iter().sum();
    if d2.is_finite() && dmin2.is_finite() {
        let mut trial = Block {
            d: d2,
            dmin: dmin2,
            sc: block.sc,
            m: block.m,
            q: [0; MAX_BLOCK],
        };
        let after = code_all(
            p,
            layout,
            x,
            w,
            d2.to_f32(),
            dmin2.to_f32(),
            &mut trial,
            &mut errors,
            &mut sums,
        );
        if after < before {
            *block = trial;
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

/// Codes every sub-block for the stored scales; returns the total error, per sub-block in
/// `errors`, the codes' sums in `sums`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn code_all<P: Passes>(
    p: P,
    layout: &Layout,
    x: &[f32],
    w: &[f32],
    d: f32,
    dmin: f32,
    block: &mut Block,
    errors: &mut [f32; MAX_SUBS],
    sums: &mut [CodeSums; MAX_SUBS],
) -> f32 {
    let has_min = matches!(layout.mins, Mins::Int { .. });
    let mut total = 0.0;
    for j in 0..layout.subs {
        let r = j * layout.sub..(j + 1) * layout.sub;
        let (s, o) = sub_params(d, dmin, block.sc[j], block.m[j], has_min);
        let q = &mut block.q[r.clone()];
        (sums[j], errors[j]) = pass::<P, true>(p, layout, &x[r.clone()], &w[r], s, o, q);
        total += errors[j];
    }
    total
}

/// Coordinate refinement: each sub-block's integer scale (and minimum) moved one step either
/// way where that lowers the sub-block's error (its codes re-chosen for the new step).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn refine_steps<P: Passes>(
    p: P,
    layout: &Layout,
    x: &[f32],
    w: &[f32],
    d: f32,
    dmin: f32,
    (lo, hi, min_hi): (i32, i32, Option<i32>),
    block: &mut Block,
    errors: &mut [f32; MAX_SUBS],
    sums: &mut [CodeSums; MAX_SUBS],
) {
    let mut q = [0i32; 32];
    for j in 0..layout.subs {
        let r = j * layout.sub..(j + 1) * layout.sub;
        let (xs, ws) = (&x[r.clone()], &w[r.clone()]);
        let q = &mut q[..layout.sub];
        let moves: &[(i32, i32)] = if min_hi.is_some() {
            &[(-1, 0), (1, 0), (0, -1), (0, 1)]
        } else {
            &[(-1, 0), (1, 0)]
        };
        for &(ds, dm) in moves {
            let sc = block.sc[j] + ds;
            let m = block.m[j] + dm;
            if sc < lo || sc > hi || m < 0 || min_hi.is_some_and(|h| m > h) {
                continue;
            }
            let (s, o) = sub_params(d, dmin, sc, m, min_hi.is_some());
            let (c, e) = pass::<P, true>(p, layout, xs, ws, s, o, q);
            if e < errors[j] {
                errors[j] = e;
                sums[j] = c;
                block.sc[j] = sc;
                block.m[j] = m;
                block.q[r.clone()].copy_from_slice(q);
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
    sums: &[CodeSums; MAX_SUBS],
) -> (f32, f32) {
    let has_min = matches!(layout.mins, Mins::Int { .. });
    // Sums for a = sc·level, b = −m.
    let (mut aa, mut ab, mut bb, mut ax, mut bx) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for j in 0..layout.subs {
        let (c, mo) = (&sums[j], &fits[j].moments);
        let sc = block.sc[j] as f32;
        let b = -(block.m[j] as f32);
        aa += sc * sc * c.wll;
        ab += sc * b * c.wl;
        bb += b * b * mo.w;
        ax += sc * c.wxl;
        bx += b * mo.wx;
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
    }
}
