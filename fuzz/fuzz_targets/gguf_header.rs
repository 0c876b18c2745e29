//! A GGUF file's bytes: magic, version, counts, metadata, tensor infos and data, through the
//! same check `GgufFile::open` runs on a memory-mapped file. Whatever the bytes, the answer is
//! a header or an error; in a header every tensor lies in the file after the data section's
//! start, aligned, without overlap, with the bytes its type and dimensions need, and every
//! metadata value renders as JSON that parses.

#![no_main]

use std::path::Path;

use arrowquant_formats::gguf_file::{read_header, value_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = read_header(Path::new("fuzz.gguf"), data) else {
        return;
    };
    assert!(header.alignment.is_power_of_two());
    assert_eq!(header.data_start as u64 % header.alignment, 0);
    let mut ranges = Vec::new();
    for t in &header.tensors {
        assert!(t.start >= header.data_start, "{}: before the data", t.name);
        let end = t.start.checked_add(t.len).expect("start + len overflows");
        assert!(end <= data.len(), "{}: past the file", t.name);
        assert_eq!((t.start - header.data_start) as u64, t.offset);
        assert_eq!(t.offset % header.alignment, 0, "{}: unaligned", t.name);
        let elements: u64 = t.dims.iter().product();
        assert_eq!(t.ggml_type.bytes_of(elements), Some(t.len as u64));
        assert_eq!(t.elements() as u64, elements);
        if t.len > 0 {
            ranges.push((t.start, end));
        }
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "tensors overlap");
    }
    for entry in &header.metadata {
        let json = value_json(data, entry);
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap_or_else(|e| panic!("{}: {json:?} is not JSON: {e}", entry.key));
    }
});
