//! A loaded model: weights in the forms the kernels run on.

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::source::{Proj, Source};
use half::f16;
use tern_kernels::actquant::QuantizedActs;
use tern_kernels::dense::{self, Int8Matrix};
use tern_kernels::rng::Rng;
use tern_kernels::ternary::{self, Layout, PackedTernary};
use tern_kernels::{TernaryMatrix, ThreadPool};

/// One projection. BitNet models have ternary projections; the FP baselines of the paper's
/// comparisons (and FP models trained by tern) have dense ones of the same shape.
#[derive(Clone, Debug)]
pub enum Linear {
    Ternary(PackedTernary),
    F16 {
        w: Vec<f16>,
        rows: usize,
        cols: usize,
    },
    F32 {
        w: Vec<f32>,
        rows: usize,
        cols: usize,
    },
}

impl Linear {
    pub fn rows(&self) -> usize {
        match self {
            Linear::Ternary(p) => p.rows(),
            Linear::F16 { rows, .. } | Linear::F32 { rows, .. } => *rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Linear::Ternary(p) => p.cols(),
            Linear::F16 { cols, .. } | Linear::F32 { cols, .. } => *cols,
        }
    }
    pub fn is_ternary(&self) -> bool {
        matches!(self, Linear::Ternary(_))
    }
    /// Bytes one forward pass reads (what decode pays for).
    pub fn byte_len(&self) -> usize {
        match self {
            Linear::Ternary(p) => p.byte_len(),
            Linear::F16 { w, .. } => w.len() * 2,
            Linear::F32 { w, .. } => w.len() * 4,
        }
    }
    pub fn type_name(&self) -> String {
        match self {
            Linear::Ternary(p) => format!("ternary/{}", p.layout().name()),
            Linear::F16 { .. } => "f16".into(),
            Linear::F32 { .. } => "f32".into(),
        }
    }

    /// `y (n x rows) = x (n x cols) W^T`. Ternary projections read `xq`, the caller's int8
    /// quantization of `x` (shared by every projection of the same input); dense ones read `x`.
    pub fn forward(
        &self,
        x: &[f32],
        xq: &QuantizedActs,
        n: usize,
        y: &mut [f32],
        pool: &ThreadPool,
    ) {
        match self {
            Linear::Ternary(p) => ternary::matmul(p, xq, y, pool),
            Linear::F16 { w, rows, cols } => dense::matmul_f16(w, *rows, *cols, x, n, y, pool),
            Linear::F32 { w, rows, cols } => dense::matmul_f32(w, *rows, *cols, x, n, y, pool),
        }
    }

    /// [`Linear::forward`] for several projections of the same input (q/k/v, gate/up): one
    /// kernel job when all are ternary, which saves a fork-join per projection in decode.
    pub fn forward_many(
        ls: &[&Linear],
        x: &[f32],
        xq: &QuantizedActs,
        n: usize,
        ys: &mut [&mut [f32]],
        pool: &ThreadPool,
    ) {
        let all_ternary = ls.len() <= ternary::MANY_MAX && ls.iter().all(|l| l.is_ternary());
        if let (true, Some(Linear::Ternary(first))) = (all_ternary, ls.first()) {
            // A fixed array, not a Vec: decode allocates nothing per token.
            let mut ws = [first; ternary::MANY_MAX];
            for (w, l) in ws.iter_mut().zip(ls) {
                if let Linear::Ternary(p) = l {
                    *w = p;
                }
            }
            return ternary::matmul_many(&ws[..ls.len()], xq, ys, pool);
        }
        for (l, y) in ls.iter().zip(ys.iter_mut()) {
            l.forward(x, xq, n, y, pool);
        }
    }
}

/// The token embedding table, `[vocab][hidden]`, in the precision of the checkpoint (f16 for
/// f16 / bf16 files; f32 kept for f32 files: rounding an f32 table to f16 moves the int8
/// activation codes of the first layer, measured 1.8e-2 relative L2 on the 1bitLLM fixture).
#[derive(Clone, Debug, PartialEq)]
pub enum Embedding {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Embedding {
    /// `len` elements of the flattened table from `start`, as f32 (exact).
    pub fn values_f32(&self, start: usize, len: usize) -> Vec<f32> {
        match self {
            Embedding::F16(v) => v[start..start + len].iter().map(|x| x.to_f32()).collect(),
            Embedding::F32(v) => v[start..start + len].to_vec(),
        }
    }
    /// Element `i` of the flattened table.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Embedding::F16(v) => v[i].to_f32(),
            Embedding::F32(v) => v[i],
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Embedding::F16(v) => v.len(),
            Embedding::F32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn byte_len(&self) -> usize {
        match self {
            Embedding::F16(v) => v.len() * 2,
            Embedding::F32(v) => v.len() * 4,
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            Embedding::F16(_) => "f16",
            Embedding::F32(_) => "f32",
        }
    }
    /// Copies row `row` (`out.len()` wide) into `out` as f32.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let d = out.len();
        match self {
            Embedding::F16(v) => out
                .iter_mut()
                .zip(&v[row * d..(row + 1) * d])
                .for_each(|(o, x)| *o = x.to_f32()),
            Embedding::F32(v) => out.copy_from_slice(&v[row * d..(row + 1) * d]),
        }
    }
    /// `y (n x rows) = x (n x cols) E^T`: the table used as the LM head.
    pub fn matmul(
        &self,
        rows: usize,
        cols: usize,
        x: &[f32],
        n: usize,
        y: &mut [f32],
        pool: &ThreadPool,
    ) {
        match self {
            Embedding::F16(w) => dense::matmul_f16(w, rows, cols, x, n, y, pool),
            Embedding::F32(w) => dense::matmul_f32(w, rows, cols, x, n, y, pool),
        }
    }
}

/// The output projection (LM head).
#[derive(Clone, Debug)]
pub enum Head {
    /// The token embedding table, transposed use (tied embeddings).
    Tied,
    F16(Vec<f16>),
    F32(Vec<f32>),
    /// Per-row int8 weights with int8 activations: a quarter of f16's bytes, measured
    /// perplexity cost measured by `tern perplexity --head int8` (docs/engine.md).
    Int8(Int8Matrix),
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    /// SubLN before o_proj (`attn_sub_norm` / 1bitLLM `inner_attn_ln`).
    pub attn_sub_norm: Option<Vec<f32>>,
    pub o: Linear,
    pub ffn_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    /// SubLN before down_proj (`ffn_sub_norm` / 1bitLLM `ffn_layernorm`).
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub down: Linear,
}

/// A model ready to run.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: ModelConfig,
    /// Token embeddings, `[vocab][hidden]`.
    pub embed: Embedding,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    pub head: Head,
}

/// The LM head's storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadKind {
    /// f16; tied checkpoints keep sharing the embedding table ([`Head::Tied`]).
    #[default]
    F16,
    /// Per-row int8 ([`Head::Int8`]): a quarter of f16's bytes, a small perplexity cost. Tied
    /// checkpoints get an int8 copy of the embedding table.
    Int8,
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::F16 => "f16",
            HeadKind::Int8 => "int8",
        }
    }
}

/// Choices the checkpoint does not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Compute layout of the ternary projections.
    pub layout: Layout,
    pub head: HeadKind,
    /// Threads that decode and repack blocks (at least 1; [`crate::session::resolve_threads`]
    /// gives the count the engine runs with).
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            layout: Layout::Tern2,
            head: HeadKind::F16,
            threads: crate::session::available_threads(),
        }
    }
}

/// What a synthetic model's projections are made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SyntheticWeights {
    Ternary(Layout),
    F16,
    F32,
}

impl Model {
    /// Builds a runnable model from any reader ([`crate::source::open`]): ternary projections
    /// repacked into `opts.layout`, dense ones and the embedding table kept in f32 when stored
    /// as f32 and as f16 otherwise, the LM head tied, f16/f32 or per-row int8 (`opts.head`).
    /// Blocks are decoded on `opts.threads` threads.
    pub fn from_source(src: &dyn Source, opts: &LoadOptions) -> Result<Model, ModelError> {
        let c = src.info().config.clone();
        let embed_t = src.embed()?;
        // Its storage becomes the embedding without a copy. The source table is kept only
        // when a tied int8 head must be quantized from values the embedding rounds (BF16 or
        // a GGUF block type); from F32 or F16 the embedding holds them exactly.
        let exact = embed_t.is_f32() || embed_t.is_f16();
        let keep = opts.head == HeadKind::Int8 && !exact;
        let (embed, embed_t) = match (keep, embed_t) {
            (true, t) => (Embedding::F16(t.to_f16()?), Some(t)),
            (false, t) if t.is_f32() => (Embedding::F32(t.into_f32()?), None),
            (false, t) => (Embedding::F16(t.into_f16()?), None),
        };
        let norm = src.final_norm()?;
        let layers = load_layers(c.num_layers, opts.threads, |i| {
            let l = src.layer(i)?;
            let [q, k, v, o, gate, up, down] = l.projs.map(|p| linear(p, opts.layout));
            Ok(Layer {
                attn_norm: l.attn_norm,
                q: q?,
                k: k?,
                v: v?,
                attn_sub_norm: l.attn_sub_norm,
                o: o?,
                ffn_norm: l.ffn_norm,
                gate: gate?,
                up: up?,
                ffn_sub_norm: l.ffn_sub_norm,
                down: down?,
            })
        })?;
        // Tied checkpoints read the head from the embedding table (transformers ties whenever
        // the config says so, ignoring any lm_head.weight in the file).
        let head_t = src.head()?;
        let head = match (opts.head, head_t) {
            (HeadKind::F16, None) => Head::Tied,
            (HeadKind::F16, Some(t)) if t.is_f32() => Head::F32(t.to_f32()?),
            (HeadKind::F16, Some(t)) => Head::F16(t.to_f16()?),
            (HeadKind::Int8, Some(t)) => {
                Head::Int8(int8_head(&t.name, t.rows, t.cols, |r0, n| {
                    t.rows_to_f32(r0, n)
                })?)
            }
            (HeadKind::Int8, None) => Head::Int8(match &embed_t {
                Some(t) => int8_head(&t.name, t.rows, t.cols, |r0, n| t.rows_to_f32(r0, n))?,
                None => int8_head("token_embd", c.vocab_size, c.hidden_size, |r0, n| {
                    Ok(embed.values_f32(r0 * c.hidden_size, n * c.hidden_size))
                })?,
            }),
        };
        Ok(Model {
            config: c,
            embed,
            layers,
            norm,
            head,
        })
    }

    /// A model of the given shape with random weights (ternary with P(0) = 1/3, or dense),
    /// unit norms and small random embeddings: for benchmarks of real shapes without files.
    /// Every layer holds a copy of the same random block.
    pub fn synthetic(
        config: ModelConfig,
        weights: SyntheticWeights,
        head: SyntheticHead,
        seed: u64,
    ) -> Model {
        let mut rng = Rng::new(seed);
        let c = &config;
        let linear = |rows: usize, cols: usize, rng: &mut Rng| -> Linear {
            // The scale of a trained layer: gamma ~ 1/sqrt(cols) keeps activations O(1).
            let gamma = 1.0 / (cols as f32).sqrt();
            match weights {
                SyntheticWeights::Ternary(layout) => Linear::Ternary(PackedTernary::pack(
                    &TernaryMatrix::random(rows, cols, gamma, rng),
                    layout,
                )),
                SyntheticWeights::F16 => Linear::F16 {
                    w: (0..rows * cols)
                        .map(|_| f16::from_f32(rng.unit_f32() * gamma * 1.7))
                        .collect(),
                    rows,
                    cols,
                },
                SyntheticWeights::F32 => Linear::F32 {
                    w: (0..rows * cols)
                        .map(|_| rng.unit_f32() * gamma * 1.7)
                        .collect(),
                    rows,
                    cols,
                },
            }
        };
        // One random block, copied into every layer: the copies are separate memory, so a
        // token still streams every layer's weights, and building a 70B shape takes seconds.
        let block = Layer {
            attn_norm: vec![1.0; c.hidden_size],
            q: linear(c.q_dim(), c.hidden_size, &mut rng),
            k: linear(c.kv_dim(), c.hidden_size, &mut rng),
            v: linear(c.kv_dim(), c.hidden_size, &mut rng),
            attn_sub_norm: c.sub_norms.then(|| vec![1.0; c.q_dim()]),
            o: linear(c.hidden_size, c.q_dim(), &mut rng),
            ffn_norm: vec![1.0; c.hidden_size],
            gate: linear(c.intermediate_size, c.hidden_size, &mut rng),
            up: linear(c.intermediate_size, c.hidden_size, &mut rng),
            ffn_sub_norm: c.sub_norms.then(|| vec![1.0; c.intermediate_size]),
            down: linear(c.hidden_size, c.intermediate_size, &mut rng),
        };
        let layers = vec![block; c.num_layers];
        let table: Vec<f16> = (0..c.vocab_size * c.hidden_size)
            .map(|_| f16::from_f32(rng.unit_f32() * 0.05))
            .collect();
        let head = match head {
            SyntheticHead::Tied => Head::Tied,
            SyntheticHead::Int8 => {
                let w: Vec<f32> = table.iter().map(|v| v.to_f32()).collect();
                Head::Int8(Int8Matrix::quantize(&w, c.vocab_size, c.hidden_size))
            }
        };
        let embed = Embedding::F16(table);
        Model {
            embed,
            layers,
            norm: vec![1.0; c.hidden_size],
            head,
            config,
        }
    }

    /// Bytes of weights one decoded token reads: every projection, the LM head, and one
    /// embedding row.
    pub fn bytes_per_token(&self) -> usize {
        let c = &self.config;
        let proj: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|p| p.byte_len())
                    .sum::<usize>()
            })
            .sum();
        proj + self.head_bytes() + self.embed.byte_len() / c.vocab_size.max(1)
    }

    /// Bytes of every weight the model holds: embedding table, projections, an untied head
    /// and the norms (the "memory" of the paper's Table 1, without KV cache and buffers).
    pub fn weight_bytes(&self) -> usize {
        let proj: usize = self
            .layers
            .iter()
            .map(|l| {
                let norms = l.attn_norm.len()
                    + l.ffn_norm.len()
                    + l.attn_sub_norm.as_ref().map_or(0, Vec::len)
                    + l.ffn_sub_norm.as_ref().map_or(0, Vec::len);
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|p| p.byte_len())
                    .sum::<usize>()
                    + 4 * norms
            })
            .sum();
        let head = match self.head {
            Head::Tied => 0,
            _ => self.head_bytes(),
        };
        proj + self.embed.byte_len() + head + 4 * self.norm.len()
    }

    /// Bytes the LM head reads per decoded token.
    pub fn head_bytes(&self) -> usize {
        match &self.head {
            Head::Tied => self.embed.byte_len(),
            Head::F16(w) => w.len() * 2,
            Head::F32(w) => w.len() * 4,
            Head::Int8(m) => m.rows * m.cols + m.rows * 4,
        }
    }

    pub fn head_type(&self) -> String {
        match self.head {
            Head::Tied => format!("{} (tied)", self.embed.type_name()),
            Head::F16(_) => "f16".into(),
            Head::F32(_) => "f32".into(),
            Head::Int8(_) => "int8".into(),
        }
    }
}

/// The LM head of a synthetic model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SyntheticHead {
    Tied,
    Int8,
}

/// Bytes a synthetic model of this shape will hold (weights only), to refuse shapes that do not
/// fit in memory before allocating them.
pub fn synthetic_bytes(c: &ModelConfig, weights: SyntheticWeights) -> usize {
    let per_layer =
        c.hidden_size * (2 * c.q_dim() + 2 * c.kv_dim()) + 3 * c.hidden_size * c.intermediate_size;
    let proj = per_layer * c.num_layers;
    let proj_bytes = match weights {
        SyntheticWeights::Ternary(l) => (proj as f64 * l.bits_per_weight() / 8.0) as usize,
        SyntheticWeights::F16 => proj * 2,
        SyntheticWeights::F32 => proj * 4,
    };
    proj_bytes + c.vocab_size * c.hidden_size * 2
}

/// One projection in the form the kernels run on.
fn linear(p: Proj, layout: Layout) -> Result<Linear, ModelError> {
    Ok(match p {
        Proj::Ternary(m) => Linear::Ternary(PackedTernary::pack(&m, layout)),
        Proj::Dense(t) if t.is_f32() => Linear::F32 {
            w: t.to_f32()?,
            rows: t.rows,
            cols: t.cols,
        },
        Proj::Dense(t) => Linear::F16 {
            w: t.to_f16()?,
            rows: t.rows,
            cols: t.cols,
        },
    })
}

/// Per-row int8 quantization from the checkpoint's own values (no detour through f16), a
/// block of rows at a time so that no f32 copy of the whole table is made; rows are quantized
/// independently, so the result equals `Int8Matrix::quantize` of the whole matrix.
/// A per-row int8 head quantized from a `[rows][cols]` table read a block of rows at a time
/// (`rows_f32(first row, rows)`), so no f32 copy of the whole table is made.
fn int8_head(
    name: &str,
    rows: usize,
    cols: usize,
    rows_f32: impl Fn(usize, usize) -> Result<Vec<f32>, ModelError>,
) -> Result<Int8Matrix, ModelError> {
    if cols > Int8Matrix::MAX_COLS {
        return Err(ModelError::Other(format!(
            "tensor {name}: {cols} columns exceed the int8 head's limit of {}",
            Int8Matrix::MAX_COLS
        )));
    }
    const BLOCK_ROWS: usize = 1024;
    let mut q = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(rows);
    for r0 in (0..rows).step_by(BLOCK_ROWS) {
        let n = BLOCK_ROWS.min(rows - r0);
        let m = Int8Matrix::quantize(&rows_f32(r0, n)?, n, cols);
        for r in 0..n {
            q.extend_from_slice(m.row(r));
        }
        scales.extend_from_slice(&m.scales);
    }
    Ok(Int8Matrix::from_parts(rows, cols, &q, &scales))
}

/// Builds `n` blocks with `layer(i)` on `threads` threads: decoding, quantizing and
/// repacking billions of weights is the slow part of a load, and blocks are independent. The
/// first error in layer order wins, so errors do not depend on thread timing.
pub(crate) fn load_layers<E: Send>(
    n: usize,
    threads: usize,
    layer: impl Fn(usize) -> Result<Layer, E> + Sync,
) -> Result<Vec<Layer>, E> {
    let threads = threads.clamp(1, n.max(1));
    let layer = &layer;
    let mut results: Vec<Option<Result<Layer, E>>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| (i, layer(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panic in a worker is a bug; re-raise it on the caller's thread.
            let done = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every layer index is assigned to one worker"))
        .collect()
}
