//! Bit packing of quantization codes, low bits first: two 4-bit codes a byte, four 2-bit
//! codes a byte, and a little-endian bit stream for the odd widths (3, 5, 6).

use super::error::{KernelError, Result};

/// Bytes needed for `count` codes of `bits` bits.
pub fn packed_len(count: usize, bits: u8) -> usize {
    (count * usize::from(bits)).div_ceil(8)
}

/// Appends the packed form of `codes` (each `< 2^bits`) to `out`.
pub fn pack(codes: &[u8], bits: u8, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + packed_len(codes.len(), bits), 0);
    let dst = &mut out[start..];
    let done = pack_simd(codes, bits, dst);
    pack_scalar(
        &codes[done..],
        bits,
        &mut dst[done * usize::from(bits) / 8..],
    );
}

/// Packs what a SIMD path can (whole chunks of 16 codes) and returns how many codes it took.
fn pack_simd(codes: &[u8], bits: u8, dst: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if let (2 | 4, Some(cpu)) = (bits, super::cpu::Ssse3::detect()) {
            // SAFETY: `cpu` proves SSSE3.
            return unsafe { ssse3::pack(cpu, codes, bits, dst) };
        }
    }
    let _ = (codes, bits, dst);
    0
}

/// The portable reference.
pub fn pack_scalar(codes: &[u8], bits: u8, dst: &mut [u8]) {
    match bits {
        8 => dst.copy_from_slice(codes),
        4 => {
            let pairs = codes.chunks_exact(2);
            let tail = pairs.remainder();
            for (byte, pair) in dst.iter_mut().zip(pairs) {
                *byte = (pair[0] & 0x0f) | (pair[1] << 4);
            }
            if let [last] = tail {
                dst[dst.len() - 1] = last & 0x0f;
            }
        }
        2 => {
            let quads = codes.chunks_exact(4);
            let tail = quads.remainder();
            for (byte, q) in dst.iter_mut().zip(quads) {
                *byte = (q[0] & 3) | ((q[1] & 3) << 2) | ((q[2] & 3) << 4) | (q[3] << 6);
            }
            if !tail.is_empty() {
                let last = dst.len() - 1;
                dst[last] = tail
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (i, &c)| acc | ((c & 3) << (2 * i)));
            }
        }
        _ => pack_bitstream(codes, bits, dst),
    }
}

#[cfg(target_arch = "x86_64")]
mod ssse3 {
    use std::arch::x86_64::*;

    /// Packs whole chunks of 16 codes (4 or 2 bits each) and returns how many codes it packed.
    /// `pmaddubsw` multiplies neighbouring bytes by (1, 2^bits) and adds them: one step per
    /// doubling of codes per byte.
    #[target_feature(enable = "ssse3")]
    pub fn pack(_cpu: super::super::cpu::Ssse3, codes: &[u8], bits: u8, dst: &mut [u8]) -> usize {
        let chunks = codes.chunks_exact(16);
        let packed = chunks.len() * 16;
        let step = usize::from(bits) * 2; // bytes out per 16 codes
        let by16 = _mm_set1_epi16(0x1001); // (1, 16) per byte pair
        let by4 = _mm_set1_epi16(0x0401); // (1, 4)
        for (c, out) in chunks.zip(dst.chunks_exact_mut(step)) {
            // SAFETY: `c` holds exactly 16 bytes.
            let v = unsafe { _mm_loadu_si128(c.as_ptr().cast()) };
            let words = if bits == 4 {
                _mm_maddubs_epi16(v, by16)
            } else {
                // Pairs of 2-bit codes into nibbles, then pairs of nibbles into bytes.
                let nibbles = _mm_maddubs_epi16(v, by4);
                let nibbles = _mm_packus_epi16(nibbles, nibbles);
                _mm_maddubs_epi16(nibbles, by16)
            };
            let bytes = _mm_packus_epi16(words, words);
            // A store of the width itself: a copy of `step` bytes would be a memcpy call.
            if bits == 4 {
                // SAFETY: `out` holds exactly 8 bytes.
                unsafe { _mm_storel_epi64(out.as_mut_ptr().cast(), bytes) };
            } else {
                let word = _mm_cvtsi128_si32(bytes).to_le_bytes();
                out.copy_from_slice(&word);
            }
        }
        packed
    }
}

fn pack_bitstream(codes: &[u8], bits: u8, dst: &mut [u8]) {
    let mask = (1u32 << bits) - 1;
    let mut acc: u32 = 0;
    let mut filled = 0u32;
    let mut pos = 0;
    for &code in codes {
        acc |= (u32::from(code) & mask) << filled;
        filled += u32::from(bits);
        while filled >= 8 {
            dst[pos] = acc as u8;
            pos += 1;
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        dst[pos] = acc as u8;
    }
}

/// Unpacks `count` codes of `bits` bits from `packed` into `out` (cleared first).
pub fn unpack(packed: &[u8], bits: u8, count: usize, out: &mut Vec<u8>) -> Result<()> {
    let needed = packed_len(count, bits);
    if packed.len() != needed {
        return Err(KernelError::Corrupt(format!(
            "{count} codes of {bits} bits need {needed} bytes, found {}",
            packed.len()
        )));
    }
    out.clear();
    out.resize(count, 0);
    unpack_into(packed, bits, out);
    Ok(())
}

/// Unpacks `dst.len()` codes of `bits` bits from `packed`, which holds
/// [`packed_len`]`(dst.len(), bits)` bytes.
pub fn unpack_into(packed: &[u8], bits: u8, dst: &mut [u8]) {
    debug_assert_eq!(packed.len(), packed_len(dst.len(), bits));
    match bits {
        8 => dst.copy_from_slice(packed),
        4 => {
            // Whole pairs in a loop the compiler vectorises, then the odd last code.
            let (pairs, last) = dst.as_chunks_mut::<2>();
            for (pair, &byte) in pairs.iter_mut().zip(packed) {
                *pair = [byte & 0x0f, byte >> 4];
            }
            if let [code] = last {
                *code = packed[packed.len() - 1] & 0x0f;
            }
        }
        2 => {
            let (quads, rest) = dst.as_chunks_mut::<4>();
            for (quad, &byte) in quads.iter_mut().zip(packed) {
                *quad = [byte & 3, (byte >> 2) & 3, (byte >> 4) & 3, byte >> 6];
            }
            if !rest.is_empty() {
                let byte = packed[packed.len() - 1];
                for (i, code) in rest.iter_mut().enumerate() {
                    *code = (byte >> (2 * i)) & 3;
                }
            }
        }
        _ => {
            let mask = (1u32 << bits) - 1;
            let mut acc: u32 = 0;
            let mut filled = 0u32;
            let mut bytes = packed.iter();
            for code in dst.iter_mut() {
                while filled < u32::from(bits) {
                    acc |= u32::from(*bytes.next().unwrap_or(&0)) << filled;
                    filled += 8;
                }
                *code = (acc & mask) as u8;
                acc >>= bits;
                filled -= u32::from(bits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn four_bit_codes_go_low_nibble_first() {
        let mut out = Vec::new();
        pack(&[1, 2, 3], 4, &mut out);
        assert_eq!(out, vec![0x21, 0x03]);
        pack(&[1, 2, 3, 0, 1], 2, &mut out);
        assert_eq!(&out[2..], &[0b00_11_10_01, 0b01]);
    }

    #[test]
    fn unpack_refuses_a_wrong_length() {
        let mut out = Vec::new();
        assert!(unpack(&[0u8; 3], 4, 8, &mut out).is_err());
        assert!(unpack(&[0u8; 4], 4, 8, &mut out).is_ok());
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trips(
            bits in prop::sample::select(vec![2u8, 3, 4, 5, 6, 8]),
            raw in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mask = ((1u16 << bits) - 1) as u8;
            let codes: Vec<u8> = raw.iter().map(|c| c & mask).collect();
            let mut packed = vec![0xAA]; // packing appends after what is there
            pack(&codes, bits, &mut packed);
            prop_assert_eq!(packed.len(), 1 + packed_len(codes.len(), bits));
            let mut back = Vec::new();
            unpack(&packed[1..], bits, codes.len(), &mut back).unwrap();
            prop_assert_eq!(&back, &codes);
            // The SIMD path (taken above where the CPU has one) matches the portable one.
            let mut portable = vec![0u8; packed_len(codes.len(), bits)];
            pack_scalar(&codes, bits, &mut portable);
            prop_assert_eq!(&packed[1..], &portable[..]);
        }
    }
}
