//! A safetensors file's bytes: the 8-byte header length, the JSON tensor table and the data,
//! through the same check `SafetensorsFile::open` runs on a memory-mapped file. Whatever the
//! bytes, the answer is a table or an error, and every tensor of a table lies in the file with
//! a byte length that its dtype and shape account for.

#![no_main]

use std::path::Path;

use arrowquant_formats::safetensors_file::read_table;
use arrowquant_formats::{row_layout, row_values};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = read_table(Path::new("fuzz.safetensors"), data) else {
        return;
    };
    let mut end = 0;
    for t in &tensors {
        assert!(
            t.start >= 8,
            "{}: data starts inside the header length",
            t.name
        );
        let stop = t.start.checked_add(t.len).expect("start + len overflows");
        assert!(stop <= data.len(), "{}: data runs past the file", t.name);
        assert!(t.start >= end, "{}: overlaps the previous tensor", t.name);
        end = stop;
        // The scan views every tensor as rows: the layout must not overflow either.
        let elements = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .expect("shape overflows");
        assert_eq!(elements, t.elements());
        let bits = elements
            .checked_mul(t.dtype.bitsize())
            .expect("dtype × shape overflows");
        assert_eq!(
            bits.div_ceil(8),
            t.len,
            "{}: {} bytes for {bits} bits",
            t.name,
            t.len
        );
        let (rows, per_row) = row_layout(&t.shape);
        if elements > 0 {
            let last = row_values(&t.shape, rows - 1);
            assert!(
                last >= 1 && last <= per_row,
                "{}: last row of {last} values",
                t.name
            );
        }
    }
});
