//! A 64-byte aligned, zero-initialised byte buffer: SIMD kernels load whole cache lines and
//! AVX-512 loads are fastest when they do not straddle two.

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Owned bytes whose start is 64-byte aligned and whose capacity is a whole number of lines
/// (the slack past `len` is zero, so kernels may over-read up to the next line boundary).
#[derive(Clone)]
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Self {
        AlignedBytes {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
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

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}
