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
//! * int8 ([`Int8Matrix`]) uses integer accumulation, so every instruction set gives
//!   bit-identical results, like the ternary kernels.

mod fp16;
#[cfg(target_arch = "x86_64")]
mod fp16_gemm;
mod fp32;
mod int8;

pub use fp16::{gemv_f16, gemv_f16_with, matmul_f16, matmul_f16_with};
pub use fp32::{gemv_f32, gemv_f32_with, matmul_f32};
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
