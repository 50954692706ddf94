//! Dense kernels: the f32 / f16 baselines the ternary kernels are measured against, and the
//! int8 kernels for embeddings and the LM head (which BitNet keeps out of ternary form).
//!
//! Conventions everywhere: `W` is `[m][k]` row-major (`[out][in]`), `x` is `[n][k]` and `y` is
//! `[n][m]`, both token-major, so `y[t][o] = sum_j W[o][j] * x[t][j]`.
//!
//! * `n == 1` (decode) is memory-bound: tern's own GEMVs stream each weight row exactly once,
//!   several rows per load of `x`, split into contiguous row ranges over the [`ThreadPool`].
//! * `n > 1` (prefill) is compute-bound and goes to the `gemm` crate (what candle uses).
//! * int8 ([`Int8Matrix`]) uses integer accumulation, so every instruction set gives
//!   bit-identical results, like the ternary kernels.

mod fp16;
#[cfg(target_arch = "x86_64")]
mod fp16_gemm;
mod fp32;
mod int8;

pub use fp16::{gemm_f16, gemv_f16, gemv_f16_with, matmul_f16};
pub use fp32::{gemm_f32, gemv_f32, gemv_f32_with, matmul_f32};
pub use int8::{gemv_i8, gemv_i8_with, Int8Matrix, I8_ALIGN};

use crate::cpu::Isa;
use crate::pool::{SyncPtr, ThreadPool};
use std::ops::Range;

/// Below this much work (weight elements x tokens) a kernel runs on the calling thread: waking
/// a worker costs about as much as the whole product, and decode makes hundreds of such calls.
const INLINE_WORK: usize = 1 << 16;

/// Row ranges handed to tasks start at multiples of this, so that (for `n == 1`) no two tasks
/// write the same 64-byte line of `y`.
const ROW_UNIT: usize = 16;

/// Panics unless this CPU can run `isa`: kernels are `#[target_feature]` code and running them
/// on a CPU without those features is undefined behaviour, so the `_with` entry points check.
fn check_isa(isa: Isa, what: &str) {
    assert!(
        isa.is_supported(),
        "{what}: instruction set {} is not supported by this CPU (see Isa::available)",
        isa.name()
    );
}

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

/// Rows of `0..m` for `task` of `tasks`: contiguous, disjoint, covering, aligned to [`ROW_UNIT`].
fn task_rows(m: usize, tasks: usize, task: usize) -> Range<usize> {
    let units = m.div_ceil(ROW_UNIT);
    let lo = (units * task / tasks * ROW_UNIT).min(m);
    let hi = (units * (task + 1) / tasks * ROW_UNIT).min(m);
    lo..hi
}

/// Runs `f(rows, &mut y[rows])` over disjoint row ranges covering `0..y.len()` on the pool
/// (or inline when `work` is small).
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
    let yp = SyncPtr(y.as_mut_ptr());
    pool.run(tasks, &|task| {
        let rows = task_rows(m, tasks, task);
        if rows.is_empty() {
            return;
        }
        // SAFETY: `task_rows` ranges are disjoint and within `0..m = 0..y.len()`, so every task
        // gets its own part of `y`; `y` is borrowed mutably for the whole `pool.run`, which
        // returns only after all tasks have finished.
        let ys = unsafe { std::slice::from_raw_parts_mut(yp.get().add(rows.start), rows.len()) };
        f(rows, ys);
    });
}

/// Prefill (`n > 1` tokens) on the pool: `f(cols, y_at)` computes output columns `cols` for
/// every token, writing `y[t * m + o]` as `y_at.add(t * m + o - cols.start)`. Tasks own
/// disjoint column ranges and each multiplies its own rows of W single-threaded, so no second
/// thread pool (such as `gemm`'s rayon one) competes with ours for the cores.
/// Handles the empty shapes (`k == 0` gives zeros) before calling `f`.
fn run_columns(
    (n, m, k): (usize, usize, usize),
    tasks_per_thread: usize,
    y: &mut [f32],
    pool: &ThreadPool,
    f: &(dyn Fn(Range<usize>, SyncPtr<f32>) + Sync),
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
    let yp = SyncPtr(y.as_mut_ptr());
    pool.run(tasks, &|task| {
        let cols = task_rows(m, tasks, task);
        if cols.is_empty() {
            return;
        }
        // SAFETY: cols.start < m <= y.len(), so the pointer stays inside `y`, which is borrowed
        // mutably until `pool.run` returns after every task.
        let at = SyncPtr(unsafe { yp.get().add(cols.start) });
        f(cols, at);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_rows_cover_disjointly() {
        for m in [0, 1, 15, 16, 17, 100, 1000] {
            for tasks in 1..6 {
                let mut next = 0;
                for t in 0..tasks {
                    let r = task_rows(m, tasks, t);
                    assert_eq!(r.start, next, "m {m} tasks {tasks} task {t}: {r:?}");
                    assert!(r.start.is_multiple_of(ROW_UNIT) || r.start == m);
                    next = r.end;
                }
                assert_eq!(next, m);
            }
        }
    }
}
