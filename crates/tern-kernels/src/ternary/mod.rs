//! tern's compute layouts for ternary weights and the int8 x ternary GEMV/GEMM kernels.
//!
//! Both layouts are built around `vpdpbusd` (AVX-512 VNNI): one 32-bit lane multiplies four
//! unsigned bytes by four signed bytes and adds them into an i32. A 64-byte vector therefore
//! holds **16 output rows x 4 consecutive k** once unpacked, and a kernel broadcasts four
//! activation bytes of one token to all lanes. Weights are stored as codes `c = q + 1` in
//! {0, 1, 2} (unsigned, as `vpdpbusd` wants); the kernel computes `sum c*x` and subtracts the
//! token's activation sum, which equals `sum q*x` exactly.
//!
//! - [`Layout::Tern2`]: 2 bits per weight. A 64-byte block covers 16 rows x 16 k; byte
//!   `4l + j` holds, in bits `2i..2i+2`, the code of row `l`, column `16b + 4i + j`. Plane i
//!   unpacks with one shift and one AND.
//! - [`Layout::Tern3`]: base 3, 1.6 bits per weight. A 64-byte block covers 16 rows x 20 k;
//!   byte `4l + j` holds five codes for columns `20b + 4i + j` (i = 0..5) as the number
//!   `v = sum c_i 3^(4-i)` stored as `ceil(v * 256 / 243)` (the TQ1_0 trick): multiplying the
//!   byte by 3^i (mod 256) brings code i to the top, read as `(byte * 3) >> 8`.
//!
//! Blocks of one group of 16 rows are contiguous along k, groups follow each other. Rows are
//! padded to a multiple of 16 and columns to a multiple of the block width with code 1
//! (weight 0), so kernels never branch on tails inside a group.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod lut;
mod portable;

use crate::actquant::QuantizedActs;
use crate::aligned::AlignedBytes;
use crate::cpu::Isa;
use crate::error::KernelError;
use crate::formats::TernaryMatrix;
use crate::pool::{SyncPtr, ThreadPool};

/// Output rows per group (lanes of a 512-bit vector of i32).
pub const GROUP_ROWS: usize = 16;
/// Bytes per block in both layouts (one cache line, one zmm load).
pub const BLOCK_BYTES: usize = 64;

/// tern's compute layouts (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// 2 bits per weight, 16 rows x 16 k per 64-byte block.
    Tern2,
    /// 1.6 bits per weight (base 3), 16 rows x 20 k per 64-byte block.
    Tern3,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::Tern2, Layout::Tern3];

    /// Columns covered by one block.
    pub fn block_cols(self) -> usize {
        match self {
            Layout::Tern2 => 16,
            Layout::Tern3 => 20,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Tern2 => "tern2",
            Layout::Tern3 => "tern3",
        }
    }

    pub fn from_name(s: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.name() == s)
    }

    /// Storage cost in bits per (unpadded) weight.
    pub fn bits_per_weight(self) -> f64 {
        (BLOCK_BYTES * 8) as f64 / (GROUP_ROWS * self.block_cols()) as f64
    }
}

/// A ternary matrix in one of tern's compute layouts, ready for [`matmul`].
#[derive(Clone, Debug)]
pub struct PackedTernary {
    layout: Layout,
    rows: usize,
    cols: usize,
    gamma: f32,
    data: AlignedBytes,
}

impl PackedTernary {
    pub fn pack(m: &TernaryMatrix, layout: Layout) -> PackedTernary {
        let groups = m.rows.div_ceil(GROUP_ROWS);
        let blocks = m.cols.div_ceil(layout.block_cols());
        let mut data = AlignedBytes::zeroed(groups * blocks * BLOCK_BYTES);
        let out = data.as_mut_slice();
        let code = |r: usize, k: usize| -> u8 {
            if r < m.rows && k < m.cols {
                (m.values[r * m.cols + k] + 1) as u8
            } else {
                1
            }
        };
        for g in 0..groups {
            for b in 0..blocks {
                let block = &mut out[(g * blocks + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                for l in 0..GROUP_ROWS {
                    for j in 0..4 {
                        let r = g * GROUP_ROWS + l;
                        block[4 * l + j] = match layout {
                            Layout::Tern2 => (0..4)
                                .map(|i| code(r, 16 * b + 4 * i + j) << (2 * i))
                                .fold(0, |a, c| a | c),
                            Layout::Tern3 => {
                                let v = (0..5)
                                    .fold(0u32, |v, i| v * 3 + code(r, 20 * b + 4 * i + j) as u32);
                                base3_byte(v)
                            }
                        };
                    }
                }
            }
        }
        PackedTernary {
            layout,
            rows: m.rows,
            cols: m.cols,
            gamma: m.gamma,
            data,
        }
    }

    /// Rebuilds a packed matrix from bytes previously taken from [`PackedTernary::as_bytes`]
    /// (e.g. a tern-layout tensor in a model file).
    pub fn from_bytes(
        layout: Layout,
        rows: usize,
        cols: usize,
        gamma: f32,
        bytes: &[u8],
    ) -> Result<PackedTernary, KernelError> {
        let expected = rows.div_ceil(GROUP_ROWS) * cols.div_ceil(layout.block_cols()) * BLOCK_BYTES;
        if bytes.len() != expected {
            return Err(KernelError::ByteLength {
                format: layout.name(),
                rows,
                cols,
                expected,
                got: bytes.len(),
            });
        }
        let mut data = AlignedBytes::zeroed(expected);
        data.as_mut_slice().copy_from_slice(bytes);
        let p = PackedTernary {
            layout,
            rows,
            cols,
            gamma,
            data,
        };
        // Codes must be 0..=2 (tern2) or bytes must encode v < 243 (tern3), and padding must be
        // weight 0: unpacking checks both without trusting the file.
        p.try_unpack()?;
        Ok(p)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn gamma(&self) -> f32 {
        self.gamma
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.data.as_slice()
    }
    /// Bytes a kernel streams per call (what decode pays for).
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }
    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP_ROWS)
    }
    pub(crate) fn blocks(&self) -> usize {
        self.cols.div_ceil(self.layout.block_cols())
    }

    /// The code (q + 1) stored for row `r`, column `k` (any position, padding included).
    fn code_at(&self, r: usize, k: usize) -> u8 {
        let (g, l) = (r / GROUP_ROWS, r % GROUP_ROWS);
        let bc = self.layout.block_cols();
        let (b, kk) = (k / bc, k % bc);
        let (i, j) = (kk / 4, kk % 4);
        let byte = self.data.as_slice()[(g * self.blocks() + b) * BLOCK_BYTES + 4 * l + j];
        match self.layout {
            Layout::Tern2 => (byte >> (2 * i)) & 3,
            Layout::Tern3 => base3_digit(byte, i),
        }
    }

    pub fn unpack(&self) -> TernaryMatrix {
        self.try_unpack().expect("packed by tern, so valid")
    }

    fn try_unpack(&self) -> Result<TernaryMatrix, KernelError> {
        let bad = |r: usize, k: usize, c: u8| KernelError::Invalid {
            format: self.layout.name(),
            what: format!("code {c} at row {r}, column {k} (codes are 0, 1, 2; padding must be 1)"),
        };
        if self.layout == Layout::Tern3 {
            // Each byte must decode to v < 243 and re-encode to itself.
            if let Some(pos) = self
                .data
                .as_slice()
                .iter()
                .position(|&b| base3_byte(base3_value(b)) != b)
            {
                return Err(KernelError::Invalid {
                    format: "tern3",
                    what: format!("byte {pos} is not a valid base-3 group"),
                });
            }
        }
        let bc = self.layout.block_cols();
        let mut values = vec![0i8; self.rows * self.cols];
        for r in 0..self.groups() * GROUP_ROWS {
            for k in 0..self.blocks() * bc {
                let c = self.code_at(r, k);
                if c > 2 || ((r >= self.rows || k >= self.cols) && c != 1) {
                    return Err(bad(r, k, c));
                }
                if r < self.rows && k < self.cols {
                    values[r * self.cols + k] = c as i8 - 1;
                }
            }
        }
        Ok(TernaryMatrix {
            rows: self.rows,
            cols: self.cols,
            values,
            gamma: self.gamma,
        })
    }
}

/// Encodes five base-3 digits (as the number `v < 243`) into one byte so that digit i
/// (most significant first) is `((byte * 3^i mod 256) * 3) >> 8`.
pub(crate) fn base3_byte(v: u32) -> u8 {
    debug_assert!(v < 243);
    ((v * 256).div_ceil(243)) as u8
}

/// Digit `i` (0 = most significant) of a [`base3_byte`].
#[inline(always)]
pub(crate) fn base3_digit(byte: u8, i: usize) -> u8 {
    let shifted = byte.wrapping_mul(3u8.pow(i as u32));
    ((shifted as u16 * 3) >> 8) as u8
}

fn base3_value(byte: u8) -> u32 {
    (0..5).fold(0, |v, i| v * 3 + base3_digit(byte, i) as u32)
}

/// `y = x * W^T` for ternary `W`: `y[t][o] = (sum_k x_q[t][k] * q[o][k]) / s[t] * gamma`.
///
/// `y` is token-major, `x.n` rows of `w.rows()` floats. One token is a GEMV (decode), several
/// a GEMM (prefill, batched decode); both use every thread of `pool`.
pub fn matmul(w: &PackedTernary, x: &QuantizedActs, y: &mut [f32], pool: &ThreadPool) {
    matmul_with(w, x, y, pool, Isa::detect())
}

/// As [`matmul`] with a chosen instruction set; every set gives bit-identical results.
///
/// Panics if `isa` is not supported by this CPU or the shapes disagree (programming errors).
pub fn matmul_with(
    w: &PackedTernary,
    x: &QuantizedActs,
    y: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    matmul_many_with(&[w], x, &mut [y], pool, isa)
}

/// Most matrices [`matmul_many`] takes in one call.
pub const MANY_MAX: usize = 4;

/// `ys[i] = x * ws[i]^T` for up to [`MANY_MAX`] matrices that read the same activations
/// (q/k/v, gate/up): one pool job instead of one per matrix, so a decode step pays one
/// fork-join and one ramp-down per input instead of per matrix. Same bits as [`matmul`].
pub fn matmul_many(
    ws: &[&PackedTernary],
    x: &QuantizedActs,
    ys: &mut [&mut [f32]],
    pool: &ThreadPool,
) {
    matmul_many_with(ws, x, ys, pool, Isa::detect())
}

/// As [`matmul_many`] with a chosen instruction set.
pub fn matmul_many_with(
    ws: &[&PackedTernary],
    x: &QuantizedActs,
    ys: &mut [&mut [f32]],
    pool: &ThreadPool,
    isa: Isa,
) {
    assert!(
        isa.is_supported(),
        "{} kernels are not supported on this CPU",
        isa.name()
    );
    assert!(
        ws.len() == ys.len() && ws.len() <= MANY_MAX,
        "ternary matmul_many: {} matrices, {} outputs (at most {MANY_MAX})",
        ws.len(),
        ys.len()
    );
    let mut outs = [SyncPtr(std::ptr::null_mut()); MANY_MAX];
    // First global group of each matrix; the last entry is the total.
    let mut starts = [0usize; MANY_MAX + 1];
    let mut work = 0;
    for (i, (w, y)) in ws.iter().zip(ys.iter_mut()).enumerate() {
        assert_eq!(
            x.k, w.cols,
            "ternary matmul: activations have k={}, weights {} columns",
            x.k, w.cols
        );
        assert_eq!(
            y.len(),
            x.n * w.rows,
            "ternary matmul: output has {} floats, expected {}x{}",
            y.len(),
            x.n,
            w.rows
        );
        outs[i] = SyncPtr(y.as_mut_ptr());
        starts[i + 1] = starts[i] + w.groups();
        work += w.groups() * w.blocks() * x.n;
    }
    let groups = starts[ws.len()];
    if groups == 0 || x.n == 0 {
        return;
    }
    // Tasks are runs of whole groups, four per thread: runs stay long enough to stream
    // (hundreds of KB at decode shapes), and a thread the OS delays holds up only a small
    // share of the call instead of half of it.
    let tasks = if pool.threads() == 1 || work < 2048 {
        1
    } else {
        (pool.threads() * 4).min(groups.div_ceil(2))
    };
    pool.run(tasks, &|task| {
        // Keep runs even so two-group tiles stay paired.
        let lo = (groups * task / tasks) & !1;
        let hi = if task + 1 == tasks {
            groups
        } else {
            (groups * (task + 1) / tasks) & !1
        };
        for (i, w) in ws.iter().enumerate() {
            let (a, b) = (lo.max(starts[i]), hi.min(starts[i + 1]));
            if a >= b {
                continue;
            }
            let job = Job {
                w,
                x,
                out: outs[i],
                groups: a - starts[i]..b - starts[i],
            };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa.is_supported()` was asserted above, so the CPU has the features
                // the AVX-512 / AVX2 kernels are compiled for.
                Isa::Avx512 => unsafe { avx512::run(&job) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Isa::Avx2 => unsafe { avx2::run(&job) },
                _ => portable::run(&job),
            }
        }
    });
}

/// One task's share: groups `groups` of `w`, all tokens of `x`, written into `out`.
pub(crate) struct Job<'a> {
    pub w: &'a PackedTernary,
    pub x: &'a QuantizedActs,
    pub out: SyncPtr<f32>,
    pub groups: std::ops::Range<usize>,
}

impl Job<'_> {
    /// Stores the epilogue of one group for token `t`: `(acc - sum) / s * gamma`.
    /// Every kernel funnels through this formula (vectorised with the same operations),
    /// which is what makes their outputs bit-identical.
    #[inline(always)]
    pub fn finish(&self, acc_codes: i32, t: usize) -> f32 {
        ((acc_codes - self.x.sums[t]) as f32 / self.x.scales[t]) * self.w.gamma
    }

    /// Rows of group `g` that exist (16, or fewer in the last group).
    #[inline(always)]
    pub fn rows_in(&self, g: usize) -> usize {
        (self.w.rows - g * GROUP_ROWS).min(GROUP_ROWS)
    }

    /// Pointer to `y[t][16 g]`.
    ///
    /// # Safety
    /// `t < x.n` and `g < groups`; the task must own group `g` (tasks own disjoint groups,
    /// so no two threads write the same output element).
    #[inline(always)]
    pub unsafe fn out_ptr(&self, t: usize, g: usize) -> *mut f32 {
        // SAFETY: with t < x.n and g < groups (this function's contract) the offset is inside
        // the n x rows output that `out` points to.
        unsafe { self.out.get().add(t * self.w.rows + g * GROUP_ROWS) }
    }
}

/// The obviously-correct reference: plain i32 dot products of the unpacked values.
pub fn matmul_reference(w: &TernaryMatrix, x: &QuantizedActs, y: &mut [f32]) {
    assert_eq!(x.k, w.cols);
    assert_eq!(y.len(), x.n * w.rows);
    for t in 0..x.n {
        let xr = x.row(t);
        for o in 0..w.rows {
            let acc: i32 = w
                .row(o)
                .iter()
                .zip(xr)
                .map(|(&q, &v)| q as i32 * v as i32)
                .sum();
            y[t * w.rows + o] = (acc as f32 / x.scales[t]) * w.gamma;
        }
    }
}
