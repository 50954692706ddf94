//! A 64-byte aligned, zero-initialised byte buffer: SIMD kernels load whole cache lines and
//! AVX-512 loads are fastest when they do not straddle two.

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Owned bytes whose start is 64-byte aligned and whose capacity is a whole number of lines
/// (the slack past `len` is zero, so kernels may over-read up to the next line boundary).
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Self {
        let n = len.div_ceil(64);
        let mut lines: Vec<Line> = Vec::with_capacity(n);
        // Advise before the first write, which is when pages get their size.
        advise_huge_pages(lines.as_ptr().cast(), n * 64);
        lines.resize(n, Line([0; 64]));
        AlignedBytes { lines, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `Line` is a plain `[u8; 64]` with no padding, so the vector's storage is
        // `lines.len() * 64` initialised bytes; `len <= lines.len() * 64` by construction.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// Grows (zero-filled) or shrinks the logical length, reallocating only when needed.
    pub fn resize(&mut self, len: usize) {
        let need = len.div_ceil(64);
        if need > self.lines.len() {
            self.lines.resize(need, Line([0; 64]));
        }
        self.len = len;
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        let mut c = AlignedBytes::zeroed(self.len);
        c.as_mut_slice().copy_from_slice(self.as_slice());
        c
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

/// Asks the kernel to back a large buffer with transparent huge pages (where THP is in
/// `madvise` mode, as on the machines here). Streaming GEMV over tens of MB otherwise takes a
/// TLB miss every 4 KiB per stream. Call it before the buffer is first written; it is only a
/// hint and failures are ignored.
///
/// `start .. start + bytes` should be memory this program allocated (it may be uninitialised);
/// the call never reads or writes it, so it is safe whatever the range.
pub fn advise_huge_pages(start: *const u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = start as usize;
        let end = start.saturating_add(bytes);
        let lo = start.next_multiple_of(HUGE);
        let hi = end / HUGE * HUGE;
        if hi > lo {
            // SAFETY: MADV_HUGEPAGE only changes the paging policy of [lo, hi) and never the
            // contents of memory; on a range that is not mapped it fails with ENOMEM.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, bytes);
}
