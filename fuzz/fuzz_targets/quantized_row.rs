//! The stored quantized struct, as `dequantize(q)` and the functions that read `q` take it
//! from a table: codes, scales, offsets, bits, group_size, len and scheme with any values.
//! Every reader of a stored row answers a row of `len` values or an error, and `measure`
//! gives the sums of the rebuilt row bit for bit. A second part quantizes arbitrary values
//! with an arbitrary request and reads the result back.

#![no_main]

use arbitrary::Arbitrary;
use arrowquant_light::kernels::gguf::BLOCK;
use arrowquant_light::kernels::metrics::PairSums;
use arrowquant_light::kernels::packing::packed_len;
use arrowquant_light::kernels::quantized::{QuantizedRef, QuantizedRow, Quantizer, signed_codes};
use arrowquant_light::kernels::scheme::{GroupSize, QuantSpec, Scheme};
use half::f16;
use libfuzzer_sys::fuzz_target;

const SCHEMES: [&str; 9] = [
    "asym",
    "sym",
    "asym_minmax",
    "sym_minmax",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q8_0",
];

/// Rows longer than this are not built by the fix-ups below (a stored `len` can be anything).
/// Four thousand values span many groups and blocks of every size the decoders take apart;
/// longer rows only repeat the same code paths, at a cost that slowed the fuzzer tenfold.
const MAX_BUILT: usize = 1 << 12;

#[derive(Arbitrary, Debug)]
struct Stored {
    codes: Vec<u8>,
    scales: Vec<u16>,
    offsets: Vec<u16>,
    bits: u8,
    group_size: u32,
    len: u32,
    scheme: u8,
    /// When set, the lengths are made to agree with `len`, `bits` and `group_size` (taken mod
    /// small bounds) so that the decoders themselves run on the arbitrary values.
    consistent: bool,
    /// Values `measure` compares the row with, repeated to `len`.
    x: Vec<f32>,
}

#[derive(Arbitrary, Debug)]
struct Request {
    x: Vec<f32>,
    bits: i8,
    group_size: Option<i16>,
    scheme: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    stored: Stored,
    request: Option<Request>,
}

/// `v` cut or repeated to `n` items (zeros if it is empty).
fn cycled<T: Copy + Default>(v: &[T], n: usize) -> Vec<T> {
    if v.is_empty() {
        return vec![T::default(); n];
    }
    v.iter().copied().cycle().take(n).collect()
}

fn read_stored(s: &Stored) {
    let scheme = Scheme::parse(SCHEMES[s.scheme as usize % SCHEMES.len()]).unwrap();
    let (mut codes, mut scales, mut offsets) =
        (s.codes.clone(), s.scales.clone(), s.offsets.clone());
    let (mut bits, mut group_size, mut len) = (s.bits, s.group_size, s.len);
    if s.consistent {
        let n = len as usize % (MAX_BUILT + 1);
        if let Some(format) = scheme.gguf() {
            let n = n / BLOCK * BLOCK;
            bits = format.bits();
            group_size = BLOCK as u32;
            len = n as u32;
            codes = cycled(&codes, format.row_bytes(n).unwrap());
        } else {
            bits = [2, 3, 4, 5, 6, 8][bits as usize % 6];
            group_size = group_size % 8192 + 1;
            len = n as u32;
            codes = cycled(&codes, packed_len(n, bits));
            let groups = n.div_ceil(group_size as usize);
            scales = cycled(&scales, groups);
            offsets = cycled(&offsets, groups);
        }
    }
    let scales: Vec<f16> = scales.iter().map(|&b| f16::from_bits(b)).collect();
    let offsets: Vec<f16> = offsets.iter().map(|&b| f16::from_bits(b)).collect();
    let q = QuantizedRef {
        codes: &codes,
        scales: &scales,
        offsets: &offsets,
        bits,
        group_size,
        len,
        scheme,
    };
    let mut quantizer = Quantizer::default();
    let mut out = Vec::new();
    let rebuilt = quantizer.dequantize(&q, &mut out);
    if rebuilt.is_ok() {
        assert_eq!(out.len(), len as usize, "dequantize: wrong length");
    }
    let mut signed = Vec::new();
    if signed_codes(&q, &mut signed).is_ok() {
        assert!(scheme.gguf().is_none());
        assert_eq!(signed.len(), len as usize, "signed_codes: wrong length");
    }
    if (len as usize) <= MAX_BUILT {
        let x = cycled(&s.x, len as usize);
        let measured = quantizer.measure(&x, &q);
        // measure also checks the values it compares with: a NaN or ±Inf among them is an
        // error whatever the stored row holds.
        if x.iter().all(|v| v.is_finite()) {
            assert_eq!(
                measured.is_ok(),
                rebuilt.is_ok(),
                "measure and dequantize disagree: {measured:?}"
            );
        } else {
            assert!(measured.is_err(), "measure accepted non-finite values");
        }
        if let (Ok(measured), Ok(())) = (measured, &rebuilt) {
            let direct = PairSums::of(&x, &out).unwrap();
            // (Debug, so that NaN sums compare equal.)
            assert_eq!(
                format!("{measured:?}"),
                format!("{direct:?}"),
                "measure differs from dequantize"
            );
        }
    }
}

fn round_trip(r: &Request) {
    let scheme = Scheme::parse(SCHEMES[r.scheme as usize % SCHEMES.len()]).unwrap();
    let group = match r.group_size {
        None => None,
        Some(g) if g <= 0 => Some(GroupSize::Row),
        Some(g) => match GroupSize::from_i64(i64::from(g)) {
            Ok(g) => Some(g),
            Err(_) => return,
        },
    };
    let Ok(spec) = QuantSpec::new(i64::from(r.bits), group, scheme) else {
        return;
    };
    let mut quantizer = Quantizer::default();
    let mut row = QuantizedRow::default();
    if quantizer.quantize(&r.x, &spec, &mut row).is_err() {
        return;
    }
    let view = row.view(&spec, r.x.len());
    let mut out = Vec::new();
    quantizer
        .dequantize(&view, &mut out)
        .expect("a row just quantized reads back");
    assert_eq!(out.len(), r.x.len());
    let sums = quantizer
        .measure(&r.x, &view)
        .expect("a row just quantized is measured");
    let mut fused = QuantizedRow::default();
    let fused_sums = quantizer
        .quantize_measured(&r.x, &spec, &mut fused)
        .expect("quantize_measured accepts what quantize accepts");
    assert_eq!(fused.codes, row.codes, "quantize_measured: other codes");
    assert_eq!(
        format!("{fused_sums:?}"),
        format!("{sums:?}"),
        "quantize_measured: other sums"
    );
}

fuzz_target!(|input: Input| {
    read_stored(&input.stored);
    if let Some(request) = &input.request {
        round_trip(request);
    }
});
