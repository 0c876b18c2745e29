//! Kernel speed on a 4 MB f32 layer (1,048,576 values as 256 rows of 4096), one thread (the
//! k-quant and IQ4 decoders over as many values of random blocks); and
//! `thermo_optimize`'s transition search over chains of 1,000 and 4,000 timestep groups.
//!
//! Run: `cargo bench --bench kernels`. `baseline/copy` (a plain copy of the layer) is measured
//! in the same run, so ratios against it hold on a noisy shared machine; the two chain lengths
//! are measured in the same run, so their ratio shows how the search scales (linearly: each
//! group weighs the ranges of at most 16 groups either side).

use std::hint::black_box;

use arrowquant_udfs::kernels::affine::{self, AffineOutput};
use arrowquant_udfs::kernels::block_format::{BlockFormat, Encoder};
use arrowquant_udfs::kernels::block_search::{BlockSearch, Weighting};
use arrowquant_udfs::kernels::kquants::{self, KFormat};
use arrowquant_udfs::kernels::metrics::PairSums;
use arrowquant_udfs::kernels::quantized::{QuantizedRow, Quantizer};
use arrowquant_udfs::kernels::scheme::GroupSize;
use arrowquant_udfs::kernels::thermo::{ChainWeights, optimize_chain};
use arrowquant_udfs::kernels::{QuantSpec, Scheme};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const ROWS: usize = 256;
const ROW_LEN: usize = 4096;

fn layer() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(42);
    let normal = Normal::new(0.0f32, 0.02).unwrap();
    (0..ROWS * ROW_LEN)
        .map(|_| normal.sample(&mut rng))
        .collect()
}

/// Random blocks of `format` for `values` values, each block's f16 scale fields set to 0.01.
fn kquant_layer(format: KFormat, values: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut bytes: Vec<u8> = (0..format.row_bytes(values).unwrap())
        .map(|_| rng.random())
        .collect();
    // Where each block's f16 fields sit (ggml's block layouts).
    let f16_fields: &[usize] = match format {
        KFormat::Q2K => &[80, 82],
        KFormat::Q3K => &[108],
        KFormat::Q4K | KFormat::Q5K => &[0, 2],
        KFormat::Q6K => &[208],
        KFormat::Iq4Nl | KFormat::Iq4Xs => &[0],
    };
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in bytes.chunks_exact_mut(format.block_bytes()) {
        for &at in f16_fields {
            block[at..at + 2].copy_from_slice(&scale);
        }
    }
    bytes
}

fn quantize_layer(
    quantizer: &mut Quantizer,
    x: &[f32],
    spec: &QuantSpec,
    out: &mut [QuantizedRow],
) {
    for (row, q) in x.chunks(ROW_LEN).zip(out.iter_mut()) {
        quantizer.quantize(row, spec, q).unwrap();
    }
}

fn benches(c: &mut Criterion) {
    let x = layer();
    let mut group = c.benchmark_group("layer_4mb");
    group.throughput(Throughput::Bytes((x.len() * 4) as u64));
    group.sample_size(30);

    let mut copy = vec![0.0f32; x.len()];
    group.bench_function("baseline/copy", |b| {
        b.iter(|| copy.copy_from_slice(black_box(&x)))
    });

    // llama.cpp's rule bit for bit (`:reference`), and our search, the default, for every
    // block format.
    let reference = |bits, scheme| {
        QuantSpec::new(bits, None, scheme)
            .unwrap()
            .with_encoder(Encoder::Reference)
            .unwrap()
    };
    let search = |bits, scheme| QuantSpec::new(bits, None, scheme).unwrap();
    let specs = [
        ("quantize/q4_0_reference", reference(4, Scheme::Q4_0)),
        ("quantize/q8_0_reference", reference(8, Scheme::Q8_0)),
        ("quantize/q4_0", search(4, Scheme::Q4_0)),
        ("quantize/q5_0", search(5, Scheme::Q5_0)),
        ("quantize/q8_0", search(8, Scheme::Q8_0)),
        ("quantize/q2_K", search(2, Scheme::Q2K)),
        ("quantize/q3_K", search(3, Scheme::Q3K)),
        ("quantize/q4_K", search(4, Scheme::Q4K)),
        ("quantize/q5_K", search(5, Scheme::Q5K)),
        ("quantize/q6_K", search(6, Scheme::Q6K)),
        ("quantize/iq4_nl", search(4, Scheme::Iq4Nl)),
        ("quantize/iq4_xs", search(4, Scheme::Iq4Xs)),
        (
            "quantize/int4_g64_minmax",
            QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::AsymMinMax).unwrap(),
        ),
        (
            "quantize/int4_g64_search",
            QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::Asym).unwrap(),
        ),
        (
            "quantize/int8_g64_search",
            QuantSpec::new(8, Some(GroupSize::Fixed(64)), Scheme::Asym).unwrap(),
        ),
        (
            "quantize/int2_g32_search",
            QuantSpec::new(2, Some(GroupSize::Fixed(32)), Scheme::Asym).unwrap(),
        ),
    ];
    let mut quantizer = Quantizer::default();
    let mut rows = vec![QuantizedRow::default(); ROWS];
    for (name, spec) in &specs {
        group.bench_function(*name, |b| {
            b.iter(|| quantize_layer(&mut quantizer, black_box(&x), spec, &mut rows))
        });
    }

    // The portable reference alone (what runs where AVX2, FMA or F16C is missing), unpacked
    // codes only: the search kernel without the dispatch.
    let mut affine_out = AffineOutput::default();
    group.bench_function("quantize/int4_g64_search_portable", |b| {
        b.iter(|| {
            for row in black_box(&x).chunks(ROW_LEN) {
                affine::quantize_row_portable(row, 4, 64, Scheme::Asym, &mut affine_out).unwrap();
            }
        })
    });

    // The block search's portable path alone (what runs where AVX2 is missing), bytes only.
    let mut block_search = BlockSearch::default();
    let mut block_out = Vec::new();
    group.bench_function("quantize/q4_K_portable", |b| {
        b.iter(|| {
            for row in black_box(&x).chunks(ROW_LEN) {
                block_out.clear();
                block_search
                    .quantize_row_portable(
                        BlockFormat::K(KFormat::Q4K),
                        row,
                        None,
                        Weighting::Uniform,
                        &mut block_out,
                    )
                    .unwrap();
            }
        })
    });

    for (name, spec) in [
        (
            "dequantize/int4_g64",
            QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::Asym).unwrap(),
        ),
        (
            "dequantize/q4_0",
            QuantSpec::new(4, None, Scheme::Q4_0).unwrap(),
        ),
    ] {
        quantize_layer(&mut quantizer, &x, &spec, &mut rows);
        let mut out = Vec::with_capacity(ROW_LEN);
        group.bench_function(name, |b| {
            b.iter(|| {
                for q in &rows {
                    let view = q.view(&spec, ROW_LEN);
                    quantizer.dequantize(&view, &mut out).unwrap();
                    black_box(&out);
                }
            })
        });
    }

    // The k-quant and IQ4 decoders (read_gguf's), over blocks of random bytes whose f16
    // super-scales are set to 0.01 (random ones are often NaN or subnormal, which real
    // files are not).
    for format in KFormat::ALL {
        let bytes = kquant_layer(format, x.len());
        let row_bytes = format.row_bytes(ROW_LEN).unwrap();
        let mut out = Vec::with_capacity(ROW_LEN);
        group.bench_function(format!("dequantize/{}", format.name()), |b| {
            b.iter(|| {
                for row in black_box(&bytes).chunks(row_bytes) {
                    kquants::dequantize_row(format, row, ROW_LEN, &mut out).unwrap();
                    black_box(&out);
                }
            })
        });
    }

    // Quantize and measure in one pass (quantize_measured) against quantize, dequantize and
    // error sums apart (what quantize followed by error_sums(weights, dequantize(q)) costs).
    let spec = QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::Asym).unwrap();
    let mut rebuilt = Vec::with_capacity(ROW_LEN);
    group.bench_function("measured/int4_g64_search_apart", |b| {
        b.iter(|| {
            for (row, q) in x.chunks(ROW_LEN).zip(rows.iter_mut()) {
                quantizer.quantize(row, &spec, q).unwrap();
                quantizer
                    .dequantize(&q.view(&spec, ROW_LEN), &mut rebuilt)
                    .unwrap();
                black_box(PairSums::of(row, &rebuilt).unwrap());
            }
        })
    });
    group.bench_function("measured/int4_g64_search_fused", |b| {
        b.iter(|| {
            for (row, q) in x.chunks(ROW_LEN).zip(rows.iter_mut()) {
                black_box(quantizer.quantize_measured(row, &spec, q).unwrap());
            }
        })
    });
    group.finish();
}

/// `groups` timestep groups of 256 activations each, their spread drifting along the chain as
/// a diffusion model's does.
fn chain(groups: usize) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..groups)
        .map(|g| {
            let spread = 0.5 + (g as f32 / groups as f32 * 6.0).sin().abs();
            let normal = Normal::new(0.0f32, spread).unwrap();
            (0..256).map(|_| normal.sample(&mut rng)).collect()
        })
        .collect()
}

fn thermo(c: &mut Criterion) {
    let mut group = c.benchmark_group("thermo_optimize");
    group.sample_size(10);
    let weights = ChainWeights::new(8, 0.1, 0.01).unwrap();
    for groups in [1000, 4000] {
        let data = chain(groups);
        let views: Vec<&[f32]> = data.iter().map(|g| g.as_slice()).collect();
        group.bench_function(format!("chain_{groups}_groups"), |b| {
            b.iter(|| black_box(optimize_chain(black_box(&views), weights).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(kernels, benches, thermo);
criterion_main!(kernels);
