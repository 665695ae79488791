//! Hand-written CPU kernels for tuwen's hot loops.
//!
//! Only what no library does is here. The workspace's `Cargo.toml` compiles this crate at
//! `opt-level = 3` in the test profile too (tuwen's other crates stay at opt-level 0 there), so
//! its loops vectorise in `cargo test` builds, `cargo xtask train` and `target/debug/tuwen`.
//!
//! * [`dropout_mask`] — a dropout mask from a counter-based generator: element `i` of a mask
//!   is a pure function of `(key, i)`, so a mask is generated in parallel chunks with the same
//!   result on any number of threads, at about a nanosecond per element (Burn's
//!   `random_like(Bernoulli)` draws each element from a ChaCha stream through `f64`
//!   sampling: ~19 ns per element on the development machine).
//! * [`gelu`] — the exact (erf) GELU and its derivative, vectorised and multithreaded.
//! * [`bf16`] — matrix products in bfloat16 with f32 accumulation on CPUs with AVX512-BF16
//!   (Burn's Flex computes bf16 products in f32; `gemm` has no bf16 kernel).
//! * [`splitmix64`] — SplitMix64's finaliser, the one seed mixer of the workspace (seeds of
//!   steps, micro-batches, dropout masks and epochs).

pub mod bf16;
pub mod gelu;

use rayon::prelude::*;

/// Elements per parallel chunk of a mask.
const CHUNK: usize = 1 << 16;

/// SplitMix64's output function (Steele, Lea and Flood; the constants of Vigna's reference
/// implementation): nearby inputs give unrelated outputs, so `splitmix64(seed ^ splitmix64(i))`
/// seeds the `i`-th stream of `seed`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One round of a 32-bit integer hash (Chris Wellons' `lowbias32`: two multiply-xorshift
/// rounds with the constants his search found to have the lowest bias).
#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// 24 uniformly distributed random bits for element `index` of the mask keyed by `key`: the
/// index goes through two hash rounds, each keyed by one half of `key`, so masks of different
/// keys are unrelated functions of the index (not shifted copies of one stream).
#[inline(always)]
fn bits24(key: u64, index: u32) -> u32 {
    let (low, high) = (key as u32, (key >> 32) as u32);
    lowbias32(lowbias32(index ^ low).wrapping_add(high)) >> 8
}

/// A dropout mask of `len` elements: `1 / keep` where the element is kept (probability
/// `keep`, to 24 bits), `0` where it is dropped. Element `i` depends only on `(key, i)`.
///
/// # Panics
/// If `keep` is not in `(0, 1]`, or `len` exceeds `u32::MAX` elements.
pub fn dropout_mask(key: u64, len: usize, keep: f32) -> Vec<f32> {
    assert!(
        keep > 0.0 && keep <= 1.0,
        "keep probability {keep} outside (0, 1]"
    );
    assert!(
        u32::try_from(len).is_ok(),
        "a dropout mask of {len} elements is longer than u32::MAX"
    );
    let threshold = (f64::from(keep) * f64::from(1u32 << 24)).round() as u32;
    let scale = 1.0 / keep;
    let mut mask = vec![0.0f32; len];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, values)| {
            let start = (chunk * CHUNK) as u32;
            mask_chunk(key, start, threshold, scale, values);
        });
    mask
}

/// Mask elements `start..start + values.len()`; the loop compiled for AVX2 (8 lanes of 32-bit
/// multiplies) when the CPU has it, for the baseline otherwise.
fn mask_chunk(key: u64, start: u32, threshold: u32, scale: f32, values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the feature the function was compiled for.
        return unsafe { mask_chunk_avx2(key, start, threshold, scale, values) };
    }
    mask_chunk_scalar(key, start, threshold, scale, values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mask_chunk_avx2(key: u64, start: u32, threshold: u32, scale: f32, values: &mut [f32]) {
    mask_chunk_scalar(key, start, threshold, scale, values)
}

#[inline(always)]
fn mask_chunk_scalar(key: u64, start: u32, threshold: u32, scale: f32, values: &mut [f32]) {
    for (offset, value) in values.iter_mut().enumerate() {
        let kept = bits24(key, start.wrapping_add(offset as u32)) < threshold;
        *value = if kept { scale } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_requested_share_scaled() {
        for keep in [0.9f32, 0.5, 0.1] {
            let mask = dropout_mask(42, 1 << 20, keep);
            let kept = mask.iter().filter(|&&v| v != 0.0).count();
            let share = kept as f64 / mask.len() as f64;
            assert!(
                (share - f64::from(keep)).abs() < 3e-3,
                "keep {keep}: {share}"
            );
            assert!(mask.iter().all(|&v| v == 0.0 || v == 1.0 / keep));
        }
        assert!(dropout_mask(7, 1000, 1.0).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn a_pure_function_of_key_and_index() {
        let a = dropout_mask(5, 300_000, 0.5);
        assert_eq!(a, dropout_mask(5, 300_000, 0.5));
        // A prefix is the shorter mask: chunking does not change the values.
        assert_eq!(&a[..1000], &dropout_mask(5, 1000, 0.5)[..]);
        let b = dropout_mask(6, 300_000, 0.5);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // Unrelated keys agree on about half the elements at keep 0.5.
        assert!((same as f64 / a.len() as f64 - 0.5).abs() < 0.01, "{same}");
    }

    #[test]
    fn neighbours_and_keys_are_uncorrelated() {
        // Adjacent elements and the same element under adjacent keys: P(both kept) ~ keep^2.
        let keep = 0.5f32;
        let a = dropout_mask(1, 1 << 18, keep);
        let both = a.windows(2).filter(|w| w[0] != 0.0 && w[1] != 0.0).count();
        let share = both as f64 / (a.len() - 1) as f64;
        assert!((share - 0.25).abs() < 5e-3, "adjacent elements: {share}");
        let b = dropout_mask(2, 1 << 18, keep);
        let both = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| **x != 0.0 && **y != 0.0)
            .count();
        let share = both as f64 / a.len() as f64;
        assert!((share - 0.25).abs() < 5e-3, "adjacent keys: {share}");
    }

    #[test]
    #[should_panic(expected = "outside (0, 1]")]
    fn refuses_a_zero_keep() {
        dropout_mask(1, 10, 0.0);
    }
}
