//! Kernel tests: GGUF bit-exactness against the `gguf` package, the quality targets on seeded
//! Gaussian rows, and properties of the affine schemes.

use arrowquant_udfs::kernels::affine::{self, AffineOutput};
use arrowquant_udfs::kernels::block_format::Encoder;
use arrowquant_udfs::kernels::gguf::{self, GgufFormat};
use arrowquant_udfs::kernels::metrics::PairSums;
use arrowquant_udfs::kernels::quantized::{QuantizedRef, QuantizedRow, Quantizer};
use arrowquant_udfs::kernels::scheme::GroupSize;
use arrowquant_udfs::kernels::{KernelError, QuantSpec, Scheme};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf");
const ROW: usize = 256;

fn gaussian_rows(rows: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    (0..rows)
        .map(|_| (0..len).map(|_| normal.sample(&mut rng)).collect())
        .collect()
}

fn roundtrip(x: &[f32], spec: &QuantSpec) -> Vec<f32> {
    let mut quantizer = Quantizer::default();
    let mut q = QuantizedRow::default();
    quantizer.quantize(x, spec, &mut q).unwrap();
    let view = q.view(spec, x.len());
    let mut out = Vec::new();
    quantizer.dequantize(&view, &mut out).unwrap();
    out
}

fn spec(bits: i64, group: Option<usize>, scheme: Scheme) -> QuantSpec {
    QuantSpec::new(bits, group.map(GroupSize::Fixed), scheme).unwrap()
}

fn read_f32(path: &str) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn gguf_blocks_match_the_reference_bit_for_bit() {
    let input = read_f32(&format!("{DATA}/input.f32"));
    let formats = [
        GgufFormat::Q4_0,
        GgufFormat::Q4_1,
        GgufFormat::Q5_0,
        GgufFormat::Q5_1,
        GgufFormat::Q8_0,
    ];
    for format in formats {
        let expected = std::fs::read(format!("{DATA}/{}.bin", format.name())).unwrap();
        let row_bytes = format.row_bytes(ROW).unwrap();
        assert_eq!(expected.len(), input.len() / ROW * row_bytes);
        for (r, (x, want)) in input
            .chunks(ROW)
            .zip(expected.chunks(row_bytes))
            .enumerate()
        {
            let mut got = Vec::new();
            gguf::quantize_row(format, x, &mut got).unwrap();
            assert_eq!(
                got,
                want,
                "{} row {r} differs from gguf.quants",
                format.name()
            );
            // And decoding gives values within half a step of the input, block by block.
            let mut back = Vec::new();
            gguf::dequantize_row(format, &got, ROW, &mut back).unwrap();
            assert_eq!(back.len(), ROW);
        }
    }
}

#[test]
fn gguf_refuses_partial_blocks_and_short_bytes() {
    let mut out = Vec::new();
    assert!(matches!(
        gguf::quantize_row(GgufFormat::Q4_0, &[0.0; 33], &mut out),
        Err(KernelError::NotBlockMultiple { len: 33, .. })
    ));
    assert!(matches!(
        gguf::dequantize_row(GgufFormat::Q8_0, &[0u8; 33], 32, &mut Vec::new()),
        Err(KernelError::Corrupt(_))
    ));
}

fn mean_row_metrics(rows: &[Vec<f32>], spec: &QuantSpec) -> (f64, f64) {
    let mut min_cos = f64::INFINITY;
    let mut mse = 0.0;
    for x in rows {
        let s = PairSums::of(x, &roundtrip(x, spec)).unwrap();
        min_cos = min_cos.min(s.cosine().unwrap());
        mse += s.mse().unwrap();
    }
    (min_cos, mse / rows.len() as f64)
}

#[test]
fn quality_targets_on_gaussian_rows() {
    let rows = gaussian_rows(16, 4096, 7);
    let (cos8, _) = mean_row_metrics(&rows, &spec(8, None, Scheme::Asym));
    let (cos8_g16, _) = mean_row_metrics(&rows, &spec(8, Some(16), Scheme::Asym));
    let (cos_q8_0, _) = mean_row_metrics(&rows, &spec(8, None, Scheme::Q8_0));
    let (cos4, mse4_g64) = mean_row_metrics(&rows, &spec(4, Some(64), Scheme::Asym));
    let (cos2, _) = mean_row_metrics(&rows, &spec(2, Some(32), Scheme::Asym));
    println!(
        "min row cosine: int8 g64 {cos8:.7}, int8 g16 {cos8_g16:.7}, q8_0 {cos_q8_0:.7}, int4 g64 {cos4:.5}, int2 g32 {cos2:.4}"
    );
    // At 8 bits the error is rounding noise alone, Δ²/12 with Δ = range / 255: a group of 64
    // Gaussian values spans about 4.7σ, so 1 − cosine ≈ 1.4e-5 for any uniform 8-bit grid
    // (q8_0 gets 1.25e-5 at 8.5 bits a weight). 0.99999 needs groups of 16 (10 bits a weight).
    assert!(cos8 >= 0.99998, "int8 g64 cosine {cos8}");
    assert!(cos8_g16 >= 0.99999, "int8 g16 cosine {cos8_g16}");
    assert!(cos4 >= 0.995, "int4 g64 cosine {cos4}");
    assert!(cos2 >= 0.93, "int2 g32 cosine {cos2}");

    // Against llama.cpp's own q4_0 and q4_1 (the reference encoder, bit for bit).
    let reference = |bits, scheme| {
        spec(bits, None, scheme)
            .with_encoder(Encoder::Reference)
            .unwrap()
    };
    let (_, mse_q4_0) = mean_row_metrics(&rows, &reference(4, Scheme::Q4_0));
    let (_, mse4_g32) = mean_row_metrics(&rows, &spec(4, Some(32), Scheme::Asym));
    let (_, mse_q4_1) = mean_row_metrics(&rows, &reference(4, Scheme::Q4_1));
    println!(
        "MSE: int4 g64 {mse4_g64:.6} vs q4_0 {mse_q4_0:.6} ({:+.1} %); int4 g32 {mse4_g32:.6} vs q4_1 {mse_q4_1:.6} ({:+.1} %)",
        100.0 * (mse4_g64 / mse_q4_0 - 1.0),
        100.0 * (mse4_g32 / mse_q4_1 - 1.0)
    );
    assert!(
        mse4_g64 < mse_q4_0,
        "int4 g64 must beat q4_0 at 4.5 bits a weight"
    );
    assert!(
        mse4_g32 < mse_q4_1,
        "int4 g32 must beat q4_1 at 5.0 bits a weight"
    );
}

#[test]
fn search_beats_plain_min_max() {
    let rows = gaussian_rows(8, 1024, 11);
    for (bits, group) in [(2, 32), (4, 64), (8, 128)] {
        let (_, searched) = mean_row_metrics(&rows, &spec(bits, Some(group), Scheme::Asym));
        let (_, plain) = mean_row_metrics(&rows, &spec(bits, Some(group), Scheme::AsymMinMax));
        assert!(searched < plain, "{bits} bits: {searched} vs {plain}");
        let (_, sym) = mean_row_metrics(&rows, &spec(bits, Some(group), Scheme::Sym));
        let (_, sym_plain) = mean_row_metrics(&rows, &spec(bits, Some(group), Scheme::SymMinMax));
        assert!(sym < sym_plain, "sym {bits} bits: {sym} vs {sym_plain}");
    }
}

#[test]
fn whole_row_groups_and_ragged_tails() {
    let x = &gaussian_rows(1, 1000, 3)[0];
    let row = QuantSpec::new(4, Some(GroupSize::Row), Scheme::Asym).unwrap();
    let back = roundtrip(x, &row);
    assert!(PairSums::of(x, &back).unwrap().cosine().unwrap() > 0.98);
    // 1000 = 15 groups of 64 and a tail of 40.
    let mut out = AffineOutput::default();
    affine::quantize_row(x, 4, 64, Scheme::Asym, &mut out).unwrap();
    assert_eq!(out.scales.len(), 16);
    assert_eq!(out.offsets.len(), 16);
}

#[test]
fn constant_zero_and_tiny_groups() {
    for value in [0.0f32, 1.5, -3.25, 1e-9] {
        let x = vec![value; 64];
        for scheme in [
            Scheme::Asym,
            Scheme::Sym,
            Scheme::AsymMinMax,
            Scheme::SymMinMax,
        ] {
            let back = roundtrip(&x, &spec(4, Some(64), scheme));
            for &b in &back {
                assert!(
                    (b - value).abs() <= value.abs() * 1e-3 + 1e-7,
                    "{scheme:?} {value}: {b}"
                );
            }
        }
    }
}

#[test]
fn scales_beyond_f16_are_an_error() {
    let mut x = vec![0.0f32; 64];
    x[3] = 3.0e6;
    let mut q = Quantizer::default();
    let err = q
        .quantize(
            &x,
            &spec(4, Some(64), Scheme::Asym),
            &mut QuantizedRow::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, KernelError::ScaleOverflow { group: 0, .. }),
        "{err}"
    );
}

#[test]
fn non_finite_values_are_refused_with_their_index() {
    let mut x = vec![0.5f32; 100];
    x[42] = f32::NAN;
    let err = Quantizer::default()
        .quantize(
            &x,
            &spec(4, None, Scheme::Asym),
            &mut QuantizedRow::default(),
        )
        .unwrap_err();
    assert!(matches!(err, KernelError::NonFinite { index: 42, .. }));
    // In a later group, for every affine scheme: the index is the row's, not the group's.
    x[42] = 0.5;
    x[70] = f32::INFINITY;
    for scheme in [
        Scheme::Asym,
        Scheme::Sym,
        Scheme::AsymMinMax,
        Scheme::SymMinMax,
    ] {
        let err = Quantizer::default()
            .quantize(&x, &spec(4, Some(32), scheme), &mut QuantizedRow::default())
            .unwrap_err();
        assert!(
            matches!(err, KernelError::NonFinite { index: 70, .. }),
            "{scheme:?}: {err}"
        );
    }
    x[70] = f32::NAN;
    let err = Quantizer::default()
        .quantize(
            &x,
            &spec(2, Some(16), Scheme::Asym),
            &mut QuantizedRow::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, KernelError::NonFinite { index: 70, .. }),
        "{err}"
    );
    x[42] = f32::NEG_INFINITY;
    assert!(
        Quantizer::default()
            .quantize(
                &x,
                &spec(8, None, Scheme::Q8_0),
                &mut QuantizedRow::default()
            )
            .is_err()
    );
}

#[test]
fn corrupted_rows_are_errors_not_panics() {
    let x = &gaussian_rows(1, 128, 5)[0];
    let s = spec(4, Some(64), Scheme::Asym);
    let mut quantizer = Quantizer::default();
    let mut q = QuantizedRow::default();
    quantizer.quantize(x, &s, &mut q).unwrap();
    let good = QuantizedRef {
        codes: &q.codes,
        scales: &q.scales,
        offsets: &q.offsets,
        bits: 4,
        group_size: 64,
        len: 128,
        scheme: Scheme::Asym,
    };
    let mut out = Vec::new();
    assert!(quantizer.dequantize(&good, &mut out).is_ok());
    let bad = [
        QuantizedRef {
            codes: &q.codes[..10],
            ..good
        },
        QuantizedRef {
            scales: &q.scales[..1],
            ..good
        },
        QuantizedRef {
            offsets: &[],
            ..good
        },
        QuantizedRef { len: 1000, ..good },
        QuantizedRef {
            group_size: 0,
            ..good
        },
        QuantizedRef { bits: 7, ..good },
        QuantizedRef { bits: 0, ..good },
        QuantizedRef {
            scheme: Scheme::Q4_0,
            ..good
        },
    ];
    for b in bad {
        assert!(quantizer.dequantize(&b, &mut out).is_err(), "{b:?}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_path_is_bit_identical_to_the_portable_path() {
    for (i, x) in gaussian_rows(4, 4096, 99).iter().enumerate() {
        for (bits, group, scheme) in [
            (4, 64, Scheme::Asym),
            (2, 32, Scheme::Asym),
            (8, 4096, Scheme::Asym),
            (3, 128, Scheme::Sym),
            (4, 16, Scheme::AsymMinMax),
        ] {
            let (mut a, mut b) = (AffineOutput::default(), AffineOutput::default());
            affine::quantize_row(x, bits, group, scheme, &mut a).unwrap();
            affine::quantize_row_portable(x, bits, group, scheme, &mut b).unwrap();
            assert_eq!(a.codes, b.codes, "row {i} {bits} bits {scheme:?}");
            assert_eq!(a.scales, b.scales);
            assert_eq!(a.offsets, b.offsets);
        }
    }
}

/// A row of Gaussian groups with awkward ones planted: constant groups, groups narrower than
/// f16's resolution, groups of one repeated value and a few outliers (where the clipping
/// search has little to choose from), huge values (a scale beyond f16), NaN and infinity.
#[cfg(target_arch = "x86_64")]
fn row_with_planted_groups(len: usize, group: usize, seed: u64, kinds: &[u8]) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let mut x: Vec<f32> = (0..len).map(|_| normal.sample(&mut rng)).collect();
    for (g, xs) in x.chunks_mut(group).enumerate() {
        let kind = kinds.get(g).copied().unwrap_or(0);
        let at = (g * 7) % xs.len();
        match kind {
            1 => xs.fill(0.0),
            2 => xs.fill(-3.25),
            3 => xs.iter_mut().for_each(|v| *v = 1.0 + *v * 1e-9),
            4 => {
                xs.fill(0.5);
                xs[at] = 2.0;
            }
            5 => xs[at] = 1.0e6,
            6 => xs.iter_mut().for_each(|v| *v *= 1.0e-6),
            7 => xs[at] = f32::NAN,
            8 => xs[at] = f32::NEG_INFINITY,
            9 => xs.iter_mut().for_each(|v| *v += 70_000.0),
            _ => {}
        }
    }
    x
}

#[cfg(target_arch = "x86_64")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The eight-groups-at-once AVX2 path agrees with the portable path bit for bit, errors
    /// included, whatever the groups hold and wherever a batch falls back.
    #[test]
    fn batched_groups_are_bit_identical_to_the_portable_path(
        bits in 2u8..=8,
        group in prop::sample::select(vec![8usize, 16, 24, 32, 64, 128, 256, 40]),
        scheme in prop::sample::select(vec![Scheme::Asym, Scheme::AsymMinMax]),
        groups in 1usize..40,
        ragged in 0usize..8,
        seed in any::<u64>(),
        kinds in prop::collection::vec(
            prop::sample::select(vec![0u8, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            0..40,
        ),
    ) {
        let len = (groups * group).saturating_sub(ragged).max(1);
        let x = row_with_planted_groups(len, group, seed, &kinds);
        let (mut a, mut b) = (AffineOutput::default(), AffineOutput::default());
        let fast = affine::quantize_row(&x, bits, group, scheme, &mut a);
        let portable = affine::quantize_row_portable(&x, bits, group, scheme, &mut b);
        prop_assert_eq!(format!("{fast:?}"), format!("{portable:?}"));
        if fast.is_ok() {
            prop_assert_eq!(&a.codes, &b.codes);
            prop_assert_eq!(
                a.scales.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                b.scales.iter().map(|h| h.to_bits()).collect::<Vec<_>>()
            );
            prop_assert_eq!(
                a.offsets.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                b.offsets.iter().map(|h| h.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

/// A product that is an f32 midpoint, plus a term far below f64's precision: rounding the f64
/// sum (the midpoint itself) to f32 would go to the even neighbour, the wrong way.
#[test]
fn portable_fused_multiply_add_is_not_double_rounded() {
    let a = 1.0 + 2f32.powi(-12); // a² = 1 + 2^-11 + 2^-24: halfway between two f32
    for (scale, sign) in [
        (1.0f32, 1.0f32),
        (2f32.powi(-20), 1.0),
        (2f32.powi(30), -1.0),
    ] {
        let c = sign * 2f32.powi(-80) * scale * scale;
        let (x, y) = (sign * a * scale, a * scale);
        let expected = x.mul_add(y, c);
        assert_eq!(
            affine::fused(x, y, c).to_bits(),
            expected.to_bits(),
            "{scale:e}"
        );
        // (The naive f64 route does land on the wrong side.)
        let naive = (f64::from(x) * f64::from(y) + f64::from(c)) as f32;
        assert_ne!(naive.to_bits(), expected.to_bits(), "{scale:e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// The portable fused multiply-add is the correctly rounded one, including where the f64
    /// sum is inexact (exponents far apart) and on f32 subnormals.
    #[test]
    fn portable_fused_multiply_add_rounds_once(
        a in any::<u32>(),
        b in any::<u32>(),
        c in any::<u32>(),
        shift in 0u32..60,
    ) {
        // Any sign, mantissa and exponent up to 2^63 (subnormals included): products stay finite.
        let value = |bits: u32| {
            let exponent = ((bits >> 23) & 0xff) % 191;
            f32::from_bits((bits & 0x807f_ffff) | (exponent << 23))
        };
        let (a, b) = (value(a), value(b));
        let product = a * b;
        let c = match shift % 3 {
            // Cancellation: the result is the product's own rounding error.
            0 => -product,
            // Far below the product: the f64 sum is inexact.
            1 => {
                let fraction = 1.0 + (c & 0x7f_ffff) as f32 / 8_388_608.0;
                let sign = if c >> 31 == 0 { 1.0 } else { -1.0 };
                product * 2f32.powi(-(shift as i32)) * fraction * sign
            }
            _ => value(c),
        };
        let expected = a.mul_add(b, c);
        let got = affine::fused(a, b, c);
        prop_assert!(got.to_bits() == expected.to_bits() || (got == 0.0 && expected == 0.0),
            "{a:e}·{b:e} + {c:e}: {got:e} vs {expected:e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Inside the range a group can represent, every value is within half a step of its
    /// reconstruction: codes are always the nearest for the stored scale and offset.
    #[test]
    fn error_is_at_most_half_a_step_inside_the_clipped_range(
        bits in prop::sample::select(vec![2u8, 3, 4, 5, 6, 8]),
        group in prop::sample::select(vec![16usize, 32, 64, 128]),
        scheme in prop::sample::select(vec![Scheme::Asym, Scheme::Sym, Scheme::AsymMinMax, Scheme::SymMinMax]),
        x in prop::collection::vec(-100.0f32..100.0, 1..400),
    ) {
        let mut out = AffineOutput::default();
        affine::quantize_row(&x, bits, group, scheme, &mut out).unwrap();
        let mut back = Vec::new();
        affine::dequantize_row(&out.codes, group, bits, scheme.is_symmetric(), &out.scales, &out.offsets, &mut back).unwrap();
        let levels = (1u32 << bits) as f32;
        for (g, (xs, bs)) in x.chunks(group).zip(back.chunks(group)).enumerate() {
            let d = out.scales[g].to_f32();
            let (lo, hi) = if scheme.is_symmetric() {
                let (a, b) = (-levels / 2.0 * d, (levels / 2.0 - 1.0) * d);
                (a.min(b), a.max(b))
            } else {
                let m = out.offsets[g].to_f32();
                (m, m + (levels - 1.0) * d)
            };
            for (&v, &r) in xs.iter().zip(bs) {
                if v >= lo && v <= hi {
                    let tolerance = d.abs() / 2.0 + 1e-4 * v.abs().max(d.abs()) + 1e-6;
                    prop_assert!((v - r).abs() <= tolerance, "{v} -> {r}, step {d}, group {g}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The SIMD GGUF blocks agree with the portable reference on any data, grid values (many
    /// ties and exact halves) included.
    #[test]
    fn gguf_simd_blocks_equal_the_portable_ones(
        blocks in 1usize..4,
        grid in any::<bool>(),
        raw in prop::collection::vec(-1000i32..1000, 128),
        scale in prop::sample::select(vec![1e-3f32, 0.125, 1.0, 37.0]),
    ) {
        let x: Vec<f32> = raw[..blocks * 32]
            .iter()
            .map(|&v| if grid { (v / 16) as f32 * 0.5 * scale } else { v as f32 * scale / 7.0 })
            .collect();
        for format in [GgufFormat::Q4_0, GgufFormat::Q4_1, GgufFormat::Q5_0, GgufFormat::Q5_1, GgufFormat::Q8_0] {
            let mut fast = Vec::new();
            gguf::quantize_row(format, &x, &mut fast).unwrap();
            let mut portable = vec![0u8; format.row_bytes(x.len()).unwrap()];
            gguf::quantize_blocks(format, &x, &mut portable);
            prop_assert_eq!(fast, portable, "{}", format.name());
        }
    }
}

/// Every reader of a stored row (dequantize, measure, signed_codes) runs one check first:
/// parameters that are not finite, lengths that disagree, widths and schemes that cannot be.
#[test]
fn stored_rows_with_bad_parameters_are_refused() {
    use arrowquant_udfs::kernels::quantized::{check_stored, signed_codes};
    use half::f16;
    let x = &gaussian_rows(1, 128, 8)[0];
    let mut quantizer = Quantizer::default();
    let asym = spec(4, Some(64), Scheme::Asym);
    let mut q = QuantizedRow::default();
    quantizer.quantize(x, &asym, &mut q).unwrap();
    let good = q.view(&asym, 128);
    check_stored(&good).unwrap();
    let nan_scale = [q.scales[0], f16::NAN];
    let inf_offset = [f16::NEG_INFINITY, q.offsets[1]];
    let cases: [(QuantizedRef, &str); 6] = [
        (
            QuantizedRef {
                scales: &nan_scale,
                ..good
            },
            "the scale of group 1 is NaN",
        ),
        (
            QuantizedRef {
                offsets: &inf_offset,
                ..good
            },
            "the offset of group 0 is -inf",
        ),
        (
            QuantizedRef { bits: 7, ..good },
            "bits = 7 for scheme asym, expected one of 2, 3, 4, 5, 6 or 8",
        ),
        (
            QuantizedRef {
                len: u32::MAX,
                ..good
            },
            "4294967295 codes of 4 bits need 2147483648 bytes, found 64",
        ),
        (
            QuantizedRef {
                scheme: Scheme::Sym,
                ..good
            },
            "need 2 scales and 0 offsets (sym), found 2 scales and 2 offsets",
        ),
        (
            QuantizedRef {
                group_size: 0,
                ..good
            },
            "group_size is 0",
        ),
    ];
    for (bad, message) in cases {
        let err = check_stored(&bad).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
        assert!(quantizer.dequantize(&bad, &mut Vec::new()).is_err());
        assert!(quantizer.measure(x, &bad).is_err());
        assert!(signed_codes(&bad, &mut Vec::new()).is_err());
    }
    // GGUF: the scale inside a block, and scales outside the blocks.
    let q8 = spec(8, None, Scheme::Q8_0);
    let mut g = QuantizedRow::default();
    quantizer.quantize(x, &q8, &mut g).unwrap();
    g.codes[34..36].copy_from_slice(&f16::INFINITY.to_le_bytes());
    let err = check_stored(&g.view(&q8, 128)).unwrap_err().to_string();
    assert!(
        err.contains("block 1 has a non-finite scale or minimum: inf"),
        "{err}"
    );
    assert!(quantizer.measure(x, &g.view(&q8, 128)).is_err());
    g.codes[34..36].copy_from_slice(&f16::ONE.to_le_bytes());
    g.scales.push(f16::ONE);
    let err = check_stored(&g.view(&q8, 128)).unwrap_err().to_string();
    assert!(err.contains("q8_0 keeps its scales in its blocks"), "{err}");
}

/// f16 holds ±65504: a GGUF block whose scale or minimum is beyond is refused, naming the
/// block (llama.cpp would store an infinity there), and one just inside is kept.
#[test]
fn gguf_block_parameters_beyond_f16_are_an_error() {
    let mut quantizer = Quantizer::default();
    let mut out = QuantizedRow::default();
    for (scheme, bits, value, block) in [
        (Scheme::Q8_0, 8, 1e7f32, 2),
        (Scheme::Q4_0, 4, -6e5, 0),
        (Scheme::Q5_0, 5, 2e6, 1),
        (Scheme::Q4_1, 4, -7e4, 3),
        (Scheme::Q5_1, 5, 3e6, 1),
    ] {
        let mut x: Vec<f32> = (0..128).map(|i| (i as f32 * 0.3).sin()).collect();
        x[block * 32 + 5] = value;
        for encoder in [Encoder::Search, Encoder::Reference] {
            let s = spec(bits, None, scheme).with_encoder(encoder).unwrap();
            for result in [
                quantizer.quantize(&x, &s, &mut out),
                quantizer.quantize_measured(&x, &s, &mut out).map(|_| ()),
            ] {
                let err = result.unwrap_err();
                assert!(
                    matches!(err, KernelError::ScaleOverflow { group, .. } if group == block),
                    "{s}: {err}"
                );
            }
        }
    }
    // 65504 · 127 gives q8_0 a scale of exactly 65504: kept, and decoded without infinities.
    let mut x = vec![0.5f32; 32];
    x[0] = 65504.0 * 127.0;
    let s = spec(8, None, Scheme::Q8_0)
        .with_encoder(Encoder::Reference)
        .unwrap();
    quantizer.quantize(&x, &s, &mut out).unwrap();
    let mut back = Vec::new();
    quantizer.dequantize(&out.view(&s, 32), &mut back).unwrap();
    assert_eq!(back[0], x[0]);
    assert!(back.iter().all(|v| v.is_finite()));
    // The search keeps it too (its scale may differ by an f16 step).
    let s = spec(8, None, Scheme::Q8_0);
    quantizer.quantize(&x, &s, &mut out).unwrap();
    quantizer.dequantize(&out.view(&s, 32), &mut back).unwrap();
    assert!((back[0] / x[0] - 1.0).abs() < 1e-5, "{}", back[0]);
    assert!(back.iter().all(|v| v.is_finite()));
}

#[test]
fn spatial_results_beyond_f32_are_an_error() {
    use arrowquant_udfs::kernels::spatial::{clip_outliers, equalize, smooth_scales};
    let mut out = Vec::new();
    let err = equalize(&[1.0, 3e38], &[2.0], &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("index 1"), "{err}");
    let err = smooth_scales(&[1.0, 3.3e38], &[1.0, 1e-45], 0.9, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("channel 1"), "{err}");
    clip_outliers(
        &[f32::MAX, -f32::MAX, f32::MAX, -f32::MAX, 0.0],
        1.0,
        &mut out,
    )
    .unwrap();
    assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
}
