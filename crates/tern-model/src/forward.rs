//! The forward pass: embeddings, N BitNet blocks, final norm, LM head; with a KV cache.
//!
//! ```text
//! h = x + o_proj(attn_sub_norm(Attn(rope(q, k), v)))   q, k, v = proj(input_layernorm(x))
//! y = h + down_proj(ffn_sub_norm(act(gate(z)) * up(z)))  z = post_attention_layernorm(h)
//! ```
//!
//! A sequence's KV cache is a [`KvCache`]; the buffers of a step are a [`BatchScratch`], sized
//! once for a context length and a number of token rows: a decode step allocates nothing.
//! [`Model::forward`] runs one sequence ([`State`] = cache + scratch); [`Model::forward_batch`]
//! runs a step over several sequences, batch-invariantly (see there).

use crate::config::{Activation, ModelConfig};
use crate::error::ModelError;
use crate::model::{Embedding, Head, Linear, Model};
use half::f16;
use half::slice::HalfFloatSliceExt;
use tern_kernels::actquant::{quantize_acts, QuantizedActs};
use tern_kernels::attention::{
    attention_batch, attention_batch_scratch, Heads, KvElem, Q8Block, SeqSpan,
};
use tern_kernels::dense;
use tern_kernels::norm::rms_norm;
use tern_kernels::rope::rope;
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

/// One sequence's KV cache: the part of a sequence that lives from step to step. The
/// per-step buffers are a [`BatchScratch`], shared by every sequence a step runs.
#[derive(Clone)]
pub struct KvCache {
    capacity: usize,
    /// Tokens already in the cache.
    pos: usize,
    /// Shape check against the model it is run with: `[layers][kv heads][capacity][head_dim]`.
    layers: usize,
    kv_dim: usize,
    head_dim: usize,
    data: KvData,
}

/// The element type of a [`KvCache`] (llama.cpp's `-ctk/-ctv`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// Exact: keys and values as computed.
    #[default]
    F32,
    /// Half the memory and the bytes attention reads; keys and values rounded to f16 when
    /// written (so logits differ from an f32 cache by that rounding, the same for every batch).
    F16,
    /// llama.cpp's `q8_0`: blocks of 32 int8 values and an f16 scale, 34 bytes per 32 values
    /// (27% of f32); heads must be a multiple of 32 values.
    Q8,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8];
    /// llama.cpp's name (`-ctk`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8_0",
        }
    }
    /// A type by its name (`q8` is taken for `q8_0`).
    pub fn from_name(s: &str) -> Option<KvType> {
        if s == "q8" {
            return Some(KvType::Q8);
        }
        KvType::ALL.into_iter().find(|t| t.name() == s)
    }
    /// Bytes `n` values take (`n` a multiple of 32 for q8_0).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            KvType::F32 => 4 * n,
            KvType::F16 => 2 * n,
            KvType::Q8 => n / Q8Block::LEN * std::mem::size_of::<Q8Block>(),
        }
    }
}

/// Keys and values, `[layer][kv head][position][head_dim]` each.
#[derive(Clone)]
enum KvData {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    F16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
    /// `head_dim / 32` blocks per head and position.
    Q8 {
        k: Vec<Q8Block>,
        v: Vec<Q8Block>,
    },
}

impl KvData {
    /// Stores one head's row `x` (keys, or values when `value`) at value offset `at` (a
    /// multiple of 32 for q8_0), rounded to the element type.
    #[inline]
    fn write(&mut self, value: bool, at: usize, x: &[f32]) {
        let n = x.len();
        match self {
            KvData::F32 { k, v } => (if value { v } else { k })[at..at + n].copy_from_slice(x),
            KvData::F16 { k, v } => {
                (if value { v } else { k })[at..at + n].convert_from_f32_slice(x)
            }
            KvData::Q8 { k, v } => {
                let (at, n) = (at / Q8Block::LEN, n / Q8Block::LEN);
                Q8Block::quantize_row(x, &mut (if value { v } else { k })[at..at + n]);
            }
        }
    }
}

impl KvCache {
    /// An empty cache for a sequence of up to `capacity` tokens (1 to the model's maximum).
    pub fn new(config: &ModelConfig, capacity: usize) -> Result<KvCache, ModelError> {
        KvCache::with_type(config, capacity, KvType::F32)
    }
    /// As [`KvCache::new`] with elements of type `ty`.
    pub fn with_type(
        config: &ModelConfig,
        capacity: usize,
        ty: KvType,
    ) -> Result<KvCache, ModelError> {
        check_capacity(config, capacity)?;
        let c = config;
        let (max, per) = match ty {
            KvType::F32 => (usize::MAX, 1),
            KvType::F16 => (<f16 as KvElem>::MAX_HEAD_DIM, 1),
            KvType::Q8 => (<Q8Block as KvElem>::MAX_HEAD_DIM, Q8Block::LEN),
        };
        if c.head_dim > max || !c.head_dim.is_multiple_of(per) {
            return Err(ModelError::Other(format!(
                "a {} KV cache takes heads of up to {max} values, a multiple of {per}; the \
                 model's are {}",
                ty.name(),
                c.head_dim
            )));
        }
        let len = c.num_layers * capacity * c.kv_dim();
        Ok(KvCache {
            capacity,
            pos: 0,
            layers: c.num_layers,
            kv_dim: c.kv_dim(),
            head_dim: c.head_dim,
            data: match ty {
                KvType::F32 => KvData::F32 {
                    k: vec![0.0; len],
                    v: vec![0.0; len],
                },
                KvType::F16 => KvData::F16 {
                    k: vec![f16::ZERO; len],
                    v: vec![f16::ZERO; len],
                },
                KvType::Q8 => KvData::Q8 {
                    k: vec![Q8Block::default(); len / Q8Block::LEN],
                    v: vec![Q8Block::default(); len / Q8Block::LEN],
                },
            },
        })
    }
    /// Bytes a cache of `capacity` tokens of type `ty` holds for this model (to size a pool of
    /// caches by a memory budget).
    pub fn bytes_for(config: &ModelConfig, capacity: usize, ty: KvType) -> usize {
        2 * ty.bytes(config.num_layers * capacity * config.kv_dim())
    }
    pub fn kv_type(&self) -> KvType {
        match self.data {
            KvData::F32 { .. } => KvType::F32,
            KvData::F16 { .. } => KvType::F16,
            KvData::Q8 { .. } => KvType::Q8,
        }
    }
    /// Tokens in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets the sequence (the memory stays allocated, ready for the next one).
    pub fn reset(&mut self) {
        self.pos = 0;
    }
    /// Drops cached tokens after `pos`.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }
    /// Makes this cache hold the first `len` positions of `src` (a shared prompt forked into
    /// several continuations): its keys and values copied, bit for bit, and the rest of this
    /// cache forgotten. The caches may differ in capacity, not in model shape or element type.
    pub fn copy_prefix_from(&mut self, src: &KvCache, len: usize) -> Result<(), ModelError> {
        if (self.layers, self.kv_dim, self.head_dim) != (src.layers, src.kv_dim, src.head_dim)
            || self.kv_type() != src.kv_type()
        {
            return Err(ModelError::Other(format!(
                "copying a KV cache of {} layers x {} {} values per position into one of {} x {} {}",
                src.layers,
                src.kv_dim,
                src.kv_type().name(),
                self.layers,
                self.kv_dim,
                self.kv_type().name()
            )));
        }
        if len > src.pos || len > self.capacity {
            return Err(ModelError::Other(format!(
                "copying {len} KV positions from a cache holding {} into one of {}",
                src.pos, self.capacity
            )));
        }
        let heads = self.layers * (self.kv_dim / self.head_dim);
        let hd = self.head_dim;
        // `[layer][kv head][capacity][head_dim]`: one run of `len * head_dim` values per head.
        fn copy<T: Copy>(
            dst: &mut [T],
            dcap: usize,
            src: &[T],
            scap: usize,
            heads: usize,
            n: usize,
        ) {
            for h in 0..heads {
                dst[h * dcap..h * dcap + n].copy_from_slice(&src[h * scap..h * scap + n]);
            }
        }
        let (dcap, scap) = (self.capacity * hd, src.capacity * hd);
        match (&mut self.data, &src.data) {
            (KvData::F32 { k, v }, KvData::F32 { k: sk, v: sv }) => {
                copy(k, dcap, sk, scap, heads, len * hd);
                copy(v, dcap, sv, scap, heads, len * hd);
            }
            (KvData::F16 { k, v }, KvData::F16 { k: sk, v: sv }) => {
                copy(k, dcap, sk, scap, heads, len * hd);
                copy(v, dcap, sv, scap, heads, len * hd);
            }
            (KvData::Q8 { k, v }, KvData::Q8 { k: sk, v: sv }) => {
                let b = Q8Block::LEN;
                copy(k, dcap / b, sk, scap / b, heads, len * hd / b);
                copy(v, dcap / b, sv, scap / b, heads, len * hd / b);
            }
            _ => unreachable!("types compared above"),
        }
        self.pos = len;
        Ok(())
    }
    /// Fills positions `0..len` with random keys and values in [-1, 1) (rounded to the cache's
    /// type) and sets the cache to hold `len` tokens: for benchmarks of decode at a depth
    /// (attention's work does not depend on the values) without running a long prefill.
    pub fn fill_random(&mut self, len: usize, seed: u64) -> Result<(), ModelError> {
        if len > self.capacity {
            return Err(ModelError::Other(format!(
                "{len} random positions do not fit a cache of {}",
                self.capacity
            )));
        }
        let mut rng = tern_kernels::rng::Rng::new(seed);
        let row = self.kv_dim;
        let mut x = vec![0.0f32; row];
        for l in 0..self.layers {
            for p in 0..len {
                for half in 0..2 {
                    for v in x.iter_mut() {
                        *v = rng.unit_f32();
                    }
                    // `[layer][kv head][capacity][head_dim]`: one head's row at a time.
                    let hd = self.head_dim;
                    for (h, xs) in x.chunks_exact(hd).enumerate() {
                        let at = ((l * (row / hd) + h) * self.capacity + p) * hd;
                        self.data.write(half == 1, at, xs);
                    }
                }
            }
        }
        self.pos = len;
        Ok(())
    }
    /// Bytes of K and V cache one position holds (what attention reads per cached token).
    pub fn bytes_per_position(&self) -> usize {
        self.bytes() / self.capacity
    }
    /// Bytes the cache holds.
    pub fn bytes(&self) -> usize {
        2 * self
            .kv_type()
            .bytes(self.layers * self.capacity * self.kv_dim)
    }
}

fn check_capacity(config: &ModelConfig, capacity: usize) -> Result<(), ModelError> {
    if capacity == 0 || capacity > config.max_seq_len {
        return Err(ModelError::Other(format!(
            "context of {capacity} tokens requested; the model supports 1 to {}",
            config.max_seq_len
        )));
    }
    Ok(())
}

/// The buffers of one forward step, for up to `max_rows` token rows in all (over every
/// sequence of the step) at positions below `capacity`. Sized once: a step allocates nothing,
/// except that the logits buffer grows to the most logits rows a step has asked for.
pub struct BatchScratch {
    capacity: usize,
    max_rows: usize,
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
    /// Where each sequence's logits start and end in `logits` (floats), per step.
    spans: Vec<std::ops::Range<usize>>,
    /// Each sequence's rows and first position, per step, for attention.
    attn_spans: Vec<SeqSpan>,
    profile: Profile,
}

impl BatchScratch {
    /// Scratch for steps of up to `max_rows` token rows (at least 1; over all sequences of a
    /// step, so possibly more than `capacity`) over sequences whose caches hold up to
    /// `capacity` tokens, with attention on `threads` threads.
    pub fn new(
        config: &ModelConfig,
        capacity: usize,
        max_rows: usize,
        threads: usize,
    ) -> Result<BatchScratch, ModelError> {
        check_capacity(config, capacity)?;
        let c = config;
        let b = max_rows.max(1);
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
        Ok(BatchScratch {
            capacity,
            max_rows: b,
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
            scores: vec![
                0.0;
                attention_batch_scratch(
                    Heads {
                        heads: c.num_heads,
                        kv_heads: c.num_kv_heads,
                        head_dim: c.head_dim,
                    },
                    capacity,
                    threads,
                )
            ],
            logits: vec![0.0; c.vocab_size],
            spans: Vec::new(),
            attn_spans: Vec::new(),
            profile: Profile::default(),
        })
    }
    /// Most token rows (all sequences together) one step may run.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
    /// Largest cache capacity this scratch can serve (its RoPE table's length).
    pub fn capacity(&self) -> usize {
        self.capacity
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
}

/// One sequence's part of a [`Model::forward_batch`] step: its cache, the tokens to append
/// (one to decode, a chunk of prompt to prefill, none to sit the step out), and which logits
/// it wants back.
pub struct SeqInput<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// The logits of a [`Model::forward_batch`] step, sequence by sequence.
#[derive(Clone, Copy, Debug)]
pub struct BatchLogits<'s> {
    data: &'s [f32],
    spans: &'s [std::ops::Range<usize>],
}

impl<'s> BatchLogits<'s> {
    /// Sequence `i`'s logits (`i` as in the step's `seqs`): `[vocab]` for [`Logits::Last`],
    /// `[tokens][vocab]` for [`Logits::All`], empty when it ran no tokens.
    pub fn get(&self, i: usize) -> &'s [f32] {
        &self.data[self.spans[i].clone()]
    }
    /// Sequences in the step.
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// A sequence's KV cache and the scratch buffers to run it alone: what [`Model::forward`]
/// takes. A scheduler running several sequences keeps one [`KvCache`] per sequence and one
/// [`BatchScratch`] instead ([`Model::forward_batch`]).
pub struct State {
    cache: KvCache,
    scratch: BatchScratch,
    /// [`Logits::All`] output (`[tokens][vocab]`).
    all: Vec<f32>,
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
        State::with_kv_type(config, capacity, max_batch, threads, KvType::F32)
    }

    /// As [`State::new`] with a KV cache of type `kv`.
    pub fn with_kv_type(
        config: &ModelConfig,
        capacity: usize,
        max_batch: usize,
        threads: usize,
        kv: KvType,
    ) -> Result<State, ModelError> {
        Ok(State {
            cache: KvCache::with_type(config, capacity, kv)?,
            // One sequence: a chunk never holds more rows than the cache.
            scratch: BatchScratch::new(config, capacity, max_batch.min(capacity), threads)?,
            all: Vec::new(),
        })
    }

    /// Tokens in the cache.
    pub fn pos(&self) -> usize {
        self.cache.pos
    }
    pub fn capacity(&self) -> usize {
        self.cache.capacity
    }
    /// Forgets the sequence (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.cache.reset();
    }
    /// Bytes of K and V cache one position holds (what attention reads per cached token).
    pub fn kv_bytes_per_position(&self) -> usize {
        self.cache.bytes_per_position()
    }
    /// Starts (and zeroes) or stops the per-phase profile.
    pub fn set_profiling(&mut self, on: bool) {
        self.scratch.set_profiling(on);
    }
    pub fn profile(&self) -> &Profile {
        &self.scratch.profile
    }
    /// Drops cached tokens after `pos` (e.g. to re-run a prompt suffix).
    pub fn truncate(&mut self, pos: usize) {
        self.cache.truncate(pos);
    }
    /// The sequence's cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
    /// [`KvCache::fill_random`] of the sequence's cache.
    pub fn fill_random(&mut self, len: usize, seed: u64) -> Result<(), ModelError> {
        self.cache.fill_random(len, seed)
    }
}

impl Model {
    /// Runs `tokens` (appended after the cached ones) and returns the requested logits:
    /// `[vocab]` for [`Logits::Last`], `[tokens.len()][vocab]` for [`Logits::All`].
    ///
    /// [`Logits::Last`] gives the bits [`Model::forward_batch`] gives the same sequence in any
    /// batch. [`Logits::All`] runs the LM head as one GEMM per chunk (fast for perplexity),
    /// which sums in another order than the per-row GEMV: equal to f32 rounding, not bit for bit.
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        state: &'s mut State,
        which: Logits,
        pool: &ThreadPool,
    ) -> Result<&'s [f32], ModelError> {
        let c = &self.config;
        self.check_tokens(&state.cache, tokens)?;
        if tokens.is_empty() {
            return Ok(&[]);
        }
        let s = &mut state.scratch;
        if which == Logits::All {
            state.all.resize(tokens.len() * c.vocab_size, 0.0);
        }
        let mut done = 0;
        for chunk in tokens.chunks(s.max_rows) {
            let mut seq = [SeqInput {
                cache: &mut state.cache,
                tokens: chunk,
                logits: which,
            }];
            self.hidden(&mut seq, s, pool);
            s.profile.start();
            let n = chunk.len();
            match which {
                Logits::All => self.head_gemm(
                    &s.xn,
                    n,
                    &mut s.xq,
                    &mut state.all[done * c.vocab_size..(done + n) * c.vocab_size],
                    pool,
                ),
                Logits::Last if done + n == tokens.len() => {
                    let last = &s.xn[(n - 1) * c.hidden_size..n * c.hidden_size];
                    self.head_rows(last, 1, &mut s.xq, &mut s.logits[..c.vocab_size], pool);
                }
                Logits::Last => {}
            }
            s.profile.mark(Profile::HEAD);
            done += n;
        }
        Ok(match which {
            Logits::Last => &state.scratch.logits[..c.vocab_size],
            Logits::All => &state.all[..tokens.len() * c.vocab_size],
        })
    }

    /// One step over several sequences: every sequence's `tokens` are appended to its own
    /// cache, all their rows (at most [`BatchScratch::max_rows`] together) going through each
    /// projection as one GEMM, so the weights are read once per step, not once per sequence.
    /// Each row gets RoPE at its own position and attends to its own sequence's cache (causal
    /// within a chunk).
    ///
    /// **Batch invariance**: a sequence's logits are bit-identical to what it gets in any other
    /// batch, and to [`Model::forward`] with [`Logits::Last`] at the same positions, whatever
    /// the chunking of its prompt. Every per-row operation (norms, activation quantization,
    /// RoPE, attention, residuals) depends on that row and its own cache only; the ternary
    /// GEMMs accumulate in int32 and finish each output with the same float operations for any
    /// number of rows; and the LM head runs as a multi-row GEMV ([`dense::gemv_f16_rows`]) that
    /// gives each row the single-row GEMV's bits (the int8 head accumulates in integers).
    /// Projections stored dense (f16/f32 FP baselines, not BitNet checkpoints) run as float
    /// GEMMs whose sums depend on the row count, so such models are not batch-invariant.
    ///
    /// Errors (before anything is run or any cache changes): too many rows for `scratch`, a
    /// cache longer than `scratch` serves or of another model's shape, caches of different
    /// [`KvType`]s, a sequence that would overflow its cache, a token outside the vocabulary.
    ///
    /// A scheduler's step, one sequence decoding while another prefills a chunk:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), tern_model::ModelError> {
    /// use tern_model::forward::Logits;
    /// use tern_model::{ModelPath, Options, SeqInput, Session};
    /// let session = Session::open(&ModelPath::Bundled, &Options::default())?;
    /// let (model, pool) = (&session.loaded.model, &session.pool);
    /// let mut scratch = session.new_batch_scratch(2048, 256)?; // rows per step
    /// let (mut a, mut b) = (session.new_kv_cache(2048)?, session.new_kv_cache(2048)?);
    /// model.forward_batch(
    ///     &mut [SeqInput { cache: &mut a, tokens: &[1, 450, 4996], logits: Logits::Last }],
    ///     &mut scratch,
    ///     pool,
    /// )?;
    /// let out = model.forward_batch(
    ///     &mut [
    ///         SeqInput { cache: &mut a, tokens: &[17], logits: Logits::Last },
    ///         SeqInput { cache: &mut b, tokens: &[1, 306, 626, 263], logits: Logits::Last },
    ///     ],
    ///     &mut scratch,
    ///     pool,
    /// )?;
    /// let (next_a, last_b) = (out.get(0), out.get(1)); // [vocab] each
    /// # let _ = (next_a, last_b);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_batch<'s>(
        &self,
        seqs: &mut [SeqInput<'_>],
        scratch: &'s mut BatchScratch,
        pool: &ThreadPool,
    ) -> Result<BatchLogits<'s>, ModelError> {
        let c = &self.config;
        let rows: usize = seqs.iter().map(|q| q.tokens.len()).sum();
        if rows > scratch.max_rows {
            return Err(ModelError::Other(format!(
                "a step of {rows} token rows; the scratch holds {}",
                scratch.max_rows
            )));
        }
        if let Some(first) = seqs.first() {
            let ty = first.cache.kv_type();
            if let Some(q) = seqs.iter().find(|q| q.cache.kv_type() != ty) {
                return Err(ModelError::Other(format!(
                    "KV caches of types {} and {} in one step; a step takes one type",
                    ty.name(),
                    q.cache.kv_type().name()
                )));
            }
        }
        for q in seqs.iter() {
            if q.cache.capacity > scratch.capacity {
                return Err(ModelError::Other(format!(
                    "a cache of {} tokens; the scratch serves caches of up to {}",
                    q.cache.capacity, scratch.capacity
                )));
            }
            self.check_tokens(q.cache, q.tokens)?;
        }
        let s = scratch;
        s.spans.clear();
        if rows == 0 {
            s.spans.extend(seqs.iter().map(|_| 0..0));
            return Ok(BatchLogits {
                data: &s.logits[..0],
                spans: &s.spans,
            });
        }
        self.hidden(seqs, s, pool);
        s.profile.start();
        // The rows that want logits, gathered into `x` (free after the final norm).
        let d = c.hidden_size;
        let (mut src, mut out) = (0, 0);
        for q in seqs.iter() {
            let n = q.tokens.len();
            let want = match q.logits {
                _ if n == 0 => 0..0,
                Logits::Last => n - 1..n,
                Logits::All => 0..n,
            };
            s.x[out * d..(out + want.len()) * d]
                .copy_from_slice(&s.xn[(src + want.start) * d..(src + want.end) * d]);
            s.spans
                .push(out * c.vocab_size..(out + want.len()) * c.vocab_size);
            out += want.len();
            src += n;
        }
        if s.logits.len() < out * c.vocab_size {
            s.logits.resize(out * c.vocab_size, 0.0);
        }
        self.head_rows(
            &s.x[..out * d],
            out,
            &mut s.xq,
            &mut s.logits[..out * c.vocab_size],
            pool,
        );
        s.profile.mark(Profile::HEAD);
        Ok(BatchLogits {
            data: &s.logits,
            spans: &s.spans,
        })
    }

    /// What a step may not run for one sequence: tokens past its cache or outside the
    /// vocabulary, or a cache of another shape.
    fn check_tokens(&self, cache: &KvCache, tokens: &[u32]) -> Result<(), ModelError> {
        let c = &self.config;
        if cache.layers != c.num_layers || cache.kv_dim != c.kv_dim() {
            return Err(ModelError::Other(format!(
                "a KV cache of {} layers x {} floats per position, the model has {} x {}",
                cache.layers,
                cache.kv_dim,
                c.num_layers,
                c.kv_dim()
            )));
        }
        if cache.pos + tokens.len() > cache.capacity {
            return Err(ModelError::ContextOverflow {
                tokens: cache.pos + tokens.len(),
                generate: 0,
                context: cache.capacity,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::Other(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        Ok(())
    }

    /// The blocks over every row of `seqs` (checked by the caller: rows fit `s`, tokens fit
    /// each cache): leaves the final-normed hidden states in `s.xn` (`[rows][hidden]`,
    /// sequence after sequence) and advances each cache.
    fn hidden(&self, seqs: &mut [SeqInput<'_>], s: &mut BatchScratch, pool: &ThreadPool) {
        let c = &self.config;
        let d = c.hidden_size;
        let mut n = 0;
        for q in seqs.iter() {
            for &tok in q.tokens {
                self.embed
                    .row_into(tok as usize, &mut s.x[n * d..(n + 1) * d]);
                n += 1;
            }
        }
        let (qd, kvd, inter) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        let (hd, half) = (c.head_dim, c.head_dim / 2);
        // Positions before this step's tokens (the caches advance after the last layer).
        s.attn_spans.clear();
        s.attn_spans.extend(seqs.iter().map(|q| SeqSpan {
            n: q.tokens.len(),
            pos: q.cache.pos,
        }));
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
            // Each sequence's rows at its own positions, into its own cache.
            let mut r = 0;
            for seq in seqs.iter_mut() {
                let cache = &mut *seq.cache;
                for t in 0..seq.tokens.len() {
                    let p = cache.pos + t;
                    let cos = &s.rope_cos[p * half..(p + 1) * half];
                    let sin = &s.rope_sin[p * half..(p + 1) * half];
                    rope(&mut s.q[r * qd..(r + 1) * qd], cos, sin);
                    rope(&mut s.k[r * kvd..(r + 1) * kvd], cos, sin);
                    for h in 0..c.num_kv_heads {
                        let at = kv_offset(c, cache.capacity, li, h, p);
                        let from = r * kvd + h * hd;
                        cache.data.write(false, at, &s.k[from..from + hd]);
                        cache.data.write(true, at, &s.v[from..from + hd]);
                    }
                    r += 1;
                }
            }
            s.profile.mark(Profile::ROPE);
            // Every sequence's rows against its own cache, in one pool job.
            let shape = Heads {
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
            };
            let seqs_ref: &[SeqInput<'_>] = seqs;
            let span = |kc: &KvCache| {
                kv_offset(c, kc.capacity, li, 0, 0)..kv_offset(c, kc.capacity, li + 1, 0, 0)
            };
            let (q, att) = (&s.q[..n * qd], &mut s.att[..n * qd]);
            // One KV type per step (checked by the callers).
            macro_rules! attend_as {
                // `per`: values per element of the variant's vectors.
                ($variant:ident, $per:expr) => {{
                    let cache = |i: usize| match &seqs_ref[i].cache.data {
                        KvData::$variant { k, v } => {
                            let l = span(seqs_ref[i].cache);
                            let l = l.start / $per..l.end / $per;
                            (&k[l.clone()], &v[l])
                        }
                        _ => unreachable!("one KV type per step"),
                    };
                    attention_batch(shape, q, &s.attn_spans, &cache, att, &mut s.scores, pool);
                }};
            }
            match seqs_ref.first().map(|q| q.cache.kv_type()) {
                Some(KvType::F16) => attend_as!(F16, 1),
                Some(KvType::Q8) => attend_as!(Q8, Q8Block::LEN),
                _ => attend_as!(F32, 1),
            }
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
        for seq in seqs.iter_mut() {
            seq.cache.pos += seq.tokens.len();
        }
    }

    /// Logits `[n][vocab]` of `n` final-normed hidden states as one GEMM (prefill's
    /// [`Logits::All`]; summation order depends on `n`).
    fn head_gemm(
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
            Head::Int8(_) => self.head_rows(xn, n, xq, out, pool),
        }
    }

    /// Logits `[n][vocab]` of `n` final-normed hidden states, each row with the bits it gets
    /// alone (`n == 1` is the decode GEMV itself): the head of batch-invariant steps.
    fn head_rows(
        &self,
        xn: &[f32],
        n: usize,
        xq: &mut QuantizedActs,
        out: &mut [f32],
        pool: &ThreadPool,
    ) {
        let c = &self.config;
        let (v, h) = (c.vocab_size, c.hidden_size);
        let xn = &xn[..n * h];
        match (&self.head, &self.embed) {
            (Head::Tied, Embedding::F16(w)) | (Head::F16(w), _) => {
                dense::gemv_f16_rows(w, v, h, xn, n, out, pool)
            }
            (Head::Tied, Embedding::F32(w)) | (Head::F32(w), _) => {
                dense::gemv_f32_rows(w, v, h, xn, n, out, pool)
            }
            (Head::Int8(m), _) => {
                // Per-row scales and integer dot products: exact for any n.
                quantize_acts(xn, n, h, xq, pool);
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
