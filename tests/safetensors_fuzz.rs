//! Property-based fuzzing of the safetensors header and offset validation: whatever the bytes,
//! reading the tensor table returns an error or tensors that lie inside the file, and never
//! panics. `PROPTEST_CASES=200000 cargo test --test safetensors_fuzz` runs it longer.

mod common;

use std::path::Path;

use arrowquant::model::safetensors_file::read_table;
use proptest::prelude::*;
use safetensors::tensor::Dtype;

use common::{Tensor, safetensors_bytes};

fn check(bytes: &[u8]) {
    if let Ok(tensors) = read_table(Path::new("fuzz.safetensors"), bytes) {
        for t in tensors {
            assert!(t.start + t.len <= bytes.len(), "{t:?} past {}", bytes.len());
            let bits: usize = t.shape.iter().product::<usize>() * t.dtype.bitsize();
            assert_eq!(bits.div_ceil(8), t.len, "{t:?}");
        }
    }
}

fn valid_file(shapes: &[(u8, u8)]) -> Vec<u8> {
    let tensors: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            let (r, c) = (r as usize % 5, c as usize % 7 + 1);
            let dtype = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::U8][i % 5];
            let bytes = vec![i as u8; r * c * dtype.bitsize() / 8];
            Tensor::raw(&format!("t{i}"), dtype, &[r, c], bytes)
        })
        .collect();
    safetensors_bytes(&tensors)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_headers_never_panic(
        header in "\\{(\"[a-z]{1,3}\":\\{\"dtype\":\"(F32|F16|I8|X)\",\"shape\":\\[[0-9]{1,2}(,[0-9]{1,2})?\\],\"data_offsets\":\\[[0-9]{1,3},[0-9]{1,3}\\]\\},?){0,3}\\}",
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&data);
        check(&bytes);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        shapes in proptest::collection::vec((any::<u8>(), any::<u8>()), 1..6),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = valid_file(&shapes);
        check(&bytes);
        prop_assert!(read_table(Path::new("ok"), &bytes).is_ok());
        for (at, value) in edits {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        check(&bytes);
        let cut = cut % (bytes.len() + 1);
        check(&bytes[..cut]);
    }
}
