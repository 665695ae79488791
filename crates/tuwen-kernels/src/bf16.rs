//! Matrix products in bfloat16 with f32 accumulation on CPUs with AVX512-BF16 (`vdpbf16ps`):
//! `C = A B` with `A` `[m, k]` and `B` `[k, n]` `f32` operands, each stored row-major or as its
//! transpose ([`Operand`]: the backward's `xᵀ dy` and `dy Wᵀ` read their operands where they
//! lie), both rounded to bf16 (nearest even, as PyTorch's autocast casts), products summed in f32.
//!
//! Written by hand: Burn's Flex backend computes its bf16 matmul by converting to f32, and the
//! `gemm` crate has no bf16 kernel. Layout (BLIS-style): `B` packed once into panels of
//! [`NR`] columns holding, for each pair of rows `2p, 2p + 1`, the two bf16 values of every
//! column side by side (the operand layout of `vdpbf16ps`); `A` rounded once into bf16 rows; a
//! micro-kernel keeps an `MR x NR` block of `C` in 24 AVX-512 registers while it walks a block
//! of `KC` rows of `B`; row blocks of `C` are shared out over rayon's threads.

use rayon::prelude::*;

/// Rows of `C` a micro-kernel call computes.
pub const MR: usize = 12;
/// Columns of `C` a micro-kernel call computes (two AVX-512 registers of f32).
pub const NR: usize = 32;
/// Pairs of `k` per cache block (512 values of `k`).
const KC_PAIRS: usize = 256;

/// Whether this CPU runs the kernel (AVX512-F and AVX512-BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bfloat16 (nearest, ties to even; NaN stays NaN), as the bits of its upper half.
#[inline(always)]
pub fn round_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x40;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

/// `x` rounded to bfloat16 and back.
pub fn round(x: f32) -> f32 {
    f32::from_bits(round_bits(x) << 16)
}

/// How a matrix operand lies in memory.
#[derive(Clone, Copy, Debug)]
pub enum Operand<'a> {
    /// Row-major: `[rows, cols]`.
    Rows(&'a [f32]),
    /// The transpose row-major: `[cols, rows]` (a matrix whose columns are contiguous).
    Transposed(&'a [f32]),
}

impl Operand<'_> {
    fn len(&self) -> usize {
        match self {
            Operand::Rows(v) | Operand::Transposed(v) => v.len(),
        }
    }
}

/// The right operand `B` `[k, n]`, rounded to bf16 and packed for the kernel.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// Panel `p`, pair `q`, column `j`: `bf16(B[2q][pNR + j]) | bf16(B[2q + 1][pNR + j]) << 16`.
    data: Vec<u32>,
}

impl PackedB {
    /// Packs `b` (`[k, n]`), panels shared out over rayon's threads. Panics when the sizes
    /// disagree or the CPU lacks AVX512-BF16 (check [`available`]).
    pub fn new(b: Operand<'_>, k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n, "B holds k x n values");
        assert!(available(), "bf16 packing needs AVX512-BF16");
        let pairs = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * pairs * NR];
        data.par_chunks_mut((pairs * NR).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                let cols = p * NR..(p * NR + NR).min(n);
                match b {
                    Operand::Rows(b) => pack_rows(b, k, n, cols, panel),
                    // SAFETY: `available()` was checked above.
                    Operand::Transposed(bt) => unsafe { pack_columns(bt, k, cols, panel) },
                }
            });
        Self { k, n, data }
    }

    /// Rows of `B`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B`.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// Panel rows of `B` row-major (`[k, n]`): pair `q` of columns `cols` into `panel[q * NR..]`.
fn pack_rows(b: &[f32], k: usize, n: usize, cols: std::ops::Range<usize>, panel: &mut [u32]) {
    let zeros = [0.0; NR];
    for (q, dst) in panel.chunks_exact_mut(NR).enumerate() {
        let lo = &b[2 * q * n + cols.start..2 * q * n + cols.end];
        let hi = if 2 * q + 1 < k {
            &b[(2 * q + 1) * n + cols.start..(2 * q + 1) * n + cols.end]
        } else {
            &zeros[..cols.len()]
        };
        for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
            *d = round_bits(l) | (round_bits(h) << 16);
        }
    }
}

/// Panel of `B` stored transposed (`bt` `[n, k]`): column `c` of `B` is row `c` of `bt`, whose
/// pairs of `k` lie side by side, so a row rounds straight into pairs ([`round_row`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_columns(bt: &[f32], k: usize, cols: std::ops::Range<usize>, panel: &mut [u32]) {
    let pairs = k.div_ceil(2);
    let mut column = vec![0u32; pairs];
    for (j, c) in cols.enumerate() {
        // SAFETY: the caller checked the instruction set.
        unsafe { round_row(&bt[c * k..(c + 1) * k], &mut column) };
        for (q, &pair) in column.iter().enumerate() {
            panel[q * NR + j] = pair;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_columns(_bt: &[f32], _k: usize, _cols: std::ops::Range<usize>, _panel: &mut [u32]) {
    unreachable!("bf16 matmul needs AVX512-BF16")
}

/// `out = a b` (`a` `[m, k]`, `out` `[m, n]` row-major). Panics when the sizes disagree or the
/// CPU lacks AVX512-BF16 (check [`available`]).
pub fn matmul(a: Operand<'_>, m: usize, b: &PackedB, out: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    assert_eq!(a.len(), m * k, "A holds m x k values");
    assert_eq!(out.len(), m * n, "C holds m x n values");
    assert!(available(), "bf16 matmul needs AVX512-BF16");
    if k == 0 {
        // An empty sum.
        out.fill(0.0);
        return;
    }
    if m == 0 || n == 0 {
        return;
    }
    let pairs = k.div_ceil(2);
    // The thread's kept buffer, taken out while in use: a product this thread starts while it
    // waits (rayon runs other jobs then) takes a fresh one instead of finding it borrowed.
    let mut a16 = SCRATCH.take();
    round_a(a, m, k, &mut a16);
    // Row blocks of about an equal share per thread, multiples of MR.
    let rows = (m.div_ceil(rayon::current_num_threads() * 4))
        .div_ceil(MR)
        .max(1)
        * MR;
    let a16_rows = &a16[..];
    out.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(t, c)| block(&a16_rows[t * rows * pairs..], c.len() / n, pairs, b, c));
    SCRATCH.set(a16);
}

/// `a` (`[m, k]`) rounded once into `a16`: row i holds `k / 2` (rounded up) bf16 pairs; zero
/// rows pad it to whole MR blocks (the kernel always computes MR rows: a fixed count keeps its
/// accumulators in registers). The buffer is kept for the thread's next product: a fresh one
/// of this size would be page-faulted in again each time.
fn round_a(a: Operand<'_>, m: usize, k: usize, a16: &mut Vec<u32>) {
    let pairs = k.div_ceil(2);
    a16.resize(m.div_ceil(MR) * MR * pairs, 0);
    match a {
        Operand::Rows(a) => a16[..m * pairs]
            .par_chunks_mut(pairs.max(1))
            .zip(a.par_chunks(k.max(1)))
            // SAFETY: the caller (`matmul`) checked `available()`.
            .for_each(|(dst, row)| unsafe { round_row(row, dst) }),
        Operand::Transposed(at) => a16[..m * pairs]
            .par_chunks_mut(16 * pairs.max(1))
            .enumerate()
            // SAFETY: the caller (`matmul`) checked `available()`.
            .for_each(|(block, dst)| unsafe { round_columns(at, m, k, 16 * block, dst) }),
    }
    a16[m * pairs..].fill(0);
}

/// Rows `i0..` of `A` (as many as `dst` holds, up to 16) rounded into pairs from `at`, `A`
/// stored transposed (`[k, m]`): each pair of `at`'s rows gives one pair of 16 rows of `A`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_columns(at: &[f32], m: usize, k: usize, i0: usize, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let pairs = k.div_ceil(2);
    let rows = dst.len() / pairs;
    let zeros = [0.0f32; 16];
    let mut packed = [0u32; 16];
    for q in 0..pairs {
        let lo = &at[2 * q * m + i0..2 * q * m + i0 + rows];
        let hi = if 2 * q + 1 < k {
            &at[(2 * q + 1) * m + i0..(2 * q + 1) * m + i0 + rows]
        } else {
            &zeros[..rows]
        };
        if rows == 16 {
            // SAFETY: 16 floats read from each of `lo` and `hi`, 16 u32 written to `packed`.
            unsafe {
                let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr()));
                let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr()));
                let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(lo));
                let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi));
                let pair = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                _mm512_storeu_si512(packed.as_mut_ptr().cast(), pair);
            }
        } else {
            for ((p, &l), &h) in packed.iter_mut().zip(lo).zip(hi) {
                *p = round_bits(l) | (round_bits(h) << 16);
            }
        }
        for (r, &pair) in packed[..rows].iter().enumerate() {
            dst[r * pairs + q] = pair;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_columns(_at: &[f32], _m: usize, _k: usize, _i0: usize, _dst: &mut [u32]) {
    unreachable!("bf16 matmul needs AVX512-BF16")
}

thread_local! {
    /// The calling thread's bf16 copy of `A`, reused from product to product.
    static SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `row` rounded to bf16 into `dst` as pairs (`dst[q]` holds `row[2q]` in its low half and
/// `row[2q + 1]` in its high half: the row's bf16 values in memory order); an odd last value is
/// paired with 0. Sixteen values per `vcvtneps2bf16` (nearest even, as [`round_bits`], except
/// that the instruction treats subnormal inputs as zero).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row(row: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let whole = row.len() / 16;
    for (i, chunk) in row.chunks_exact(16).enumerate() {
        // SAFETY: 16 floats read from `chunk`, 8 pairs (32 bytes) written within `dst`.
        unsafe {
            let bf = _mm512_cvtneps_pbh(_mm512_loadu_ps(chunk.as_ptr()));
            _mm256_storeu_si256(
                dst[8 * i..8 * i + 8].as_mut_ptr().cast(),
                std::mem::transmute::<__m256bh, __m256i>(bf),
            );
        }
    }
    let rest = &row[whole * 16..];
    for (q, d) in dst[whole * 8..].iter_mut().enumerate() {
        let lo = rest.get(2 * q).copied().unwrap_or(0.0);
        let hi = rest.get(2 * q + 1).copied().unwrap_or(0.0);
        *d = round_bits(lo) | (round_bits(hi) << 16);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_row(_row: &[f32], _dst: &mut [u32]) {
    unreachable!("bf16 matmul needs AVX512-BF16")
}

/// `c` (`rows` rows of `C`) from the bf16 rows `a16`.
fn block(a16: &[u32], rows: usize, pairs: usize, b: &PackedB, c: &mut [f32]) {
    let n = b.n;
    let panels = n.div_ceil(NR);
    let mut q0 = 0;
    while q0 < pairs {
        let q1 = (q0 + KC_PAIRS).min(pairs);
        for r0 in (0..rows).step_by(MR) {
            let mr = MR.min(rows - r0);
            for p in 0..panels {
                let nr = NR.min(n - p * NR);
                let tile = Tile {
                    a: &a16[r0 * pairs + q0..],
                    lda: pairs,
                    b: &b.data[(p * pairs + q0) * NR..(p * pairs + q1) * NR],
                    pairs: q1 - q0,
                    rows: mr,
                    cols: nr,
                    accumulate: q0 > 0,
                };
                // SAFETY: `available()` was checked by `matmul`; the slices bound every access.
                unsafe { tile.run(&mut c[r0 * n + p * NR..], n) };
            }
        }
        q0 = q1;
    }
}

/// One micro-kernel call: `rows x cols` of `C` (at most `MR x NR`) over `pairs` pairs of `k`.
struct Tile<'a> {
    a: &'a [u32],
    lda: usize,
    b: &'a [u32],
    pairs: usize,
    rows: usize,
    cols: usize,
    /// Add to `C` (a later block of `k`) rather than overwrite it.
    accumulate: bool,
}

impl Tile<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn run(&self, c: &mut [f32], ldc: usize) {
        use std::arch::x86_64::*;
        assert!(self.b.len() >= self.pairs * NR);
        assert!(self.a.len() >= (MR - 1) * self.lda + self.pairs);
        assert!(self.rows == 0 || c.len() >= (self.rows - 1) * ldc + self.cols);
        let zero = _mm512_setzero_ps();
        let mut acc = [[zero; 2]; MR];
        // SAFETY (loads): the assertions above bound every index read.
        unsafe {
            let (a, b) = (self.a.as_ptr(), self.b.as_ptr());
            for q in 0..self.pairs {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16).cast()));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let pair = *a.add(i * self.lda + q) as i32;
                    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
                }
            }
        }
        let mut tmp = [0f32; NR];
        for (i, acc) in acc.iter().enumerate().take(self.rows) {
            if self.cols == NR {
                // SAFETY: a whole row of the tile: NR floats from `i * ldc` lie within `c`
                // (asserted above).
                unsafe {
                    let at = c.as_mut_ptr().add(i * ldc);
                    let (mut v0, mut v1) = (acc[0], acc[1]);
                    if self.accumulate {
                        v0 = _mm512_add_ps(v0, _mm512_loadu_ps(at));
                        v1 = _mm512_add_ps(v1, _mm512_loadu_ps(at.add(16)));
                    }
                    _mm512_storeu_ps(at, v0);
                    _mm512_storeu_ps(at.add(16), v1);
                }
                continue;
            }
            // SAFETY: `tmp` holds NR = 2 x 16 floats.
            unsafe {
                _mm512_storeu_ps(tmp.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(tmp.as_mut_ptr().add(16), acc[1]);
            }
            let row = &mut c[i * ldc..i * ldc + self.cols];
            if self.accumulate {
                row.iter_mut().zip(&tmp).for_each(|(c, t)| *c += t);
            } else {
                row.copy_from_slice(&tmp[..self.cols]);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run(&self, _c: &mut [f32], _ldc: usize) {
        unreachable!("bf16 matmul needs AVX512-BF16")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-1, 1) from a fixed hash of the index (no generator dependency).
    fn values(n: usize, salt: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| (crate::splitmix64(i ^ salt) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }

    /// `x` (`[rows, cols]`) transposed.
    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows)
            .map(|t| x[(t % rows) * cols + t / rows])
            .collect()
    }

    #[test]
    fn rounds_to_nearest_even_and_keeps_specials() {
        assert_eq!(round(1.0), 1.0);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round(-2.5), -2.5);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(
            round(f32::MAX),
            f32::INFINITY,
            "rounds up past the largest bf16"
        );
    }

    /// The products equal the f64 products of the bf16-rounded operands up to f32 summation,
    /// on shapes that are and are not multiples of the kernel's blocks (odd `k`, `m < MR`,
    /// partial panels, several `k` blocks).
    #[test]
    fn products_equal_the_exact_products_of_the_rounded_operands() {
        if !available() {
            eprintln!("this CPU lacks AVX512-BF16: the bf16 kernel is not exercised");
            return;
        }
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 7),
            (37, 15, 70),
            (12, 1100, 32),
            (50, 64, 96),
            (33, 17, 64),
            (4, 0, 5),
        ] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            // The same operands stored transposed: `at` `[k, m]`, `bt` `[n, k]`.
            let at = transpose(&a, m, k);
            let bt = transpose(&b, k, n);
            let layouts = [
                (Operand::Rows(&a), Operand::Rows(&b)),
                (Operand::Transposed(&at), Operand::Rows(&b)),
                (Operand::Rows(&a), Operand::Transposed(&bt)),
                (Operand::Transposed(&at), Operand::Transposed(&bt)),
            ];
            for (left, right) in layouts {
                let mut c = vec![f32::NAN; m * n];
                matmul(left, m, &PackedB::new(right, k, n), &mut c);
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k)
                            .map(|t| {
                                f64::from(round(a[i * k + t])) * f64::from(round(b[t * n + j]))
                            })
                            .sum();
                        let err = (f64::from(c[i * n + j]) - exact).abs();
                        assert!(
                            err <= 1e-6 * (k as f64).sqrt().max(1.0),
                            "{m}x{k}x{n} ({left:?}, {right:?}) at ({i}, {j}): {} vs {exact}",
                            c[i * n + j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_result_differs_from_f32_by_bf16_rounding() {
        if !available() {
            eprintln!("this CPU lacks AVX512-BF16: the bf16 kernel is not exercised");
            return;
        }
        let (m, k, n) = (24, 256, 40);
        let (a, b) = (values(m * k, 3), values(k * n, 4));
        let mut c = vec![0.0; m * n];
        matmul(
            Operand::Rows(&a),
            m,
            &PackedB::new(Operand::Rows(&b), k, n),
            &mut c,
        );
        let mut worst = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let f32_exact: f64 = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]))
                    .sum();
                worst = worst.max((f64::from(c[i * n + j]) - f32_exact).abs());
            }
        }
        // bf16 keeps 8 significant bits: each product is off by up to ~2^-8 relative.
        assert!(worst > 1e-4 && worst < 0.1, "worst difference {worst}");
    }
}
