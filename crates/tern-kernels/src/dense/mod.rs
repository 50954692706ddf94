//! Dense kernels: the f32 / f16 baselines the ternary kernels are measured against, and the
//! int8 kernels for embeddings and the LM head (which BitNet keeps out of ternary form).
//!
//! Conventions everywhere: `W` is `[m][k]` row-major (`[out][in]`), `x` is `[n][k]` and `y` is
//! `[n][m]`, both token-major, so `y[t][o] = sum_j W[o][j] * x[t][j]`.
//!
//! * `n == 1` (decode) is memory-bound: tern's own GEMVs stream each weight row exactly once,
//!   several rows per load of `x`, split into contiguous row ranges over the [`ThreadPool`].
//! * `n > 1` (prefill) is compute-bound: f16 weights go to tern's own AVX-512 micro-kernel
//!   (`fp16_gemm`), f32 weights (and f16 without AVX-512) to the `gemm` crate's f32 kernel
//!   (what candle uses), each task on its own column block of `y` (`run_columns`).
//! * Several independent rows that must each get the GEMV's bits (batched decode, where a
//!   sequence's logits may not depend on what else is in the batch): [`gemv_f16_rows`] and
//!   [`gemv_f32_rows`] read each block of weight rows from memory once and run the GEMV's own
//!   per-row arithmetic on it for every activation row, while the block sits in L1.
//! * int8 ([`Int8Matrix`]) uses integer accumulation, so every instruction set gives
//!   bit-identical results, like the ternary kernels.

mod fp16;
#[cfg(target_arch = "x86_64")]
mod fp16_gemm;
mod fp32;
mod int8;

pub use fp16::{
    gemv_f16, gemv_f16_rows, gemv_f16_rows_with, gemv_f16_with, matmul_f16, matmul_f16_with,
};
pub use fp32::{gemv_f32, gemv_f32_rows, gemv_f32_rows_with, gemv_f32_with, matmul_f32};
pub use int8::{gemv_i8, gemv_i8_with, Int8Matrix, I8_ALIGN};

use crate::cpu::check_isa;
use crate::pool::{Chunks, Cols, ColsPiece, ThreadPool};
use std::ops::Range;

/// Below this much work (weight elements x tokens) a kernel runs on the calling thread: waking
/// a worker costs about as much as the whole product, and decode makes hundreds of such calls.
const INLINE_WORK: usize = 1 << 16;

/// Row ranges handed to tasks start at multiples of this, so that (for `n == 1`) no two tasks
/// write the same 64-byte line of `y`.
const ROW_UNIT: usize = 16;

/// How many tasks `work` is worth: one per pool thread, or one (inline) when small.
fn task_count(work: usize, pool: &ThreadPool) -> usize {
    // Four runs per thread, as the ternary kernels: a thread the OS delays holds up a small
    // share only.
    if work < INLINE_WORK || pool.threads() == 1 {
        1
    } else {
        pool.threads() * 4
    }
}

/// Runs `f(rows, &mut y[rows])` over disjoint row ranges covering `0..y.len()` on the pool
/// (or inline when `work` is small); ranges start at multiples of [`ROW_UNIT`].
fn run_rows(
    work: usize,
    pool: &ThreadPool,
    y: &mut [f32],
    f: &(dyn Fn(Range<usize>, &mut [f32]) + Sync),
) {
    let m = y.len();
    let tasks = task_count(work, pool);
    if tasks == 1 {
        f(0..m, y);
        return;
    }
    pool.run_split(
        tasks,
        Chunks::new(y, 1).align(ROW_UNIT),
        &|_, (rows, ys)| {
            if !rows.is_empty() {
                f(rows, ys);
            }
        },
    );
}

/// Prefill (`n > 1` tokens) on the pool: `f(piece)` computes output columns `piece.cols()` of
/// `y` (`[n][m]`) for every token. Tasks own disjoint column ranges (starting at multiples of
/// [`ROW_UNIT`]) and each multiplies its own rows of W single-threaded, so no second thread
/// pool (such as `gemm`'s rayon one) competes with ours for the cores.
/// Handles the empty shapes (`k == 0` gives zeros) before calling `f`.
fn run_columns(
    (n, m, k): (usize, usize, usize),
    tasks_per_thread: usize,
    y: &mut [f32],
    pool: &ThreadPool,
    f: &(dyn Fn(ColsPiece<f32>) + Sync),
) {
    assert!(y.len() >= n * m, "dense prefill: y is shorter than {n}x{m}");
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        y[..n * m].fill(0.0);
        return;
    }
    let tasks = if pool.threads() == 1 || n * m * k < INLINE_WORK {
        1
    } else {
        pool.threads() * tasks_per_thread
    };
    let parts = Cols::new(&mut y[..n * m], n, m, 1).align(ROW_UNIT);
    pool.run_split(tasks, parts, &|_, piece| {
        if !piece.cols().is_empty() {
            f(piece);
        }
    });
}

/// Weight bytes per block of [`gemv_rows`]: well inside a 32-48 KiB L1, so that the second and
/// later activation rows find the block there.
const ROWS_BLOCK_BYTES: usize = 16 << 10;

/// The GEMV of `n` activation rows: `y[t][o] = rows(w row o, x[t])` with each output computed
/// by `rows` exactly as the single-row GEMV computes it (same function, same operands), so row
/// `t` of `y` has the bits of `gemv(w, x[t])` whatever `n` and the other rows are. Tasks own
/// column ranges of `y` (rows of W); within a task W is walked once, a block of
/// [`ROWS_BLOCK_BYTES`] at a time, each block applied to all `n` rows before the next.
#[allow(clippy::too_many_arguments)]
fn gemv_rows<T: Sync>(
    w: &[T],
    (m, k): (usize, usize),
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
    isa: crate::cpu::Isa,
    rows: fn(&[T], usize, &[f32], &mut [f32], crate::cpu::Isa),
    multi: Option<MultiRows<T>>,
) {
    assert_eq!(w.len(), m * k, "gemv_rows: w is not {m}x{k}");
    assert_eq!(x.len(), n * k, "gemv_rows: x is not {n}x{k}");
    assert_eq!(y.len(), n * m, "gemv_rows: y is not {n}x{m}");
    if n == 0 || m == 0 {
        return;
    }
    let block = (ROWS_BLOCK_BYTES / (k * std::mem::size_of::<T>()).max(1)).max(1);
    let tasks = task_count(m * k * n, pool);
    let parts = Cols::new(y, n, m, 1).align(ROW_UNIT);
    pool.run_split(tasks, parts, &|_, mut y| {
        let cols = y.cols();
        let mut r0 = cols.start;
        while r0 < cols.end {
            let r1 = (r0 + block).min(cols.end);
            let wb = &w[r0 * k..r1 * k];
            match multi {
                Some(multi) => multi(wb, k, x, n, &mut |t, o, v| {
                    y.row(t)[r0 - cols.start + o] = v
                }),
                None => {
                    for t in 0..n {
                        let out = &mut y.row(t)[r0 - cols.start..r1 - cols.start];
                        rows(wb, k, &x[t * k..(t + 1) * k], out, isa);
                    }
                }
            }
            r0 = r1;
        }
    });
}

/// A kernel of [`gemv_rows`] that takes every activation row at once, the weights of the block
/// converted once for all of them: `store(t, o, dot(w row o, x row t))` with the bits of the
/// `rows` kernel, straight into the output (no buffer per call on the decode path).
type MultiRows<T> = fn(&[T], usize, &[f32], usize, &mut dyn FnMut(usize, usize, f32));

#[cfg(test)]
mod rows_tests {
    use super::fp32::tests::{check, random_f32, reference};
    use super::*;
    use crate::cpu::Isa;
    use crate::rng::Rng;
    use half::f16;

    /// Bitwise equality, NaN-free inputs.
    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Every row of the multi-row GEMVs has the bits of the single-row GEMV of that row on
        /// the same instruction set (the scalar reference of batch invariance), for ragged
        /// shapes, several weight blocks per task and any thread count; and agrees with the
        /// f64 reference to f32 rounding.
        #[test]
        fn rows_have_the_bits_of_the_gemv_on_every_isa(
            m in 1usize..90,
            k in prop_k(),
            n in 1usize..9,
            threads in 1usize..4,
            seed in 0u64..1 << 32,
        ) {
            let mut rng = Rng::new(seed);
            let w32 = random_f32(&mut rng, m * k);
            let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let x = random_f32(&mut rng, n * k);
            let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let refs32 = reference(&w32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), m, k, &xd, n);
            let refs16 = reference(&w16.iter().map(|v| v.to_f64()).collect::<Vec<_>>(), m, k, &xd, n);
            let pool = ThreadPool::new(threads);
            for isa in Isa::available() {
                let mut y16 = vec![f32::NAN; n * m];
                let mut y32 = vec![f32::NAN; n * m];
                gemv_f16_rows_with(&w16, m, k, &x, n, &mut y16, &pool, isa);
                gemv_f32_rows_with(&w32, m, k, &x, n, &mut y32, &pool, isa);
                check(&y16, &refs16, &format!("gemv_f16_rows {n}x{m}x{k} {isa:?}"));
                check(&y32, &refs32, &format!("gemv_f32_rows {n}x{m}x{k} {isa:?}"));
                for t in 0..n {
                    let xt = &x[t * k..(t + 1) * k];
                    let mut one = vec![f32::NAN; m];
                    gemv_f16_with(&w16, m, k, xt, &mut one, &ThreadPool::new(1), isa);
                    proptest::prop_assert!(
                        same_bits(&y16[t * m..(t + 1) * m], &one),
                        "f16 row {} of {}x{}x{} on {:?}", t, n, m, k, isa
                    );
                    gemv_f32_with(&w32, m, k, xt, &mut one, &ThreadPool::new(1), isa);
                    proptest::prop_assert!(
                        same_bits(&y32[t * m..(t + 1) * m], &one),
                        "f32 row {} of {}x{}x{} on {:?}", t, n, m, k, isa
                    );
                }
            }
        }
    }

    /// Widths with every tail of the SIMD loops, and wide rows (one row per weight block).
    fn prop_k() -> impl proptest::strategy::Strategy<Value = usize> {
        proptest::prop_oneof![1usize..200, 4000usize..9000]
    }

    #[test]
    fn empty_shapes() {
        let pool = ThreadPool::new(2);
        let mut y = vec![f32::NAN; 6];
        gemv_f16_rows(&[], 3, 0, &[], 2, &mut y, &pool);
        assert!(y.iter().all(|&v| v == 0.0));
        gemv_f32_rows(&[], 0, 4, &[0.0; 8], 2, &mut [], &pool);
        gemv_f32_rows(&[0.0; 12], 3, 4, &[], 0, &mut [], &pool);
    }
}
