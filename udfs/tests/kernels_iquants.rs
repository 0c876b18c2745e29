//! The i-quant, ternary and FP4 decoders against `gguf.quants.dequantize`, bit for bit, on the
//! vectors of scripts/make_iquant_vectors.py (random blocks with extreme, infinite and NaN f16
//! scales, and every 8-bit scale of MXFP4 and NVFP4), and on arbitrary bytes for robustness.

use arrowquant_udfs::kernels::KernelError;
use arrowquant_udfs::kernels::iquants::{self, IFormat};
use proptest::prelude::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/iquants");

fn read_vectors(format: IFormat) -> (Vec<u8>, Vec<f32>) {
    let name = format.name();
    let bytes = std::fs::read(format!("{DATA}/{name}.bin")).unwrap();
    let values = std::fs::read(format!("{DATA}/{name}.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (bytes, values)
}

/// The first index where `got` and `want` differ as bit patterns, NaN payloads and signs
/// included.
fn first_difference(got: &[f32], want: &[f32]) -> Option<usize> {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
}

#[test]
fn iquants_match_the_reference_bit_for_bit() {
    for format in IFormat::ALL {
        let name = format.name();
        let (bytes, want) = read_vectors(format);
        let (values, block_bytes) = (format.block_values(), format.block_bytes());
        let blocks = bytes.len() / block_bytes;
        assert_eq!(bytes.len(), blocks * block_bytes, "{name}");
        assert_eq!(want.len(), blocks * values, "{name}");
        // The vectors hold the cases that matter: NaN and infinities where the scale can make
        // them (an f16; MXFP4's largest scale overflows; NVFP4's e4m3 scales stay finite),
        // every 8-bit scale of the FP4 formats, and ordinary values.
        let scale_bytes = match format {
            IFormat::Mxfp4 => 1,
            IFormat::Nvfp4 => 4,
            _ => 0,
        };
        if scale_bytes > 0 {
            let mut seen = [false; 256];
            for block in bytes.chunks_exact(block_bytes) {
                for &s in &block[..scale_bytes] {
                    seen[usize::from(s)] = true;
                }
            }
            assert!(seen.iter().all(|&s| s), "{name}: a scale byte is missing");
            assert!(want.iter().all(|v| !v.is_nan()), "{name}");
        } else {
            assert!(blocks >= 20, "{name}: {blocks} blocks");
            assert!(want.iter().any(|v| v.is_nan()), "{name}");
        }
        assert_eq!(
            want.iter().any(|v| v.is_infinite()),
            format != IFormat::Nvfp4,
            "{name}"
        );
        assert!(want.iter().any(|v| v.is_finite() && *v != 0.0), "{name}");

        // The whole file as one row.
        let mut got = Vec::new();
        iquants::dequantize_row(format, &bytes, want.len(), &mut got).unwrap();
        if let Some(i) = first_difference(&got, &want) {
            panic!(
                "{name}: value {i} (block {}) is {:#010x} ({}), gguf.quants gives {:#010x} ({})",
                i / values,
                got[i].to_bits(),
                got[i],
                want[i].to_bits(),
                want[i]
            );
        }

        // And one row per block, reusing the output buffer.
        for (k, (src, want)) in bytes
            .chunks_exact(block_bytes)
            .zip(want.chunks_exact(values))
            .enumerate()
        {
            iquants::dequantize_row(format, src, values, &mut got).unwrap();
            assert_eq!(first_difference(&got, want), None, "{name} block {k}");
        }
    }
}

#[test]
fn iquants_refuse_partial_blocks_and_short_bytes() {
    assert!(matches!(
        iquants::dequantize_row(IFormat::Iq2Xxs, &[0u8; 66], 255, &mut Vec::new()),
        Err(KernelError::NotBlockMultiple {
            len: 255,
            block: 256,
            ..
        })
    ));
    assert!(matches!(
        iquants::dequantize_row(IFormat::Mxfp4, &[0u8; 16], 32, &mut Vec::new()),
        Err(KernelError::Corrupt(_))
    ));
}

fn format_and_bytes() -> impl Strategy<Value = (IFormat, usize, Vec<u8>)> {
    (prop::sample::select(IFormat::ALL.to_vec()), 0usize..5).prop_flat_map(|(format, blocks)| {
        (
            Just(format),
            Just(blocks),
            prop::collection::vec(any::<u8>(), blocks * format.block_bytes()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any bytes of whole blocks decode, without panicking, to exactly `len` values; decoding
    /// block by block gives the same bits as decoding the row at once; and a byte more or less
    /// is refused, naming the format.
    #[test]
    fn iquants_decode_any_bytes((format, blocks, bytes) in format_and_bytes()) {
        let len = blocks * format.block_values();
        let mut row = vec![7.0; 3];
        iquants::dequantize_row(format, &bytes, len, &mut row).unwrap();
        prop_assert_eq!(row.len(), len);
        let mut one = Vec::new();
        for (src, want) in bytes
            .chunks_exact(format.block_bytes())
            .zip(row.chunks_exact(format.block_values()))
        {
            iquants::dequantize_row(format, src, format.block_values(), &mut one).unwrap();
            prop_assert_eq!(
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        for wrong in [&longer[..], &bytes[..bytes.len().saturating_sub(1)]] {
            if wrong.len() == bytes.len() {
                continue;
            }
            let err = iquants::dequantize_row(format, wrong, len, &mut one).unwrap_err();
            prop_assert!(
                matches!(&err, KernelError::Corrupt(m) if m.contains(format.name())),
                "{err:?}"
            );
        }
    }
}
