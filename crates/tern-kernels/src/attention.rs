//! Causal grouped-query attention over a KV cache: per query head, scores `q . k_j * scale`
//! for every cached position `j`, a softmax, and the softmax-weighted sum of the values.
//!
//! [`attend`] is one head; [`attention`] runs every (token, head) pair of a chunk on the pool.
//! The kernel is written so that the compiler vectorises it at any width with identical
//! results: dot products keep 16 fixed partial sums ([`dot16`](crate::norm::dot16)),
//! everything else is element-wise or in position order. So every instruction set and thread
//! count gives the bits of the plain references, which the tests check.

use crate::cpu::{check_isa, Isa};
use crate::norm::{dot16_generic, dot16_reference};
use crate::pool::{Cells, Chunks, ThreadPool};
use half::f16;

/// Positions ahead the attention prefetches keys.
const KV_AHEAD: usize = 16;

/// Below this much work (queries x positions x heads x head_dim) attention runs on the calling
/// thread.
const INLINE_WORK: usize = 1 << 12;

/// One query head against the `scores.len()` cached positions of its KV head:
/// `out = softmax(scale * K q) V`. `keys` and `values` hold those positions, `q.len()` floats
/// each; `scores` is scratch (left holding the unnormalised softmax weights).
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_with(q, keys, values, scale, scores, out, Isa::detect())
}

/// As [`attend`] with a chosen instruction set (all give the same bits). Panics if this CPU
/// does not support `isa`.
pub fn attend_with(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    isa: Isa,
) {
    check_isa(isa, "attend_with");
    check_head(q, keys, values, scores.len(), out);
    attend_on(isa, q, keys, values, scale, scores, out);
}

/// The reference for [`attend`]: one position and one element at a time.
pub fn attend_reference(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
    let (hd, len) = (q.len(), keys.len() / q.len().max(1));
    check_head(q, keys, values, len, out);
    let mut scores = vec![0.0f32; len];
    for j in 0..len {
        scores[j] = dot16_reference(q, &keys[j * hd..(j + 1) * hd]) * scale;
    }
    let mut max = f32::NEG_INFINITY;
    for &s in &scores {
        max = max.max(s);
    }
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for i in 0..hd {
        let mut o = 0.0;
        for j in 0..len {
            o += scores[j] * inv * values[j * hd + i];
        }
        out[i] = o;
    }
}

fn check_head(q: &[f32], keys: &[f32], values: &[f32], len: usize, out: &[f32]) {
    let hd = q.len();
    assert!(
        hd > 0 && len > 0 && keys.len() == len * hd && values.len() == len * hd && out.len() == hd,
        "attend: head of {hd}, {len} positions, {} keys, {} values, {} outputs",
        keys.len(),
        values.len(),
        out.len()
    );
}

/// Shape of a grouped-query attention: `heads` query heads share `kv_heads` KV heads
/// (`heads / kv_heads` each, consecutive), all of `head_dim` floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal attention of the `n` queries in `q` (`[n][heads][head_dim]`, at positions
/// `pos .. pos + n`) against `keys` and `values` (`[kv_heads][capacity][head_dim]`, positions
/// `0 .. pos + n` filled) into `out` (like `q`). `scratch` holds one row of `pos + n` scores
/// per task: `pool.threads() * (pos + n)` floats use every thread, fewer use fewer.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    shape: Heads,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos: usize,
    out: &mut [f32],
    scratch: &mut [f32],
    pool: &ThreadPool,
) {
    attention_with(
        shape,
        q,
        keys,
        values,
        pos,
        out,
        scratch,
        pool,
        Isa::detect(),
    )
}

/// As [`attention`] with a chosen instruction set (all sets and thread counts give the same
/// bits). Panics if this CPU does not support `isa`.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    shape: Heads,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos: usize,
    out: &mut [f32],
    scratch: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    check_isa(isa, "attention_with");
    let Heads {
        heads,
        head_dim: hd,
        ..
    } = shape;
    let (n, cap, group) = check_shapes(shape, q, keys.len(), values.len(), pos, out);
    if n == 0 {
        return;
    }
    let qd = heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let pairs = n * heads;
    let row = pos + n;
    let rows = scratch.len() / row;
    assert!(
        rows > 0,
        "attention: scratch of {} floats, rows of {row} needed",
        scratch.len()
    );
    let tasks = if n * row * heads * hd < INLINE_WORK {
        1
    } else {
        pool.threads().min(pairs).min(rows)
    };
    // Each task owns a scratch row and a run of (token, head) pairs numbered head-major, so
    // that a task's consecutive pairs reuse one head's keys and values; `Cells` numbers the
    // `[token][head]` outputs down the head columns to match.
    let parts = (
        Chunks::new(&mut scratch[..tasks * row], row),
        Cells::new(out, n, heads, hd),
    );
    pool.run_split(tasks, parts, &|_, ((_, sc), mut att)| {
        for pair in att.units() {
            let (h, t) = (pair / n, pair % n);
            let len = pos + t + 1;
            let kv = (h / group) * cap * hd;
            attend_on(
                isa,
                &q[t * qd + h * hd..][..hd],
                &keys[kv..kv + len * hd],
                &values[kv..kv + len * hd],
                scale,
                &mut sc[..len],
                att.cell(pair),
            );
        }
    });
}

/// One sequence of an [`attention_batch`] call: `n` consecutive query rows at positions
/// `pos .. pos + n` of its own cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqSpan {
    pub n: usize,
    pub pos: usize,
}

/// The keys and values of sequence `i` of an [`attention_batch`] call (both
/// `[kv_heads][capacity][head_dim]`, each sequence its own capacity).
pub type SeqCache<'a, T = f32> = dyn Fn(usize) -> (&'a [T], &'a [T]) + Sync + 'a;

/// An element type of a KV cache: f32, f16 (half the memory and the bytes attention reads;
/// keys and values are rounded to f16 when written) or [`Q8Block`] (llama.cpp's q8_0).
/// Attention over a compressed cache has the bits of attention over the same values widened
/// to f32.
pub trait KvElem: Copy + Send + Sync + sealed::Sealed + 'static {
    /// [`attend`] for the `q.len() / hd` query heads in `q` that share one KV head (each
    /// with the bits it has alone), on `isa` (supported, checked by the caller), with shapes
    /// checked by the caller; `scores` holds `len` per head.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn attend_group_on(
        isa: Isa,
        q: &[f32],
        hd: usize,
        keys: &[Self],
        values: &[Self],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    );
    /// Largest head the type's attention takes.
    #[doc(hidden)]
    const MAX_HEAD_DIM: usize;
    /// Cached values per element (32 for [`Q8Block`], else 1); heads are a multiple of it.
    const PER: usize = 1;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for super::Q8Block {}
}

/// 32 cached values in llama.cpp's `q8_0` form (`-ctk q8_0`): `d * qs[i]`, with `d` the block's
/// largest magnitude over 127. 34 bytes for 32 values: 53% of f16's memory and reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    pub d: f16,
    pub qs: [i8; Q8Block::LEN],
}

impl Q8Block {
    /// Values per block.
    pub const LEN: usize = 32;

    /// Quantizes `x` (`out.len()` blocks of 32 values) as llama.cpp's `quantize_row_q8_0_ref`:
    /// `d = max|x| / 127`, `qs = round(x / d)` (halves away from zero), `d` stored as f16.
    pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
        assert_eq!(
            x.len(),
            out.len() * Q8Block::LEN,
            "q8_0: {} values",
            x.len()
        );
        for (b, x) in out.iter_mut().zip(x.chunks_exact(Q8Block::LEN)) {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = f16::from_f32(d);
            for (q, &v) in b.qs.iter_mut().zip(x) {
                *q = (v * id).round() as i8;
            }
        }
    }

    /// The values of `row` (`out.len() == row.len() * 32`).
    #[inline(always)]
    pub fn widen_row(row: &[Q8Block], out: &mut [f32]) {
        for (b, o) in row.iter().zip(out.chunks_exact_mut(Q8Block::LEN)) {
            let d = b.d.to_f32();
            for (o, &q) in o.iter_mut().zip(&b.qs) {
                *o = q as f32 * d;
            }
        }
    }
}

/// How the rows of a compressed KV element type are widened to f32 (into a stack buffer) for
/// [`attend_group`]: exactly, so the instruction set does not change the bits.
trait Widen {
    type Elem: Copy;
    /// Values per element.
    const PER: usize;
    fn widen(src: &[Self::Elem], dst: &mut [f32]);
    /// The values of consecutive rows `src`: widened into `buf`, or `src` itself when it is
    /// f32 already.
    #[inline(always)]
    fn rows<'a>(src: &'a [Self::Elem], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..src.len() * Self::PER];
        Self::widen(src, buf);
        buf
    }
}

/// f32 rows as they are.
struct RowsF32;

impl Widen for RowsF32 {
    type Elem = f32;
    const PER: usize = 1;
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn rows<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

/// f16 rows through `half` (F16C when it detects it, else in software).
struct WidenF16;

impl Widen for WidenF16 {
    type Elem = f16;
    const PER: usize = 1;
    #[inline(always)]
    fn widen(src: &[f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

/// f16 rows by `vcvtph2ps` inlined into the AVX-512 attention (`half`'s slice conversion is a
/// call with a feature check per row: it made f16 attention slower than f32's).
#[cfg(target_arch = "x86_64")]
struct WidenF16Avx512;

#[cfg(target_arch = "x86_64")]
impl Widen for WidenF16Avx512 {
    type Elem = f16;
    const PER: usize = 1;
    #[inline(always)]
    fn widen(src: &[f16], dst: &mut [f32]) {
        // SAFETY: this type is used only by f16's AVX-512 attention (`kv_elem!`), whose
        // callers checked that the CPU has AVX-512 F (`check_isa`); lengths are checked inside.
        unsafe { widen_f16_avx512(src, dst) }
    }
}

/// # Safety
/// AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn widen_f16_avx512(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_eq!(src.len(), dst.len());
    let n = src.len();
    let mut j = 0;
    // SAFETY: `j + 16 <= n` for the full vectors, the masked tail reads and writes only lanes
    // below `n`; AVX-512 F per this function's contract.
    unsafe {
        let (s, d) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr());
        while j + 16 <= n {
            _mm512_storeu_ps(
                d.add(j),
                _mm512_cvtph_ps(_mm256_loadu_si256(s.add(j).cast())),
            );
            j += 16;
        }
        if j < n {
            let mask: __mmask16 = (1u16 << (n - j)) - 1;
            let v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, s.add(j).cast()));
            _mm512_mask_storeu_ps(d.add(j), mask, v);
        }
    }
}

struct WidenQ8;

impl Widen for WidenQ8 {
    type Elem = Q8Block;
    const PER: usize = Q8Block::LEN;
    #[inline(always)]
    fn widen(src: &[Q8Block], dst: &mut [f32]) {
        Q8Block::widen_row(src, dst);
    }
}

/// [`KvElem`] for a cache element type: its attention is [`attend_group`] compiled for
/// AVX-512, for AVX2 and portably (one source, vectorised at each width), each with the row
/// widener named for it.
macro_rules! kv_elem {
    ($elem:ty, portable: $wp:ty, avx512: $w512:ty, avx2: $w2:ty, max_head_dim: $max:expr,
     per: $per:expr) => {
        impl KvElem for $elem {
            fn attend_group_on(
                isa: Isa,
                q: &[f32],
                hd: usize,
                keys: &[$elem],
                values: &[$elem],
                scale: f32,
                scores: &mut [f32],
                out: &mut [f32],
            ) {
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx512f")]
                fn on_avx512(
                    q: &[f32],
                    hd: usize,
                    keys: &[$elem],
                    values: &[$elem],
                    scale: f32,
                    scores: &mut [f32],
                    out: &mut [f32],
                ) {
                    attend_group::<$w512>(q, hd, keys, values, scale, scores, out)
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2")]
                fn on_avx2(
                    q: &[f32],
                    hd: usize,
                    keys: &[$elem],
                    values: &[$elem],
                    scale: f32,
                    scores: &mut [f32],
                    out: &mut [f32],
                ) {
                    attend_group::<$w2>(q, hd, keys, values, scale, scores, out)
                }
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: every caller checked that this CPU supports `isa` (`check_isa`).
                    Isa::Avx512 => unsafe { on_avx512(q, hd, keys, values, scale, scores, out) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above, AVX2.
                    Isa::Avx2 => unsafe { on_avx2(q, hd, keys, values, scale, scores, out) },
                    _ => attend_group::<$wp>(q, hd, keys, values, scale, scores, out),
                }
            }
            const MAX_HEAD_DIM: usize = $max;
            const PER: usize = $per;
        }
    };
}

kv_elem!(f32, portable: RowsF32, avx512: RowsF32, avx2: RowsF32, max_head_dim: usize::MAX,
         per: 1);
kv_elem!(f16, portable: WidenF16, avx512: WidenF16Avx512, avx2: WidenF16,
         max_head_dim: WIDEN_MAX_HEAD_DIM, per: 1);
kv_elem!(Q8Block, portable: WidenQ8, avx512: WidenQ8, avx2: WidenQ8,
         max_head_dim: WIDEN_MAX_HEAD_DIM, per: Q8Block::LEN);

/// The f16 and q8_0 attentions widen rows into stack buffers of this many floats (4 value rows).
const WIDEN_MAX_HEAD_DIM: usize = 256;

/// Most query heads one [`attend_group`] call takes (its per-head maxima and sums live on the
/// stack); larger GQA groups are split.
const MAX_GROUP: usize = 8;

/// The attention kernel: the `g = q.len() / hd` query heads of one KV head over keys and
/// values of any [`Widen`] type (`g = 1` is [`attend`]). Each key row is read (and widened,
/// exactly) once for all `g` heads and each 4-row chunk of values once, where one head at a
/// time read the cache `g` times. Per head: scores `dot16(q, k_j) * scale` in position order,
/// their maximum, `exp(s - max)` and its sum, then `out += (s_j / sum) * v_j` four positions
/// per pass in position order; the same operations on the same operands whatever `g` and the
/// element type (over the widened values), so the bits are too. `scores` holds `len` per head.
#[inline(always)]
fn attend_group<W: Widen>(
    q: &[f32],
    hd: usize,
    keys: &[W::Elem],
    values: &[W::Elem],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let g = q.len() / hd;
    assert!(
        (1..=MAX_GROUP).contains(&g) && q.len() == g * hd && out.len() == q.len(),
        "attention group: {} queries of {hd}",
        q.len()
    );
    assert!(
        W::PER == 1 || hd <= WIDEN_MAX_HEAD_DIM && hd.is_multiple_of(W::PER),
        "attention over a compressed cache: head of {hd}"
    );
    let row = hd / W::PER;
    let len = scores.len() / g;
    let mut kb = [0.0f32; WIDEN_MAX_HEAD_DIM];
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    for j in 0..len {
        // One head's cache is a stream of a few tens of KB: too short for the hardware
        // prefetcher to ramp up, so decode waited on DRAM latency. Ask for the keys a few
        // positions ahead and for this position's values, which the second pass reads.
        if j + KV_AHEAD < len {
            prefetch(&keys[(j + KV_AHEAD) * row..][..row]);
        }
        prefetch(&values[j * row..][..row]);
        let k = W::rows(&keys[j * row..][..row], &mut kb);
        for h in 0..g {
            let s = dot16_generic(&q[h * hd..][..hd], k) * scale;
            scores[h * len + j] = s;
            max[h] = max[h].max(s);
        }
    }
    let mut inv = [0.0f32; MAX_GROUP];
    for h in 0..g {
        let mut sum = 0.0;
        for sj in scores[h * len..][..len].iter_mut() {
            *sj = (*sj - max[h]).exp();
            sum += *sj;
        }
        inv[h] = 1.0 / sum;
    }
    out.fill(0.0);
    // Four positions per pass over `out`, each added in position order (the same bits as one
    // at a time), so `out` is loaded and stored a quarter as often.
    let mut vb = [0.0f32; 4 * WIDEN_MAX_HEAD_DIM];
    let full = len / 4 * 4;
    for j in (0..full).step_by(4) {
        let v = W::rows(&values[j * row..][..4 * row], &mut vb);
        let (v0, rest) = v.split_at(hd);
        let (v1, rest) = rest.split_at(hd);
        let (v2, v3) = rest.split_at(hd);
        for h in 0..g {
            let w = &scores[h * len + j..][..4];
            let (w0, w1, w2, w3) = (w[0] * inv[h], w[1] * inv[h], w[2] * inv[h], w[3] * inv[h]);
            let o = &mut out[h * hd..][..hd];
            for i in 0..hd {
                let mut x = o[i];
                x += w0 * v0[i];
                x += w1 * v1[i];
                x += w2 * v2[i];
                x += w3 * v3[i];
                o[i] = x;
            }
        }
    }
    for j in full..len {
        let v = W::rows(&values[j * row..][..row], &mut vb);
        for h in 0..g {
            let w = scores[h * len + j] * inv[h];
            for (o, &x) in out[h * hd..][..hd].iter_mut().zip(v) {
                *o += w * x;
            }
        }
    }
}

/// [`attention`] for the rows of several sequences in one pool job (a batched decode step):
/// `q` and `out` hold the rows of `spans[0]`, then of `spans[1]`, ...; each row attends
/// causally to its own sequence's cache, `cache(i)`. The query heads of one KV head are
/// attended together (each key and value row read once for the group, not once per head:
/// GQA models read a quarter of the cache traffic at group 4), and every (row, head) pair
/// still gets the bits [`attention`] gives it for that sequence alone; one fork-join per layer
/// instead of one per sequence. `scratch` holds [`attention_batch_scratch`] floats for the
/// tasks that should run (fewer run with less).
#[allow(clippy::too_many_arguments)]
pub fn attention_batch<'a, T: KvElem>(
    shape: Heads,
    q: &[f32],
    spans: &[SeqSpan],
    cache: &SeqCache<'a, T>,
    out: &mut [f32],
    scratch: &mut [f32],
    pool: &ThreadPool,
) {
    attention_batch_with(shape, q, spans, cache, out, scratch, pool, Isa::detect())
}

/// As [`attention_batch`] with a chosen instruction set (all give the same bits). Panics if
/// this CPU does not support `isa`.
#[allow(clippy::too_many_arguments)]
pub fn attention_batch_with<'a, T: KvElem>(
    shape: Heads,
    q: &[f32],
    spans: &[SeqSpan],
    cache: &SeqCache<'a, T>,
    out: &mut [f32],
    scratch: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    check_isa(isa, "attention_batch_with");
    let Heads {
        heads,
        head_dim: hd,
        ..
    } = shape;
    assert!(
        hd <= T::MAX_HEAD_DIM && hd.is_multiple_of(T::PER),
        "attention_batch: heads of {hd} do not fit this KV type (at most {}, a multiple of {})",
        T::MAX_HEAD_DIM,
        T::PER
    );
    let qd = heads * hd;
    let total: usize = spans.iter().map(|s| s.n).sum();
    let (mut longest, mut work, mut at) = (0, 0, 0);
    for (i, s) in spans.iter().enumerate() {
        let (k, v) = cache(i);
        // The per-sequence shape checks of `attention`.
        let end = (at + s.n) * qd;
        check_shapes(
            shape,
            &q[at * qd..end],
            k.len() * T::PER,
            v.len() * T::PER,
            s.pos,
            &out[at * qd..end],
        );
        longest = longest.max(s.pos + s.n);
        work += s.n * (s.pos + s.n) * qd;
        at += s.n;
    }
    assert!(
        q.len() == total * qd && out.len() == q.len(),
        "attention_batch: {} queries, {} outputs, {total} rows of {qd}",
        q.len(),
        out.len()
    );
    if total == 0 {
        return;
    }
    let group = heads / shape.kv_heads;
    // Query heads attended together: the largest divisor of the GQA group up to MAX_GROUP.
    let sub = sub_group(group);
    let scale = 1.0 / (hd as f32).sqrt();
    let rows = scratch.len() / (sub * longest);
    assert!(
        rows > 0,
        "attention_batch: scratch of {} floats, {sub} rows of {longest} needed",
        scratch.len()
    );
    let cols = heads / sub;
    let tasks = if work < INLINE_WORK {
        1
    } else {
        pool.threads().min(total * cols).min(rows)
    };
    // Units are (row, run of `sub` query heads of one KV head), numbered head-major over all
    // rows of the batch, so a task's consecutive units reuse one KV head's keys and values.
    let parts = (
        Chunks::new(&mut scratch[..tasks * sub * longest], sub * longest),
        Cells::new(out, total, cols, sub * hd),
    );
    pool.run_split(tasks, parts, &|_, ((_, sc), mut att)| {
        // Cursor over the sequences: a task's units run through the rows in order, wrapping
        // to row 0 at the next run of heads.
        let (mut i, mut first) = (0, 0);
        for unit in att.units() {
            let (c, r) = (unit / total, unit % total);
            if r < first {
                (i, first) = (0, 0);
            }
            while r >= first + spans[i].n {
                first += spans[i].n;
                i += 1;
            }
            let (keys, values) = cache(i);
            // In elements: `row` per position.
            let row = hd / T::PER;
            let cap = keys.len() / (shape.kv_heads * row);
            let len = spans[i].pos + (r - first) + 1;
            let h0 = c * sub;
            let kv = (h0 / group) * cap * row;
            T::attend_group_on(
                isa,
                &q[r * qd + h0 * hd..][..sub * hd],
                hd,
                &keys[kv..kv + len * row],
                &values[kv..kv + len * row],
                scale,
                &mut sc[..sub * len],
                att.cell(unit),
            );
        }
    });
}

/// Query heads one attention call takes together for a GQA group of `group`: its largest
/// divisor up to [`MAX_GROUP`].
fn sub_group(group: usize) -> usize {
    (1..=group.min(MAX_GROUP))
        .rev()
        .find(|d| group.is_multiple_of(*d))
        .unwrap_or(1)
}

/// Scratch floats [`attention_batch`] needs to run `tasks` tasks over sequences of up to
/// `longest` positions with heads of `shape`.
pub fn attention_batch_scratch(shape: Heads, longest: usize, tasks: usize) -> usize {
    sub_group(shape.heads / shape.kv_heads.max(1)) * longest * tasks.max(1)
}

/// The reference for [`attention`]: every (token, head) pair through [`attend_reference`].
pub fn attention_reference(
    shape: Heads,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos: usize,
    out: &mut [f32],
) {
    let Heads {
        heads,
        head_dim: hd,
        ..
    } = shape;
    let (n, cap, group) = check_shapes(shape, q, keys.len(), values.len(), pos, out);
    let scale = 1.0 / (hd as f32).sqrt();
    for t in 0..n {
        for h in 0..heads {
            let len = pos + t + 1;
            let kv = (h / group) * cap * hd;
            let at = (t * heads + h) * hd;
            attend_reference(
                &q[at..at + hd],
                &keys[kv..kv + len * hd],
                &values[kv..kv + len * hd],
                scale,
                &mut out[at..at + hd],
            );
        }
    }
}

/// Checks the shapes (`keys` and `values` counted in values); returns (queries, cache
/// capacity, query heads per KV head).
fn check_shapes(
    s: Heads,
    q: &[f32],
    keys: usize,
    values: usize,
    pos: usize,
    out: &[f32],
) -> (usize, usize, usize) {
    assert!(
        s.heads > 0 && s.kv_heads > 0 && s.head_dim > 0 && s.heads.is_multiple_of(s.kv_heads),
        "attention: {s:?}"
    );
    let (qd, kvd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let (n, cap) = (q.len() / qd, keys / kvd);
    assert!(
        q.len() == n * qd && out.len() == q.len(),
        "attention: {} queries, {} outputs, rows of {qd}",
        q.len(),
        out.len()
    );
    assert!(
        keys == cap * kvd && values == keys && pos + n <= cap,
        "attention: {keys} keys, {values} values, rows of {kvd}, {} positions needed",
        pos + n
    );
    (n, cap, s.heads / s.kv_heads)
}

/// [`attend`] on `isa`, whose support the caller checked: [`attend_group`] of one head.
#[inline(always)]
fn attend_on(
    isa: Isa,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    <f32 as KvElem>::attend_group_on(isa, q, q.len(), keys, values, scale, scores, out)
}

/// Asks for every cache line of `x` (a hint: no effect on results, never faults).
#[inline(always)]
fn prefetch<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks((64 / std::mem::size_of::<T>()).max(1)) {
        // SAFETY: `_mm_prefetch` is SSE (baseline on x86-64) and only a hint; the pointer is
        // inside `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Values with a spread of magnitudes, so that scores span a wide softmax range.
    fn random(rng: &mut Rng, len: usize, amp: f32) -> Vec<f32> {
        (0..len).map(|_| rng.unit_f32() * amp).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The batched form has, row for row, the bits of `attention` of each sequence alone,
        /// for sequences of different lengths, capacities and chunk sizes (empty ones too).
        #[test]
        fn attention_batch_equals_each_sequence_alone(
            shape in prop::sample::select(vec![(4usize, 2usize, 8usize), (2, 1, 5), (3, 3, 16), (2, 1, 256), (4, 2, 64), (8, 1, 32), (12, 1, 7), (20, 5, 32)]),
            seqs in prop::collection::vec((0usize..4, 0usize..20, 0usize..6), 1..6),
            threads in 1usize..4,
            seed in any::<u64>(),
        ) {
            let shape = Heads { heads: shape.0, kv_heads: shape.1, head_dim: shape.2 };
            let (qd, kvd) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
            let mut rng = Rng::new(seed);
            // (n, pos, capacity, keys, values) per sequence.
            let caches: Vec<_> = seqs
                .iter()
                .map(|&(n, pos, slack)| {
                    let cap = (pos + n + slack).max(1);
                    (n, pos, cap, random(&mut rng, cap * kvd, 2.0), random(&mut rng, cap * kvd, 1.0))
                })
                .collect();
            let total: usize = caches.iter().map(|c| c.0).sum();
            let q = random(&mut rng, total * qd, 2.0);
            let spans: Vec<SeqSpan> = caches.iter().map(|c| SeqSpan { n: c.0, pos: c.1 }).collect();
            let cache = |i: usize| (&caches[i].3[..], &caches[i].4[..]);
            let pool = ThreadPool::new(threads);
            let longest = caches.iter().map(|c| c.0 + c.1).max().unwrap_or(0).max(1);
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; total * qd];
                let mut sc = vec![0.0; attention_batch_scratch(shape, longest, threads)];
                attention_batch_with(shape, &q, &spans, &cache, &mut got, &mut sc, &pool, isa);
                let mut at = 0;
                for c in &caches {
                    let (n, pos) = (c.0, c.1);
                    let mut want = vec![f32::NAN; n * qd];
                    let mut sc = vec![0.0; pos + n + 1];
                    attention_with(
                        shape,
                        &q[at * qd..(at + n) * qd],
                        &c.3,
                        &c.4,
                        pos,
                        &mut want,
                        &mut sc,
                        &ThreadPool::new(1),
                        isa,
                    );
                    prop_assert!(same_bits(&got[at * qd..(at + n) * qd], &want), "{:?}", isa);
                    at += n;
                }
                // f16 caches: the bits of the f32 path over the same values widened.
                let half: Vec<(Vec<f16>, Vec<f16>)> = caches
                    .iter()
                    .map(|c| (to_f16(&c.3), to_f16(&c.4)))
                    .collect();
                let wide: Vec<(Vec<f32>, Vec<f32>)> = half
                    .iter()
                    .map(|(k, v)| (to_f32(k), to_f32(v)))
                    .collect();
                let cache16 = |i: usize| (&half[i].0[..], &half[i].1[..]);
                let cache32 = |i: usize| (&wide[i].0[..], &wide[i].1[..]);
                let mut got16 = vec![f32::NAN; total * qd];
                let mut want16 = vec![f32::NAN; total * qd];
                attention_batch_with(shape, &q, &spans, &cache16, &mut got16, &mut sc, &pool, isa);
                attention_batch_with(shape, &q, &spans, &cache32, &mut want16, &mut sc, &pool, isa);
                prop_assert!(same_bits(&got16, &want16), "f16 {:?}", isa);
                // q8_0 caches likewise, where heads are whole blocks.
                if shape.head_dim.is_multiple_of(Q8Block::LEN) {
                    let q8: Vec<(Vec<Q8Block>, Vec<Q8Block>)> =
                        caches.iter().map(|c| (to_q8(&c.3), to_q8(&c.4))).collect();
                    let wide: Vec<(Vec<f32>, Vec<f32>)> =
                        q8.iter().map(|(k, v)| (widen_q8(k), widen_q8(v))).collect();
                    let cache8 = |i: usize| (&q8[i].0[..], &q8[i].1[..]);
                    let cache32 = |i: usize| (&wide[i].0[..], &wide[i].1[..]);
                    let mut got8 = vec![f32::NAN; total * qd];
                    let mut want8 = vec![f32::NAN; total * qd];
                    attention_batch_with(shape, &q, &spans, &cache8, &mut got8, &mut sc, &pool, isa);
                    attention_batch_with(shape, &q, &spans, &cache32, &mut want8, &mut sc, &pool, isa);
                    prop_assert!(same_bits(&got8, &want8), "q8_0 {:?}", isa);
                }
            }
        }
    }

    fn to_f16(x: &[f32]) -> Vec<f16> {
        x.iter().map(|&v| f16::from_f32(v)).collect()
    }

    fn to_f32(x: &[f16]) -> Vec<f32> {
        x.iter().map(|v| v.to_f32()).collect()
    }

    fn to_q8(x: &[f32]) -> Vec<Q8Block> {
        let mut b = vec![Q8Block::default(); x.len() / Q8Block::LEN];
        Q8Block::quantize_row(x, &mut b);
        b
    }

    fn widen_q8(b: &[Q8Block]) -> Vec<f32> {
        let mut x = vec![0.0; b.len() * Q8Block::LEN];
        Q8Block::widen_row(b, &mut x);
        x
    }

    /// llama.cpp's q8_0 by hand: the largest magnitude maps to ±127, halves round away from
    /// zero, an all-zero block has d = 0; and every value comes back within about d / 2.
    #[test]
    fn q8_block_quantizes_as_llama_cpp() {
        let mut x = [0.0f32; 32];
        x[0] = -31.75; // d = 0.25, exact
        x[1] = 0.125; // 0.5 -> 1
        x[2] = -0.375; // -1.5 -> -2
        x[3] = 12.5;
        let b = to_q8(&x);
        assert_eq!(b[0].d, f16::from_f32(0.25));
        assert_eq!(&b[0].qs[..4], &[-127, 1, -2, 50]);
        assert!(b[0].qs[4..].iter().all(|&q| q == 0));
        let zero = to_q8(&[0.0; 32]);
        assert_eq!(zero[0].d.to_f32(), 0.0);
        assert!(widen_q8(&zero).iter().all(|&v| v == 0.0));
        let mut rng = Rng::new(7);
        let x = random(&mut rng, 256, 3.0);
        let back = widen_q8(&to_q8(&x));
        for (blk, (x, y)) in to_q8(&x).iter().zip(x.chunks(32).zip(back.chunks(32))) {
            let d = blk.d.to_f32();
            for (a, b) in x.iter().zip(y) {
                // Half a step, plus the f16 rounding of d times up to 127.
                assert!(
                    (a - b).abs() <= d * (0.5 + 127.0 / 2048.0),
                    "{a} vs {b}, d {d}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn attend_is_bit_exact_on_every_isa(
            hd in 1usize..80,
            len in 1usize..70,
            amp in prop::sample::select(vec![0.1f32, 1.0, 8.0]),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let q = random(&mut rng, hd, amp);
            let (k, v) = (random(&mut rng, len * hd, amp), random(&mut rng, len * hd, 1.0));
            let scale = 1.0 / (hd as f32).sqrt();
            let mut want = vec![0.0; hd];
            attend_reference(&q, &k, &v, scale, &mut want);
            for isa in Isa::available() {
                let (mut got, mut sc) = (vec![f32::NAN; hd], vec![f32::NAN; len]);
                attend_with(&q, &k, &v, scale, &mut sc, &mut got, isa);
                prop_assert!(same_bits(&got, &want), "{:?} hd {} len {}", isa, hd, len);
            }
        }

        /// Whole chunks (prefill and decode) with GQA, every set, 1 to 3 threads and scratch
        /// for fewer rows than threads: the same bits as one pair at a time.
        #[test]
        fn attention_is_bit_exact_on_every_isa_and_thread_count(
            kv_heads in 1usize..4,
            group in 1usize..4,
            hd in prop::sample::select(vec![1usize, 7, 16, 33, 64]),
            n in 1usize..12,
            pos in 0usize..30,
            spare in 0usize..3,
            seed in any::<u64>(),
        ) {
            let shape = Heads { heads: kv_heads * group, kv_heads, head_dim: hd };
            let cap = pos + n + spare;
            let mut rng = Rng::new(seed);
            let q = random(&mut rng, n * shape.heads * hd, 2.0);
            let k = random(&mut rng, kv_heads * cap * hd, 2.0);
            let v = random(&mut rng, kv_heads * cap * hd, 1.0);
            let mut want = vec![0.0; q.len()];
            attention_reference(shape, &q, &k, &v, pos, &mut want);
            for threads in 1..4 {
                let pool = ThreadPool::new(threads);
                for rows in [1, threads] {
                    let mut scratch = vec![f32::NAN; rows * cap];
                    for isa in Isa::available() {
                        let mut got = vec![f32::NAN; q.len()];
                        attention_with(shape, &q, &k, &v, pos, &mut got, &mut scratch, &pool, isa);
                        prop_assert!(
                            same_bits(&got, &want),
                            "{:?} {:?} n {} pos {} threads {} rows {}", isa, shape, n, pos, threads, rows
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn one_position_returns_its_value() {
        let mut out = [0.0; 3];
        attend(
            &[1.0, 2.0, 3.0],
            &[4.0, 5.0, 6.0],
            &[7.0, -8.0, 9.0],
            0.5,
            &mut [0.0],
            &mut out,
        );
        assert_eq!(out, [7.0, -8.0, 9.0]);
    }

    #[test]
    #[should_panic(expected = "attention: scratch of 3 floats")]
    fn attention_needs_a_scratch_row() {
        let shape = Heads {
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
        };
        let pool = ThreadPool::new(1);
        attention(
            shape,
            &[0.0; 2],
            &[0.0; 4],
            &[0.0; 4],
            2,
            &mut [0.0; 2],
            &mut [0.0; 3],
            &pool,
        );
    }
}
