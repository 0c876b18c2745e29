//! Proof tokens for the CPU features the SIMD paths need. Only `detect` makes a token, so a
//! function that takes one may run code compiled for those features without checking again:
//! the check is written once, here, and the type system carries it to the intrinsics.
//! Detection is `std`'s (`is_x86_feature_detected!`, cached after the first call), so
//! detecting per row costs an atomic load.

/// The CPU has AVX2, FMA and F16C, which every AVX2 processor since Haswell and Excavator
/// has together (the x86-64-v3 level's vector part). One token for the three keeps the
/// affine, GGUF and metrics paths on one rule.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    pub fn detect() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"))
        .then_some(Avx2(()))
    }
}

/// The CPU has SSSE3 (`pshufb`, `pmaddubsw`: the code packing).
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Ssse3(());

#[cfg(target_arch = "x86_64")]
impl Ssse3 {
    pub fn detect() -> Option<Self> {
        std::arch::is_x86_feature_detected!("ssse3").then_some(Ssse3(()))
    }
}
