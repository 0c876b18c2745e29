//! The k-quant and IQ4 decoders against `gguf.quants.dequantize`, bit for bit, on the vectors
//! of scripts/make_kquant_vectors.py (random blocks with extreme, infinite and NaN f16
//! scales), and on arbitrary bytes for robustness.

use arrowquant_udfs::kernels::KernelError;
use arrowquant_udfs::kernels::kquants::{self, KFormat};
use proptest::prelude::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kquants");

fn read_vectors(format: KFormat) -> (Vec<u8>, Vec<f32>) {
    let name = format.name();
    let bytes = std::fs::read(format!("{DATA}/{name}.bin")).unwrap();
    let values = std::fs::read(format!("{DATA}/{name}.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (bytes, values)
}

/// The first index where `got` and `want` differ as bit patterns. NaN payloads are compared
/// too: the reference's NaNs come from quieting the f16 NaN (or x86's default NaN for inf·0),
/// and the decoder does the same operations, so they agree exactly.
fn first_difference(got: &[f32], want: &[f32]) -> Option<usize> {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
}

#[test]
fn kquants_match_the_reference_bit_for_bit() {
    for format in KFormat::ALL {
        let (bytes, want) = read_vectors(format);
        let (values, block_bytes) = (format.block_values(), format.block_bytes());
        let blocks = bytes.len() / block_bytes;
        assert!(blocks >= 32, "{}: {blocks} blocks", format.name());
        assert_eq!(want.len(), blocks * values, "{}", format.name());
        // The vectors hold the cases that matter: NaN, infinities, and ordinary values.
        assert!(want.iter().any(|v| v.is_nan()), "{}", format.name());
        assert!(want.iter().any(|v| v.is_infinite()), "{}", format.name());
        assert!(want.iter().any(|v| v.is_finite() && *v != 0.0));

        // The whole file as one row.
        let mut got = Vec::new();
        kquants::dequantize_row(format, &bytes, want.len(), &mut got).unwrap();
        if let Some(i) = first_difference(&got, &want) {
            panic!(
                "{}: value {i} (block {}) is {:#010x} ({}), gguf.quants gives {:#010x} ({})",
                format.name(),
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
            kquants::dequantize_row(format, src, values, &mut got).unwrap();
            assert_eq!(
                first_difference(&got, want),
                None,
                "{} block {k}",
                format.name()
            );
        }
    }
}

#[test]
fn kquants_refuse_partial_blocks_and_short_bytes() {
    assert!(matches!(
        kquants::dequantize_row(KFormat::Q4K, &[0u8; 144], 255, &mut Vec::new()),
        Err(KernelError::NotBlockMultiple {
            len: 255,
            block: 256,
            ..
        })
    ));
    assert!(matches!(
        kquants::dequantize_row(KFormat::Iq4Nl, &[0u8; 17], 32, &mut Vec::new()),
        Err(KernelError::Corrupt(_))
    ));
}

fn format_and_bytes() -> impl Strategy<Value = (KFormat, usize, Vec<u8>)> {
    (prop::sample::select(KFormat::ALL.to_vec()), 0usize..5).prop_flat_map(|(format, blocks)| {
        (
            Just(format),
            Just(blocks),
            prop::collection::vec(any::<u8>(), blocks * format.block_bytes()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any bytes of whole blocks decode, without panicking, to exactly `len` values; and
    /// decoding block by block gives the same bits as decoding the row at once.
    #[test]
    fn kquants_decode_any_bytes((format, blocks, bytes) in format_and_bytes()) {
        let len = blocks * format.block_values();
        let mut row = vec![7.0; 3];
        kquants::dequantize_row(format, &bytes, len, &mut row).unwrap();
        prop_assert_eq!(row.len(), len);
        let mut one = Vec::new();
        for (src, want) in bytes
            .chunks_exact(format.block_bytes())
            .zip(row.chunks_exact(format.block_values()))
        {
            kquants::dequantize_row(format, src, format.block_values(), &mut one).unwrap();
            prop_assert_eq!(
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
