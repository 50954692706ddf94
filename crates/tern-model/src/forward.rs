//! The forward pass: embeddings, N BitNet blocks, final norm, LM head; with a KV cache.
//!
//! ```text
//! h = x + o_proj(attn_sub_norm(Attn(rope(q, k), v)))   q, k, v = proj(input_layernorm(x))
//! y = h + down_proj(ffn_sub_norm(act(gate(z)) * up(z)))  z = post_attention_layernorm(h)
//! ```
//!
//! All buffers live in [`State`], sized once for a context length and a batch size: a decode
//! step allocates nothing.

use crate::config::{Activation, ModelConfig};
use crate::error::ModelError;
use crate::model::{Head, Linear, Model};
use tern_kernels::actquant::{quantize_acts, QuantizedActs};
use tern_kernels::dense;
use tern_kernels::pool::SyncPtr;
use tern_kernels::ThreadPool;

/// Which logits a forward call produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's, `[n][vocab]` (parity checks, perplexity).
    All,
}

/// Where a forward pass spends its time, phase by phase (`tern bench model --profile`).
/// Off by default; when on, each phase boundary costs one clock read.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    enabled: bool,
    last: Option<std::time::Instant>,
    /// Nanoseconds per phase, indexed like [`Profile::PHASES`].
    pub ns: [u64; 8],
}

impl Profile {
    pub const PHASES: [&'static str; 8] = [
        "norms, activation quantization, residuals",
        "q/k/v projections",
        "RoPE and KV-cache writes",
        "attention",
        "o_proj",
        "gate/up projections",
        "down_proj",
        "LM head",
    ];
    const NORMS: usize = 0;
    const QKV: usize = 1;
    const ROPE: usize = 2;
    const ATTN: usize = 3;
    const O: usize = 4;
    const GATE_UP: usize = 5;
    const DOWN: usize = 6;
    const HEAD: usize = 7;

    /// Charges the time since the previous mark to `phase`.
    #[inline]
    fn mark(&mut self, phase: usize) {
        if self.enabled {
            let now = std::time::Instant::now();
            if let Some(t) = self.last {
                self.ns[phase] += (now - t).as_nanos() as u64;
            }
            self.last = Some(now);
        }
    }

    fn start(&mut self) {
        if self.enabled {
            self.last = Some(std::time::Instant::now());
        }
    }
}

/// KV cache and scratch buffers for one sequence.
pub struct State {
    capacity: usize,
    max_batch: usize,
    /// Tokens already in the cache.
    pos: usize,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    xq: QuantizedActs,
    scores: Vec<f32>,
    logits: Vec<f32>,
    profile: Profile,
}

impl State {
    /// A state for sequences of up to `capacity` tokens, processed `max_batch` at a time
    /// (larger prompts are split into chunks).
    pub fn new(
        config: &ModelConfig,
        capacity: usize,
        max_batch: usize,
        threads: usize,
    ) -> Result<State, ModelError> {
        if capacity == 0 || capacity > config.max_seq_len {
            return Err(ModelError::Other(format!(
                "context of {capacity} tokens requested; the model supports 1 to {}",
                config.max_seq_len
            )));
        }
        let c = config;
        let b = max_batch.clamp(1, capacity);
        let cache = c.num_layers * capacity * c.kv_dim();
        let half = c.head_dim / 2;
        // HF's rotary table: inv_freq_i = 1 / theta^(2i / d), angle = position * inv_freq_i, f32.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        let mut rope_cos = Vec::with_capacity(capacity * half);
        let mut rope_sin = Vec::with_capacity(capacity * half);
        for p in 0..capacity {
            for &f in &inv_freq {
                let a = p as f32 * f;
                rope_cos.push(a.cos());
                rope_sin.push(a.sin());
            }
        }
        let widest = c.hidden_size.max(c.intermediate_size).max(c.q_dim());
        Ok(State {
            capacity,
            max_batch: b,
            pos: 0,
            k_cache: vec![0.0; cache],
            v_cache: vec![0.0; cache],
            rope_cos,
            rope_sin,
            x: vec![0.0; b * c.hidden_size],
            xn: vec![0.0; b * widest],
            q: vec![0.0; b * c.q_dim()],
            k: vec![0.0; b * c.kv_dim()],
            v: vec![0.0; b * c.kv_dim()],
            att: vec![0.0; b * c.q_dim()],
            proj: vec![0.0; b * c.hidden_size],
            gate: vec![0.0; b * c.intermediate_size],
            up: vec![0.0; b * c.intermediate_size],
            xq: QuantizedActs::new(),
            scores: vec![0.0; threads.max(1) * capacity],
            logits: vec![0.0; c.vocab_size],
            profile: Profile::default(),
        })
    }

    /// Tokens in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets the sequence (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.pos = 0;
    }
    /// Bytes of K and V cache one position holds (what attention reads per cached token).
    pub fn kv_bytes_per_position(&self) -> usize {
        (self.k_cache.len() + self.v_cache.len()) * std::mem::size_of::<f32>() / self.capacity
    }
    /// Starts (and zeroes) or stops the per-phase profile.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = Profile {
            enabled: on,
            ..Profile::default()
        };
    }
    pub fn profile(&self) -> &Profile {
        &self.profile
    }
    /// Drops cached tokens after `pos` (e.g. to re-run a prompt suffix).
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }
}

impl Model {
    /// Runs `tokens` (appended after the cached ones) and returns the requested logits:
    /// `[vocab]` for [`Logits::Last`], `[tokens.len()][vocab]` for [`Logits::All`].
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        state: &'s mut State,
        which: Logits,
        pool: &ThreadPool,
    ) -> Result<&'s [f32], ModelError> {
        let c = &self.config;
        if state.pos + tokens.len() > state.capacity {
            return Err(ModelError::ContextOverflow {
                tokens: state.pos + tokens.len(),
                generate: 0,
                context: state.capacity,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::Other(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        if tokens.is_empty() {
            return Ok(&state.logits[..0]);
        }
        if which == Logits::All {
            state.logits.resize(tokens.len() * c.vocab_size, 0.0);
        }
        let mut done = 0;
        for chunk in tokens.chunks(state.max_batch) {
            self.forward_chunk(chunk, state, pool);
            state.profile.start();
            let n = chunk.len();
            match which {
                Logits::All => {
                    let (xn, logits) = (&state.xn, &mut state.logits);
                    self.head_forward(
                        xn,
                        n,
                        &mut state.xq,
                        &mut logits[done * c.vocab_size..(done + n) * c.vocab_size],
                        pool,
                    );
                }
                Logits::Last if done + n == tokens.len() => {
                    let last = &state.xn[(n - 1) * c.hidden_size..n * c.hidden_size];
                    self.head_forward(
                        last,
                        1,
                        &mut state.xq,
                        &mut state.logits[..c.vocab_size],
                        pool,
                    );
                }
                Logits::Last => {}
            }
            state.profile.mark(Profile::HEAD);
            done += n;
        }
        Ok(match which {
            Logits::Last => &state.logits[..c.vocab_size],
            Logits::All => &state.logits[..tokens.len() * c.vocab_size],
        })
    }

    /// One chunk of at most `max_batch` tokens; leaves the final-normed hidden states of the
    /// chunk in `state.xn` (`[n][hidden]`).
    fn forward_chunk(&self, tokens: &[u32], s: &mut State, pool: &ThreadPool) {
        let c = &self.config;
        let (n, d) = (tokens.len(), c.hidden_size);
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed
                .row_into(tok as usize, &mut s.x[t * d..(t + 1) * d]);
        }
        let (qd, kvd, inter) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        s.profile.start();
        for (li, layer) in self.layers.iter().enumerate() {
            // Attention.
            rms_norm(
                &s.x[..n * d],
                &layer.attn_norm,
                c.rms_norm_eps,
                &mut s.xn[..n * d],
            );
            quantize_for(
                &[&layer.q, &layer.k, &layer.v],
                &s.xn[..n * d],
                n,
                d,
                &mut s.xq,
                pool,
            );
            s.profile.mark(Profile::NORMS);
            Linear::forward_many(
                &[&layer.q, &layer.k, &layer.v],
                &s.xn[..n * d],
                &s.xq,
                n,
                &mut [&mut s.q[..n * qd], &mut s.k[..n * kvd], &mut s.v[..n * kvd]],
                pool,
            );
            s.profile.mark(Profile::QKV);
            for t in 0..n {
                let p = s.pos + t;
                let half = c.head_dim / 2;
                let cos = &s.rope_cos[p * half..(p + 1) * half];
                let sin = &s.rope_sin[p * half..(p + 1) * half];
                for h in 0..c.num_heads {
                    rope(&mut s.q[t * qd + h * c.head_dim..][..c.head_dim], cos, sin);
                }
                for h in 0..c.num_kv_heads {
                    rope(&mut s.k[t * kvd + h * c.head_dim..][..c.head_dim], cos, sin);
                }
                let hd = c.head_dim;
                for h in 0..c.num_kv_heads {
                    let at = kv_offset(c, s.capacity, li, h, p);
                    let from = t * kvd + h * hd;
                    s.k_cache[at..at + hd].copy_from_slice(&s.k[from..from + hd]);
                    s.v_cache[at..at + hd].copy_from_slice(&s.v[from..from + hd]);
                }
            }
            s.profile.mark(Profile::ROPE);
            attention(c, li, n, s, pool);
            s.profile.mark(Profile::ATTN);
            let att_in: &[f32] = match &layer.attn_sub_norm {
                Some(w) => {
                    rms_norm(&s.att[..n * qd], w, c.rms_norm_eps, &mut s.xn[..n * qd]);
                    &s.xn[..n * qd]
                }
                None => &s.att[..n * qd],
            };
            quantize_for(&[&layer.o], att_in, n, qd, &mut s.xq, pool);
            s.profile.mark(Profile::NORMS);
            layer
                .o
                .forward(att_in, &s.xq, n, &mut s.proj[..n * d], pool);
            s.profile.mark(Profile::O);
            add_into(&mut s.x[..n * d], &s.proj[..n * d]);

            // Feed-forward.
            rms_norm(
                &s.x[..n * d],
                &layer.ffn_norm,
                c.rms_norm_eps,
                &mut s.xn[..n * d],
            );
            quantize_for(
                &[&layer.gate, &layer.up],
                &s.xn[..n * d],
                n,
                d,
                &mut s.xq,
                pool,
            );
            s.profile.mark(Profile::NORMS);
            Linear::forward_many(
                &[&layer.gate, &layer.up],
                &s.xn[..n * d],
                &s.xq,
                n,
                &mut [&mut s.gate[..n * inter], &mut s.up[..n * inter]],
                pool,
            );
            s.profile.mark(Profile::GATE_UP);
            gated_activation(c.activation, &mut s.gate[..n * inter], &s.up[..n * inter]);
            let ffn_in: &[f32] = match &layer.ffn_sub_norm {
                Some(w) => {
                    rms_norm(
                        &s.gate[..n * inter],
                        w,
                        c.rms_norm_eps,
                        &mut s.xn[..n * inter],
                    );
                    &s.xn[..n * inter]
                }
                None => &s.gate[..n * inter],
            };
            quantize_for(&[&layer.down], ffn_in, n, inter, &mut s.xq, pool);
            s.profile.mark(Profile::NORMS);
            layer
                .down
                .forward(ffn_in, &s.xq, n, &mut s.proj[..n * d], pool);
            s.profile.mark(Profile::DOWN);
            add_into(&mut s.x[..n * d], &s.proj[..n * d]);
        }
        rms_norm(
            &s.x[..n * d],
            &self.norm,
            c.rms_norm_eps,
            &mut s.xn[..n * d],
        );
        s.profile.mark(Profile::NORMS);
        s.pos += n;
    }

    /// Logits `[n][vocab]` of `n` final-normed hidden states.
    fn head_forward(
        &self,
        xn: &[f32],
        n: usize,
        xq: &mut QuantizedActs,
        out: &mut [f32],
        pool: &ThreadPool,
    ) {
        let c = &self.config;
        let xn = &xn[..n * c.hidden_size];
        match &self.head {
            Head::Tied => self
                .embed
                .matmul(c.vocab_size, c.hidden_size, xn, n, out, pool),
            Head::F16(w) => dense::matmul_f16(w, c.vocab_size, c.hidden_size, xn, n, out, pool),
            Head::F32(w) => dense::matmul_f32(w, c.vocab_size, c.hidden_size, xn, n, out, pool),
            Head::Int8(m) => {
                quantize_acts(xn, n, c.hidden_size, xq, pool);
                dense::gemv_i8(m, xq, out, pool);
            }
        }
    }
}

/// Quantizes `x` once if any of the projections that read it is ternary.
fn quantize_for(
    projs: &[&Linear],
    x: &[f32],
    n: usize,
    k: usize,
    xq: &mut QuantizedActs,
    pool: &ThreadPool,
) {
    if projs.iter().any(|p| p.is_ternary()) {
        quantize_acts(&x[..n * k], n, k, xq, pool);
    }
}

/// RMSNorm in f32 over rows of `w.len()`: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        // 16 partial sums (vectorisable, same bits at any width): a serial f32 sum here cost
        // ~2 us per norm at 1536-4096 wide, a tenth of a decode layer's non-matrix time.
        let ms = dot16(xr, xr) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    }
}

/// Rotate-half RoPE (HF / NeoX pairing): dimension i pairs with i + d/2.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (a, b) = x.split_at_mut(half);
    for i in 0..half {
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0 * cos[i] - x1 * sin[i];
        b[i] = x1 * cos[i] + x0 * sin[i];
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = act(gate) * up`, in place.
fn gated_activation(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Relu2 => {
            for (g, &u) in gate.iter_mut().zip(up) {
                let r = g.max(0.0);
                *g = r * r * u;
            }
        }
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
    }
}

/// Where position `pos` of KV head `kv_head` in `layer` starts in the K and V caches, laid out
/// `[layer][kv head][position][head_dim]`: one head's keys (and values) are one sequential
/// stream for attention to read.
fn kv_offset(c: &ModelConfig, capacity: usize, layer: usize, kv_head: usize, pos: usize) -> usize {
    ((layer * c.num_kv_heads + kv_head) * capacity + pos) * c.head_dim
}

/// Causal GQA attention of the chunk's `n` queries (positions `pos - n .. pos` after the
/// cache update, i.e. `s.pos + t`) against the cache, into `s.att`.
fn attention(c: &ModelConfig, layer: usize, n: usize, s: &mut State, pool: &ThreadPool) {
    let (hd, qd) = (c.head_dim, c.q_dim());
    let group = c.gqa_group();
    let scale = 1.0 / (hd as f32).sqrt();
    let pairs = n * c.num_heads;
    let cap = s.capacity;
    let scratch_rows = s.scores.len() / cap;
    let tasks = if n * (s.pos + n) * c.num_heads * hd < 1 << 12 {
        1
    } else {
        pool.threads().min(pairs).min(scratch_rows)
    };
    let base = s.pos;
    let (kc, vc) = (&s.k_cache[..], &s.v_cache[..]);
    let q = &s.q;
    let att = SyncPtr(s.att.as_mut_ptr());
    let scores = SyncPtr(s.scores.as_mut_ptr());
    let isa = tern_kernels::Isa::detect();
    pool.run(tasks, &|task| {
        // SAFETY: each task owns scratch row `task` of `scores` (tasks <= its rows) and the
        // disjoint (token, head) pairs of its range in `att`; both buffers outlive `pool.run`.
        let sc = unsafe { std::slice::from_raw_parts_mut(scores.get().add(task * cap), cap) };
        let lo = pairs * task / tasks;
        let hi = pairs * (task + 1) / tasks;
        for pair in lo..hi {
            // Head-major: a task's consecutive pairs reuse one head's keys and values.
            let (h, t) = (pair / n, pair % n);
            let len = base + t + 1;
            let kvh = kv_offset(c, cap, layer, h / group, 0);
            // SAFETY: see above; (t, h) is this task's pair.
            let out = unsafe { std::slice::from_raw_parts_mut(att.get().add(t * qd + h * hd), hd) };
            let head = AttnHead {
                q: &q[t * qd + h * hd..][..hd],
                keys: kc,
                values: vc,
                offset: kvh,
                scale,
            };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::detect` found AVX-512 F (resp. AVX2) on this CPU.
                tern_kernels::Isa::Avx512 => unsafe { attend_avx512(&head, &mut sc[..len], out) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                tern_kernels::Isa::Avx2 => unsafe { attend_avx2(&head, &mut sc[..len], out) },
                _ => attend(&head, &mut sc[..len], out),
            }
        }
    });
}

/// One query head against the cached keys and values of its KV head.
struct AttnHead<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    /// The KV head's first float in `keys` / `values` (positions follow, `q.len()` apart).
    offset: usize,
    scale: f32,
}

/// Softmax-weighted sum of values into `out`; `scores` has one slot per cached position.
/// Written so the compiler vectorises it at any width with identical results: dot products
/// keep 16 fixed partial sums, everything else is element-wise.
#[inline(always)]
fn attend(h: &AttnHead, scores: &mut [f32], out: &mut [f32]) {
    let hd = h.q.len();
    let mut max = f32::NEG_INFINITY;
    let len = scores.len();
    for (j, sj) in scores.iter_mut().enumerate() {
        // One head's cache is a stream of a few tens of KB: too short for the hardware
        // prefetcher to ramp up, so decode waited on DRAM latency. Ask for the keys a few
        // positions ahead and for this position's values, which the second pass reads.
        if j + KV_AHEAD < len {
            prefetch(&h.keys[h.offset + (j + KV_AHEAD) * hd..][..hd]);
        }
        prefetch(&h.values[h.offset + j * hd..][..hd]);
        let k = &h.keys[h.offset + j * hd..][..hd];
        *sj = dot16(h.q, k) * h.scale;
        max = max.max(*sj);
    }
    let mut sum = 0.0;
    for sj in scores.iter_mut() {
        *sj = (*sj - max).exp();
        sum += *sj;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    // Four positions per pass over `out`, each added in position order (the same bits as one
    // at a time), so `out` is loaded and stored a quarter as often.
    let values = &h.values[h.offset..h.offset + scores.len() * hd];
    let (sc4, vc4) = (scores.chunks_exact(4), values.chunks_exact(4 * hd));
    let (sr, vr) = (sc4.remainder(), vc4.remainder());
    for (w, v) in sc4.zip(vc4) {
        let (w0, w1, w2, w3) = (w[0] * inv, w[1] * inv, w[2] * inv, w[3] * inv);
        let (v0, rest) = v.split_at(hd);
        let (v1, rest) = rest.split_at(hd);
        let (v2, v3) = rest.split_at(hd);
        for i in 0..hd {
            let mut o = out[i];
            o += w0 * v0[i];
            o += w1 * v1[i];
            o += w2 * v2[i];
            o += w3 * v3[i];
            out[i] = o;
        }
    }
    for (&w, v) in sr.iter().zip(vr.chunks_exact(hd)) {
        let w = w * inv;
        for (o, &x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
}

/// Positions ahead the attention prefetches keys.
const KV_AHEAD: usize = 16;

/// Asks for every cache line of `x` (a hint: no effect on results, never faults).
#[inline(always)]
fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512(h: &AttnHead, scores: &mut [f32], out: &mut [f32]) {
    attend(h, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(h: &AttnHead, scores: &mut [f32], out: &mut [f32]) {
    attend(h, scores, out)
}

/// Dot product with 16 fixed partial sums (element i goes to sum i mod 16), added up in a
/// fixed order at the end: vectorisable, and the same bits whatever the vector width.
/// (A pairwise tree for the final sum measured 20% slower prefill at 700m, pp512.)
#[inline(always)]
fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[i] += x * y;
    }
    let mut s = 0.0;
    for v in acc {
        s += v;
    }
    s
}
