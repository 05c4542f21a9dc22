//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
//! 3", SC 2011): a counter-based generator, so a draw is a pure function of
//! `(seed, path, driver)` and any thread, chunk or device computes the same
//! numbers. The CUDA kernel carries the same rounds bit for bit.
//!
//! Counter layout: `[path low 32 bits, path high 32 bits, driver pair, block]`
//! (drivers `2k` and `2k + 1` share a block: see `sampling::uniform`),
//! key: `[seed low 32 bits, seed high 32 bits]`.

const MULTIPLIER_0: u32 = 0xD251_1F53;
const MULTIPLIER_1: u32 = 0xCD9E_8D57;
const WEYL_0: u32 = 0x9E37_79B9;
const WEYL_1: u32 = 0xBB67_AE85;
const TWO_TO_52: f64 = (1u64 << 52) as f64;

#[inline(always)]
fn mul_hi_lo(a: u32, b: u32) -> (u32, u32) {
    let product = u64::from(a) * u64::from(b);
    ((product >> 32) as u32, product as u32)
}

/// Ten rounds of Philox4x32 over `counter` with `key`.
#[inline(always)]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(WEYL_0);
            k[1] = k[1].wrapping_add(WEYL_1);
        }
        let (hi0, lo0) = mul_hi_lo(MULTIPLIER_0, c[0]);
        let (hi1, lo1) = mul_hi_lo(MULTIPLIER_1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Four 32-bit draws for block `block` of `(seed, path, driver pair)`.
#[inline(always)]
pub fn draws(seed: u64, path: u64, pair: u32, block: u32) -> [u32; 4] {
    philox4x32_10(
        [path as u32, (path >> 32) as u32, pair, block],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// A uniform in the open interval (0, 1) from two 32-bit draws (52 bits:
/// with 53, the top cell's centre would round to 1.0).
#[inline]
pub fn open_unit(high: u32, low: u32) -> f64 {
    let bits = (u64::from(high) << 20) | (u64::from(low) >> 12);
    // `bits as f64`, exactly (bits < 2^52), in a form that vectorizes
    // without AVX-512's u64 conversion: 2^52 + bits, less 2^52.
    let exact = f64::from_bits(0x4330_0000_0000_0000 | bits) - TWO_TO_52;
    // Centre each of the 2^52 cells: never 0, never 1.
    (exact + 0.5) * (1.0 / TWO_TO_52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_random123_known_answer_vectors() {
        let cases = [
            (
                [0, 0, 0, 0],
                [0, 0],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [0xffffffff; 4],
                [0xffffffff; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (counter, key, expected) in cases {
            assert_eq!(
                philox4x32_10(counter, key),
                expected,
                "{counter:x?} {key:x?}"
            );
        }
    }

    #[test]
    fn draws_depend_on_every_coordinate() {
        let base = draws(7, 1, 2, 0);
        assert_eq!(base, draws(7, 1, 2, 0));
        for other in [
            draws(8, 1, 2, 0),
            draws(7, 2, 2, 0),
            draws(7, 1, 3, 0),
            draws(7, 1, 2, 1),
        ] {
            assert_ne!(base, other);
        }
        assert_ne!(
            draws(0, 1 << 32, 0, 0),
            draws(0, 0, 0, 0),
            "high path bits count"
        );
    }

    #[test]
    fn open_unit_stays_inside_and_is_uniform() {
        assert!(open_unit(0, 0) > 0.0);
        assert!(open_unit(u32::MAX, u32::MAX) < 1.0);
        let n = 200_000u64;
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for path in 0..n {
            let [a, b, _, _] = draws(42, path, 0, 0);
            let u = open_unit(a, b);
            sum += u;
            sum_sq += u * u;
        }
        let mean = sum / n as f64;
        let variance = sum_sq / n as f64 - mean * mean;
        // Standard error of the mean of U(0,1) over n draws: sqrt(1/12/n) ≈ 0.00065.
        assert!((mean - 0.5).abs() < 0.004, "{mean}");
        assert!((variance - 1.0 / 12.0).abs() < 0.002, "{variance}");
    }
}
