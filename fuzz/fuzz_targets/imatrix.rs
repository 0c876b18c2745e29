//! A llama.cpp importance-matrix file's bytes, either layout (the GGUF magic picks the GGUF
//! one), through the reader `read_imatrix` runs. Whatever the bytes, the answer is a file or
//! an error; in a file every entry has 1 or more channels and that many finite importances
//! ≥ 0 (all 1 where its count is 0), a count that is a whole number ≥ 0, the matrices of a
//! tensor come together numbered from 0, no tensor appears twice, and there are never more
//! values than the input has 4-byte words (no count from the file sizes what is read).

#![no_main]

use std::collections::HashSet;
use std::path::Path;

use arrowquant_formats::imatrix_file::{ImatrixFile, ImatrixLayout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = ImatrixFile::parse(Path::new("fuzz.imatrix"), data) else {
        return;
    };
    let gguf = data.starts_with(b"GGUF");
    assert_eq!(file.layout == ImatrixLayout::Gguf, gguf);
    assert!(!file.entries.is_empty());
    let mut values = 0usize;
    let mut seen = HashSet::new();
    let mut previous: Option<(&str, u32)> = None;
    for e in &file.entries {
        assert!(
            e.channels >= 1 && u32::try_from(e.channels).is_ok(),
            "{}",
            e.name
        );
        assert_eq!(e.importance.len(), e.channels, "{}", e.name);
        assert!(
            e.count.is_finite() && e.count >= 0.0,
            "{}: count {}",
            e.name,
            e.count
        );
        for &v in &e.importance {
            assert!(v.is_finite() && v >= 0.0, "{}: importance {v}", e.name);
            assert!(
                e.count > 0.0 || v == 1.0,
                "{}: count 0, importance {v}",
                e.name
            );
        }
        match previous {
            Some((name, m)) if name == e.name => assert_eq!(e.matrix, m + 1, "{}", e.name),
            _ => {
                assert_eq!(e.matrix, 0, "{}", e.name);
                assert!(seen.insert(e.name.as_str()), "{} appears twice", e.name);
            }
        }
        previous = Some((&e.name, e.matrix));
        values += e.channels;
    }
    assert!(
        values <= data.len() / 4,
        "{values} values from {} bytes",
        data.len()
    );
    for name in &seen {
        let matrices = file.matrices(name);
        let flat = file.flat_importance(name).expect("a tensor of the file");
        assert_eq!(
            flat.len(),
            matrices.iter().map(|m| m.channels).sum::<usize>()
        );
    }
});
