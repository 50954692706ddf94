//! A persistent thread pool for kernels that are called hundreds of times per token.
//!
//! Fork-join pools (rayon) cost microseconds per call; decode makes ~200 matrix calls per token,
//! so the workers here spin on an epoch counter for a while after each job and only then park.
//! The calling thread takes tasks too, so `threads = 2` means one extra worker.
//!
//! A job is `n_tasks` calls of one closure; tasks are handed out by an atomic counter, so any
//! thread may run any task and callers must make tasks independent.
//!
//! Tasks that write one output buffer get their own part of it from [`ThreadPool::run_split`]:
//! [`Chunks`] (contiguous ranges), [`Cols`] (column blocks of a row-major matrix) and [`Cells`]
//! (cells of a grid, numbered down the columns) cut a `&mut` buffer into one piece per task.
//! This module is the only place where such pieces are made from raw pointers, and its SAFETY
//! notes carry the proof that pieces of different tasks are disjoint.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking. Long enough to bridge the gap between two
/// matrix calls of one token, short enough not to burn a core between requests.
const SPIN: Duration = Duration::from_micros(300);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped (under `sleep`) to publish a job or shutdown.
    epoch: AtomicU64,
    /// The current job, lifetime-erased. Written only while no worker is inside a job.
    job: UnsafeCell<Option<*const Job>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not finished the current job yet.
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the single thread holding `ThreadPool::run_lock` while every
// worker is idle (pending == 0), and read by workers only between observing a new epoch
// (Acquire) and decrementing `pending` (Release); those orderings make the accesses disjoint.
unsafe impl Sync for Shared {}
// SAFETY: the raw job pointer is only dereferenced under the protocol above; the rest is
// atomics and locks.
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool running jobs on `threads` threads in total (the caller plus `threads - 1` workers).
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("tern-worker-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a kernel worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0) .. f(n_tasks - 1)` across the pool and returns when all have finished.
    /// Panics (after all tasks ended) if a task panicked.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        // One job at a time. A second caller (another thread, or a task calling `run` again)
        // runs its tasks inline: correct, never a deadlock, just not parallel.
        let _one_job_at_a_time = match self.run_lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                (0..n_tasks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: erasing the lifetime is sound because this function does not return before
        // `pending` is back to 0, i.e. before every worker has stopped using the pointer.
        let f_static: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        // SAFETY: no worker is inside a job (pending == 0 since the previous run returned).
        unsafe { *s.job.get() = Some(f_static) };
        s.n_tasks.store(n_tasks, Relaxed);
        s.next.store(0, Relaxed);
        s.panicked.store(false, Relaxed);
        s.pending.store(self.workers.len(), Relaxed);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_tasks(s, f)));
        // Spin briefly (the common case: the worker is a few microseconds behind), then yield
        // so that a worker the OS put on this core can finish its task.
        let mut spins = 0u32;
        while s.pending.load(Acquire) != 0 {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(p) = caller {
            std::panic::resume_unwind(p);
        }
        if s.panicked.load(Relaxed) {
            panic!("a tern kernel task panicked on a worker thread");
        }
    }

    /// Runs `f(task, piece)` for `task` in `0..tasks`, where `piece` is the task's own part of
    /// `parts` (a [`Chunks`], [`Cols`], [`Cells`], or a tuple, array or `Option` of them): the
    /// safe way for tasks to write disjoint parts of shared output buffers.
    pub fn run_split<S: Split>(
        &self,
        tasks: usize,
        parts: S,
        f: &(dyn Fn(usize, S::Piece) + Sync),
    ) {
        self.run(tasks, &|task| {
            // SAFETY: `run` calls this closure exactly once for each task in `0..tasks`, and
            // `parts` was moved into this call and is dropped at its end, so no piece of it is
            // made twice for one task.
            let piece = unsafe { parts.piece(task, tasks) };
            f(task, piece)
        });
    }
}

/// Share `task` of `tasks` of the units `0..units`: contiguous, near-equal ranges starting at
/// multiples of `align` (or clamped to `units`). Over `task = 0..tasks` the shares are in
/// order, disjoint and cover `0..units`: share `i` is `at(i)..at(i + 1)` with
/// `at(i) = min(floor(ceil(units / align) * i / tasks) * align, units)`, which is monotone in
/// `i`, 0 at `i = 0` and `units` at `i = tasks`.
pub fn share(units: usize, align: usize, tasks: usize, task: usize) -> Range<usize> {
    assert!(
        task < tasks && align > 0,
        "share: task {task} of {tasks}, align {align}"
    );
    let blocks = units.div_ceil(align);
    let at = |i: usize| (blocks * i / tasks * align).min(units);
    at(task)..at(task + 1)
}

/// Buffers that [`ThreadPool::run_split`] cuts into one piece per task.
///
/// # Safety
/// For one value, the pieces `piece(task, tasks)` for distinct `task < tasks` (one `tasks`)
/// must give access to disjoint memory, all of it memory the value borrows mutably.
pub unsafe trait Split: Sync {
    type Piece;
    /// The part of task `task` of `tasks`.
    ///
    /// # Safety
    /// At most one call per task for one value, all with the same `tasks`.
    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece;
}

/// A slice cut into units of `unit` elements (the last may be shorter), shared among tasks by
/// [`share`]: each task gets its units as one `&mut [T]`, with the unit range.
pub struct Chunks<'a, T> {
    ptr: *mut T,
    len: usize,
    unit: usize,
    align: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<'a, T> Chunks<'a, T> {
    pub fn new(data: &'a mut [T], unit: usize) -> Self {
        assert!(unit > 0, "Chunks: units must not be empty");
        Chunks {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            unit,
            align: 1,
            _borrow: PhantomData,
        }
    }

    /// Shares start at multiples of `align` units (e.g. so that no two tasks write one cache
    /// line).
    pub fn align(self, align: usize) -> Self {
        assert!(align > 0, "Chunks: align must be positive");
        Chunks { align, ..self }
    }

    pub fn units(&self) -> usize {
        self.len.div_ceil(self.unit)
    }
}

// SAFETY: tasks on other threads receive `&mut [T]` pieces, which is sending `T` there.
unsafe impl<T: Send> Sync for Chunks<'_, T> {}

// SAFETY: unit `u` is elements `u * unit .. (u + 1) * unit` (clamped to `len`), so disjoint
// unit ranges (distinct shares) give disjoint element ranges, all inside the borrowed slice.
unsafe impl<'a, T: Send> Split for Chunks<'a, T> {
    type Piece = (Range<usize>, &'a mut [T]);

    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece {
        let units = share(self.units(), self.align, tasks, task);
        let lo = (units.start * self.unit).min(self.len);
        let hi = (units.end * self.unit).min(self.len);
        // SAFETY: `lo <= hi <= len` keeps the piece inside the slice borrowed for `'a`; the
        // trait's contract and the disjointness above make it the only piece over this memory.
        let part = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(lo), hi - lo) };
        (units, part)
    }
}

/// A row-major matrix `[rows][row_len]` whose columns are cut into units of `unit` columns
/// (the last may be narrower) and shared among tasks by [`share`]: each task gets its columns
/// of every row ([`ColsPiece`]).
pub struct Cols<'a, T> {
    ptr: *mut T,
    rows: usize,
    row_len: usize,
    unit: usize,
    align: usize,
    /// This matrix's units are `first .. first + units()` of `total` split among the tasks.
    first: usize,
    total: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<'a, T> Cols<'a, T> {
    pub fn new(data: &'a mut [T], rows: usize, row_len: usize, unit: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * row_len,
            "Cols: not a {rows}x{row_len} matrix"
        );
        assert!(unit > 0, "Cols: units must not be empty");
        let units = row_len.div_ceil(unit);
        Cols {
            ptr: data.as_mut_ptr(),
            rows,
            row_len,
            unit,
            align: 1,
            first: 0,
            total: units,
            _borrow: PhantomData,
        }
    }

    /// Shares start at multiples of `align` units.
    pub fn align(self, align: usize) -> Self {
        assert!(align > 0, "Cols: align must be positive");
        Cols { align, ..self }
    }

    /// Makes this matrix units `first .. first + units()` of `total` units split among the
    /// tasks, for jobs that write several matrices (each task gets the part of its share that
    /// falls in each).
    pub fn within(self, first: usize, total: usize) -> Self {
        assert!(
            first + self.units() <= total,
            "Cols::within: outside the total"
        );
        Cols {
            first,
            total,
            ..self
        }
    }

    pub fn units(&self) -> usize {
        self.row_len.div_ceil(self.unit)
    }
}

// SAFETY: as for `Chunks`: tasks on other threads receive access to elements of `T`.
unsafe impl<T: Send> Sync for Cols<'_, T> {}

// SAFETY: a task's units are its share of `0..total` intersected with this matrix's
// `first .. first + units()`, so distinct tasks get disjoint unit ranges, hence disjoint column
// ranges (unit `u` is columns `u * unit ..`, clamped to `row_len`), hence disjoint elements
// `(r, c)` at `r * row_len + c`; every such element lies inside the borrowed matrix.
unsafe impl<'a, T: Send> Split for Cols<'a, T> {
    type Piece = ColsPiece<'a, T>;

    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece {
        let global = share(self.total, self.align, tasks, task);
        let own = self.first..self.first + self.units();
        let lo = global.start.clamp(own.start, own.end) - self.first;
        let hi = global.end.clamp(own.start, own.end) - self.first;
        let cols = (lo * self.unit).min(self.row_len)..(hi * self.unit).min(self.row_len);
        ColsPiece {
            ptr: self.ptr,
            rows: self.rows,
            row_len: self.row_len,
            units: lo..hi,
            cols,
            _borrow: PhantomData,
        }
    }
}

/// One task's columns of a [`Cols`] matrix.
pub struct ColsPiece<'a, T> {
    /// The whole matrix.
    ptr: *mut T,
    rows: usize,
    row_len: usize,
    units: Range<usize>,
    cols: Range<usize>,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<T> ColsPiece<'_, T> {
    /// This piece's units (of its own matrix).
    pub fn units(&self) -> Range<usize> {
        self.units.clone()
    }

    /// This piece's columns.
    pub fn cols(&self) -> Range<usize> {
        self.cols.clone()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements between two rows of the matrix.
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Row `r`, columns [`ColsPiece::cols`].
    pub fn row(&mut self, r: usize) -> &mut [T] {
        assert!(r < self.rows, "ColsPiece: row {r} of {}", self.rows);
        // SAFETY: `(r, cols)` lies inside the matrix (`r < rows`, `cols.end <= row_len`), and
        // the piece owns its columns exclusively (see `Split for Cols`); `&mut self` keeps one
        // row borrowed at a time.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.add(r * self.row_len + self.cols.start),
                self.cols.len(),
            )
        }
    }

    /// Pointer to row 0, column `cols().start`, for kernels that store through pointers (SIMD,
    /// the `gemm` crate): while `self` is mutably borrowed, the caller may write element
    /// `(r, c)` for `r < rows()`, `c` in `cols()` at `r * row_len() + c - cols().start` from it,
    /// and nothing else.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.wrapping_add(self.cols.start)
    }
}

/// A row-major grid of `[rows][cols]` cells of `cell` elements, numbered down each column
/// (cell `(r, c)` is unit `c * rows + r`) and shared among tasks by [`share`] of those numbers:
/// attention's `[token][head]` outputs, split so that a task's heads stay together.
pub struct Cells<'a, T> {
    ptr: *mut T,
    rows: usize,
    cols: usize,
    cell: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<'a, T> Cells<'a, T> {
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, cell: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols * cell,
            "Cells: not {rows}x{cols} cells of {cell}"
        );
        Cells {
            ptr: data.as_mut_ptr(),
            rows,
            cols,
            cell,
            _borrow: PhantomData,
        }
    }
}

// SAFETY: as for `Chunks`.
unsafe impl<T: Send> Sync for Cells<'_, T> {}

// SAFETY: unit `u < rows * cols` is cell `(u % rows, u / rows)`, a bijection, and cell `(r, c)`
// is elements `(r * cols + c) * cell ..` plus `cell`, so distinct units are disjoint memory
// inside the grid; distinct tasks get disjoint unit ranges.
unsafe impl<'a, T: Send> Split for Cells<'a, T> {
    type Piece = CellsPiece<'a, T>;

    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece {
        CellsPiece {
            ptr: self.ptr,
            rows: self.rows,
            cols: self.cols,
            cell: self.cell,
            units: share(self.rows * self.cols, 1, tasks, task),
            _borrow: PhantomData,
        }
    }
}

/// One task's cells of a [`Cells`] grid.
pub struct CellsPiece<'a, T> {
    ptr: *mut T,
    rows: usize,
    cols: usize,
    cell: usize,
    units: Range<usize>,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<T> CellsPiece<'_, T> {
    /// The cell numbers this piece owns.
    pub fn units(&self) -> Range<usize> {
        self.units.clone()
    }

    /// Cell number `u` (row `u % rows`, column `u / rows`).
    pub fn cell(&mut self, u: usize) -> &mut [T] {
        assert!(
            self.units.contains(&u),
            "CellsPiece: cell {u} is not this task's"
        );
        let (r, c) = (u % self.rows, u / self.rows);
        // SAFETY: `u < rows * cols`, so the cell lies inside the grid, and this piece owns it
        // exclusively (see `Split for Cells`); `&mut self` keeps one cell borrowed at a time.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add((r * self.cols + c) * self.cell), self.cell)
        }
    }
}

// SAFETY: (this impl and the three below) the parts are separate values, each borrowing its
// own memory, and each is asked for each task's piece at most once, as the caller of the
// composite's `piece` promised.
unsafe impl<A: Split, B: Split> Split for (A, B) {
    type Piece = (A::Piece, B::Piece);
    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece {
        // SAFETY: see above.
        unsafe { (self.0.piece(task, tasks), self.1.piece(task, tasks)) }
    }
}

// SAFETY: see above.
unsafe impl<A: Split, B: Split, C: Split> Split for (A, B, C) {
    type Piece = (A::Piece, B::Piece, C::Piece);
    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece {
        // SAFETY: see above.
        unsafe {
            (
                self.0.piece(task, tasks),
                self.1.piece(task, tasks),
                self.2.piece(task, tasks),
            )
        }
    }
}

// SAFETY: see above.
unsafe impl<S: Split, const N: usize> Split for [S; N] {
    type Piece = [S::Piece; N];
    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece {
        // SAFETY: see above.
        std::array::from_fn(|i| unsafe { self[i].piece(task, tasks) })
    }
}

// SAFETY: see above.
unsafe impl<S: Split> Split for Option<S> {
    type Piece = Option<S::Piece>;
    unsafe fn piece(&self, task: usize, tasks: usize) -> Self::Piece {
        // SAFETY: see above.
        self.as_ref().map(|s| unsafe { s.piece(task, tasks) })
    }
}

fn take_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let n = s.n_tasks.load(Relaxed);
    loop {
        let i = s.next.fetch_add(1, Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin, then park until the epoch moves.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Acquire) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.epoch.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
        }
        seen = s.epoch.load(Acquire);
        if s.shutdown.load(Acquire) {
            return;
        }
        // SAFETY: the caller published `job` before bumping the epoch we just observed and
        // keeps the closure alive until we decrement `pending` below.
        let f = unsafe { &*(*s.job.get()).expect("job published with epoch") };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_tasks(s, f))).is_err() {
            s.panicked.store(true, Relaxed);
        }
        s.pending.fetch_sub(1, Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Release);
        self.shared.epoch.fetch_add(1, SeqCst);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({} threads)", self.threads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            for n in [1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Relaxed) == 1),
                    "threads {threads} n {n}"
                );
            }
        }
    }

    #[test]
    fn nested_and_concurrent_runs_complete() {
        let pool = ThreadPool::new(2);
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                count.fetch_add(1, Relaxed);
            });
        });
        assert_eq!(count.load(Relaxed), 12);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..50 {
                        pool.run(5, &|_| {
                            count.fetch_add(1, Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(count.load(Relaxed), 12 + 3 * 50 * 5);
    }

    #[test]
    fn workers_wake_after_parking() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(SPIN * 4); // let the worker park
        let count = AtomicUsize::new(0);
        for _ in 0..3 {
            pool.run(8, &|_| {
                count.fetch_add(1, Relaxed);
            });
        }
        assert_eq!(count.load(Relaxed), 24);
    }

    #[test]
    fn shares_cover_disjointly_and_aligned() {
        for units in [0, 1, 15, 16, 17, 100, 1000] {
            for align in [1, 2, 16] {
                for tasks in 1..7 {
                    let mut next = 0;
                    for t in 0..tasks {
                        let r = share(units, align, tasks, t);
                        assert_eq!(r.start, next, "{units} {align} {tasks} {t}: {r:?}");
                        assert!(r.start.is_multiple_of(align) || r.start == units);
                        next = r.end;
                    }
                    assert_eq!(next, units);
                }
            }
        }
    }

    /// Every element of every piece gets the number of the task that owns it, once.
    fn mark_chunks(pool: &ThreadPool, tasks: usize, len: usize, unit: usize, align: usize) {
        let mut v = vec![usize::MAX; len];
        pool.run_split(tasks, Chunks::new(&mut v, unit).align(align), &|task,
                                                                        (
            units,
            part,
        )| {
            assert_eq!(units, share(len.div_ceil(unit), align, tasks, task));
            assert_eq!(
                part.len(),
                (units.end * unit).min(len) - (units.start * unit).min(len)
            );
            for x in part {
                assert_eq!(*x, usize::MAX);
                *x = task;
            }
        });
        for (i, &x) in v.iter().enumerate() {
            let u = i / unit;
            let owner =
                (0..tasks).find(|&t| share(len.div_ceil(unit), align, tasks, t).contains(&u));
            assert_eq!(Some(x), owner, "element {i}");
        }
    }

    #[test]
    fn chunks_give_each_task_its_own_share() {
        let pools = [ThreadPool::new(1), ThreadPool::new(3)];
        for pool in &pools {
            for (len, unit, align) in [(0, 1, 1), (1, 1, 1), (37, 4, 1), (100, 1, 16), (65, 7, 2)] {
                for tasks in [1, 2, 5, 9] {
                    mark_chunks(pool, tasks, len, unit, align);
                }
            }
        }
    }

    #[test]
    fn cols_of_several_matrices_cover_each_element_once() {
        let pool = ThreadPool::new(3);
        // Two matrices of 3 rows, 37 and 20 columns, units of 4 columns (10 + 5 = 15 units).
        let (mut a, mut b) = (vec![0u32; 3 * 37], vec![0u32; 3 * 20]);
        for tasks in [1, 2, 4, 7, 20] {
            a.fill(0);
            b.fill(0);
            let parts = [
                Cols::new(&mut a, 3, 37, 4).align(2).within(0, 15),
                Cols::new(&mut b, 3, 20, 4).align(2).within(10, 15),
            ];
            pool.run_split(tasks, parts, &|task, pieces| {
                let global = share(15, 2, tasks, task);
                for (i, mut p) in pieces.into_iter().enumerate() {
                    let first = [0, 10][i];
                    let own = first..first + [10, 5][i];
                    for u in p.units() {
                        assert!(global.contains(&(u + first)) && own.contains(&(u + first)));
                    }
                    let cols = p.cols();
                    for r in 0..p.rows() {
                        let row = p.row(r);
                        assert_eq!(row.len(), cols.len());
                        row.iter_mut().for_each(|x| *x += 1);
                    }
                }
            });
            assert!(a.iter().chain(&b).all(|&x| x == 1), "tasks {tasks}");
        }
    }

    #[test]
    fn cells_are_numbered_down_columns() {
        let pool = ThreadPool::new(2);
        let (rows, cols, cell) = (3, 5, 2);
        let mut v = vec![usize::MAX; rows * cols * cell];
        pool.run_split(4, Cells::new(&mut v, rows, cols, cell), &|_, mut p| {
            for u in p.units() {
                p.cell(u).fill(u);
            }
        });
        for r in 0..rows {
            for c in 0..cols {
                let at = (r * cols + c) * cell;
                assert_eq!(v[at..at + cell], [c * rows + r; 2]);
            }
        }
    }

    #[test]
    #[should_panic(expected = "is not this task's")]
    fn a_cell_of_another_task_is_refused() {
        let mut v = vec![0u8; 8];
        ThreadPool::new(1).run_split(2, Cells::new(&mut v, 2, 2, 2), &|task, mut p| {
            if task == 0 {
                p.cell(3);
            }
        });
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(16, &|i| {
                if i == 9 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            count.fetch_add(1, Relaxed);
        });
        assert_eq!(count.load(Relaxed), 4);
    }
}
