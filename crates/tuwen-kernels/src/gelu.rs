//! The exact (erf) GELU, `x Φ(x)`, vectorised and multithreaded.
//!
//! Burn's CPU backends compute GELU and its derivative one element at a time on one thread
//! through libm's `erff` (~13 ns per element on the development machine: the feed-forward
//! GELU of a MiniLM-size step cost more than its matrix products' share). Here `erf` is a
//! branch-free single-precision approximation (Norbert Juffa's two-piece minimax `erff`,
//! within 2 ulp of libm's over the range tests sweep) and `exp` a Cody-Waite reduction with a
//! degree-7 Taylor polynomial, both written so the compiler vectorises the loops (8 lanes
//! with AVX2, selected at run time; 4 with the baseline SSE2).

use rayon::prelude::*;

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// `1 / sqrt(2)`.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `exp(x)` for `x <= 0` (what GELU needs): `2^n p(r)`, `x = n ln 2 + r`, `|r| <= ln 2 / 2`,
/// `p` the degree-7 Taylor polynomial (truncation below 3e-9 relative on that interval). Results
/// below `2^-126` flush to zero.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by adding and removing 1.5 * 2^23 (vectorises; `f32::round` is a
    // libm call).
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // ln 2 split in a part exact in f32 and the rest (Cody and Waite).
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let p = 1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0));
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * p))));
    // 2^n through the exponent bits (n in [-126, 0] here). `shifted`'s low bits hold n as an
    // integer (its ulp is 1): integer lanes, where `n as i32` (a saturating conversion)
    // would leave the vector loop one lane at a time.
    let scale = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    p * scale
}

/// `erf(x)`, branch-free: both of the approximation's pieces are computed and one selected.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let t = x.abs();
    let s = x * x;
    // |x| <= 0.927734375: odd polynomial.
    let mut small = -5.967_617e-4f32;
    small = small * s + 4.991_194_2e-3;
    small = small * s - 2.676_813_5e-2;
    small = small * s + 1.128_199_3e-1;
    small = small * s - 3.761_253_4e-1;
    small = small * s + 1.283_791_7e-1;
    let small = small * x + x;
    // Larger |x|: 1 - exp(q(|x|)).
    let mut r = -1.728_534_7e-5f32 * t + 3.831_971_3e-4;
    let u = -3.883_964_4e-3 * t + 2.425_462_2e-2;
    r = r * s + u;
    r = r * t - 1.067_778_8e-1;
    r = r * t - 6.348_467e-1;
    r = r * t - 1.287_175_1e-1;
    r = r * t - t;
    let large = (1.0 - exp_nonpositive(r)).copysign(x);
    if t > 0.927_734_4 { large } else { small }
}

/// `(Φ(x), φ(x))`: the standard normal distribution and density at `x`.
#[inline(always)]
fn normal(x: f32) -> (f32, f32) {
    let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
    let pdf = FRAC_1_SQRT_2PI * exp_nonpositive(-0.5 * x * x);
    (cdf, pdf)
}

/// Replaces every element of `x` with its exact GELU `x Φ(x)`, in place (no allocation: a
/// tensor read back without a copy is updated and handed back).
pub fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(gelu_chunk);
}

fn gelu_chunk(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { gelu_avx2(x) };
    }
    gelu_scalar(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_avx2(x: &mut [f32]) {
    gelu_scalar(x)
}

#[inline(always)]
fn gelu_scalar(x: &mut [f32]) {
    for x in x.iter_mut() {
        *x *= normal(*x).0;
    }
}

/// GELU as a line through each element, for differentiating through it with plain tensor
/// operations: `gelu(x) = slope * x + offset` with `slope = gelu'(x) = Φ(x) + x φ(x)` and
/// `offset = -x² φ(x)`, so an autodiff graph computing `x * slope + offset` (both constants)
/// has GELU's value and GELU's gradient.
pub struct GeluLine {
    /// `gelu'(x)` of every element.
    pub slope: Vec<f32>,
    /// `gelu(x) - x gelu'(x)` of every element.
    pub offset: Vec<f32>,
}

/// [`GeluLine`] of every element of `x`.
pub fn gelu_line(x: &[f32]) -> GeluLine {
    let mut slope = vec![0.0f32; x.len()];
    let mut offset = vec![0.0f32; x.len()];
    slope
        .par_chunks_mut(CHUNK)
        .zip(offset.par_chunks_mut(CHUNK))
        .zip(x.par_chunks(CHUNK))
        .for_each(|((slope, offset), x)| line_chunk(x, slope, offset));
    GeluLine { slope, offset }
}

fn line_chunk(x: &[f32], slope: &mut [f32], offset: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { line_avx2(x, slope, offset) };
    }
    line_scalar(x, slope, offset)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn line_avx2(x: &[f32], slope: &mut [f32], offset: &mut [f32]) {
    line_scalar(x, slope, offset)
}

#[inline(always)]
fn line_scalar(x: &[f32], slope: &mut [f32], offset: &mut [f32]) {
    for ((s, o), &x) in slope.iter_mut().zip(offset.iter_mut()).zip(x) {
        let (cdf, pdf) = normal(x);
        let xpdf = x * pdf;
        *s = cdf + xpdf;
        *o = -x * xpdf;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-600_000..=600_000).map(|i| i as f32 * 1e-5)
    }

    #[test]
    fn erf_within_two_ulp_of_libm() {
        let worst = grid()
            .map(|x| (x, ulps(erf(x), libm::erff(x))))
            .max_by_key(|&(_, u)| u)
            .unwrap();
        assert!(
            worst.1 <= 2,
            "erf({}) is {} ulp from libm",
            worst.0,
            worst.1
        );
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn exp_within_two_ulp_of_std() {
        // Down to -80 (e^-80 = 1.8e-35); nearer the smallest normal float (e^-87.3) the
        // scaling by 2^n adds an ulp.
        let worst = (0..=800_000)
            .map(|i| -(i as f32) * 1e-4)
            .map(|x| (x, ulps(exp_nonpositive(x), x.exp())))
            .max_by_key(|&(_, u)| u)
            .unwrap();
        assert!(worst.1 <= 2, "exp({}) is {} ulp from std", worst.0, worst.1);
    }

    /// GELU in f64 through libm's `erf`: the reference.
    fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    fn gelu64_slope(x: f64) -> f64 {
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)) + x * pdf
    }

    #[test]
    fn gelu_matches_the_f64_reference() {
        let x: Vec<f32> = grid().collect();
        let mut y = x.clone();
        gelu_in_place(&mut y);
        for (&x, &y) in x.iter().zip(&y) {
            let want = gelu64(f64::from(x));
            let err = (f64::from(y) - want).abs();
            assert!(
                err <= 1e-7 + 4e-7 * want.abs(),
                "gelu({x}) = {y}, want {want}"
            );
        }
    }

    #[test]
    fn the_line_has_gelus_value_and_slope() {
        let x: Vec<f32> = grid().step_by(7).collect();
        let line = gelu_line(&x);
        for (i, &x) in x.iter().enumerate() {
            let (slope, offset) = (line.slope[i], line.offset[i]);
            let want = gelu64_slope(f64::from(x));
            assert!(
                (f64::from(slope) - want).abs() <= 1e-6,
                "gelu'({x}) = {slope}, want {want}"
            );
            // What the autodiff graph computes, in f32.
            let value = x * slope + offset;
            let want = gelu64(f64::from(x));
            let err = (f64::from(value) - want).abs();
            assert!(
                err <= 2e-7 + 1e-6 * want.abs(),
                "gelu({x}) = {value}, want {want}"
            );
        }
    }
}
