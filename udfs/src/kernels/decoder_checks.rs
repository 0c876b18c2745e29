//! What every block decoder must do, checked by each decoder family's tests (k-quants,
//! i-quants): zero blocks decode to zeros, a byte count that is not the row's is refused
//! naming the format and the right count, and a length the blocks do not divide is refused.

use super::error::{KernelError, Result};

/// A decoder: `(bytes, values, out)`, as `dequantize_row` of each family takes them.
pub type Decode = Box<dyn Fn(&[u8], usize, &mut Vec<f32>) -> Result<()>>;

/// One block format's decoder, as the checks see it.
pub struct Decoder {
    pub name: &'static str,
    pub block_values: usize,
    pub block_bytes: usize,
    pub row_bytes: Box<dyn Fn(usize) -> Result<usize>>,
    pub decode: Decode,
}

/// Two zero blocks decode to zeros (−0 where a code is negative: a zero scale zeroes every
/// value; MXFP4's zero scale byte is 2⁻¹²⁸, but its code 0 is the level 0), replacing what
/// `out` held.
pub fn zero_blocks_decode_to_zeros(d: &Decoder) {
    let bytes = vec![0u8; 2 * d.block_bytes];
    let mut out = vec![1.0; 3];
    (d.decode)(&bytes, 2 * d.block_values, &mut out).unwrap();
    assert_eq!(out.len(), 2 * d.block_values, "{}", d.name);
    assert!(out.iter().all(|&v| v == 0.0), "{}", d.name);
}

/// None, one byte too few or too many, or a block too many: refused, naming the format and
/// the byte count the row needs.
pub fn wrong_byte_lengths_are_refused(d: &Decoder) {
    let len = 2 * d.block_values;
    let right = (d.row_bytes)(len).unwrap();
    for wrong in [0, right - 1, right + 1, right + d.block_bytes] {
        match (d.decode)(&vec![0u8; wrong], len, &mut Vec::new()) {
            Err(KernelError::Corrupt(message)) => {
                assert!(message.contains(d.name), "{message}");
                assert!(message.contains(&right.to_string()), "{message}");
            }
            other => panic!("{}: {wrong} bytes gave {other:?}", d.name),
        }
    }
}

/// Lengths that are not whole blocks: refused by the size and by the decoder alike.
pub fn partial_blocks_are_refused(d: &Decoder) {
    let block = d.block_values;
    for len in [1, block - 1, block + 1, 3 * block + 7] {
        let expected = Err(KernelError::NotBlockMultiple {
            scheme: d.name,
            len,
            block,
        });
        assert_eq!((d.row_bytes)(len), expected, "{}", d.name);
        assert_eq!(
            (d.decode)(&[0u8; 1024], len, &mut Vec::new()),
            expected.map(|_| ()),
            "{}",
            d.name
        );
    }
}
