//! The state of the `quant_params` aggregate: a histogram sketch serialised to bytes between
//! partitions (and, on a cluster, between machines), read back by `Sketch::from_bytes` and
//! merged. Whatever the bytes, the answer is a sketch or an error; a sketch reads back what it
//! writes, and merging it, listing its buckets and the clipping search on them neither panic
//! nor allocate more than the state's own size accounts for.

#![no_main]

use arrowquant_light::kernels::sketch::{Sketch, clip_search};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = Sketch::from_bytes(data) else {
        return;
    };
    let bytes = state.to_bytes();
    assert!(
        data.starts_with(&bytes),
        "the state does not read back as written"
    );
    // Merged into a sketch of ordinary values, as the aggregate merges partitions.
    let mut merged = Sketch::default();
    merged.add(&[-1.5, 0.0, 0.25, 3.0]);
    merged.merge(&state);
    for sketch in [&state, &merged] {
        let buckets = sketch.sorted_buckets();
        for bits in [2, 4, 8] {
            let _ = clip_search(&buckets, bits, false);
            let _ = clip_search(&buckets, bits, true);
        }
        let _ = sketch.share_beyond(0.0, 1.0);
    }
});
