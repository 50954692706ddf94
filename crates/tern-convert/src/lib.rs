//! Model file conversion for tern: `tern convert IN OUT`.
//!
//! - Hugging Face directory -> GGUF (`--type tq2_0|tq1_0|i2_s|f16`), from every form
//!   tern-model's HF loader reads (packed offline 2B4T, bf16 online master weights, 1bitLLM
//!   latent weights, dense LLaMA);
//! - GGUF -> GGUF (retyping, e.g. bitnet.cpp's I2_S -> TQ1_0 / TQ2_0);
//! - GGUF -> Hugging Face directory (packed uint8 + `weight_scale`, or dense f16).
//!
//! Ternary values and per-tensor scales are preserved exactly in every direction (see
//! [`gguf_out`] for how TQ files carry an f32 scale). Reading is the engine's: every
//! conversion reads through `tern_model::source` (the same readers `tern run` loads with),
//! one transformer block at a time; this crate holds only the writers.

pub mod error;
pub mod gguf_out;
pub mod hf_out;
pub mod vocab;

pub use error::ConvertError;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::Path;
use tern_model::source::Source;

/// Storage of the ternary projections in a GGUF output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightType {
    /// upstream llama.cpp's 2.06-bit type (256-value blocks, f16 scale).
    #[default]
    TQ2_0,
    /// upstream llama.cpp's 1.69-bit base-3 type.
    TQ1_0,
    /// bitnet.cpp's 2-bit type with one f32 scale per tensor (type id 36 of the fork).
    I2S,
    /// fake-quantized `q * scale` as f16 (plus an f32 correction scale).
    F16,
    /// Hugging Face output only: bf16 master weights (`quantization_mode: online`) from which
    /// absmean gives back the same ternary values (see [`hf_out`]).
    BF16,
}

impl WeightType {
    pub fn name(self) -> &'static str {
        match self {
            WeightType::TQ2_0 => "tq2_0",
            WeightType::TQ1_0 => "tq1_0",
            WeightType::I2S => "i2_s",
            WeightType::F16 => "f16",
            WeightType::BF16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "tq2_0" => WeightType::TQ2_0,
            "tq1_0" => WeightType::TQ1_0,
            "i2_s" => WeightType::I2S,
            "f16" => WeightType::F16,
            "bf16" => WeightType::BF16,
            _ => return None,
        })
    }
}

/// Storage of the token embedding and the untied LM head in a GGUF output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadType {
    /// Keep f32 as F32 and a GGUF source's own type; everything else F16.
    #[default]
    Auto,
    F32,
    F16,
    Q8_0,
    /// tern's own Q6_K quantizer (`tern_gguf::quants::quantize_q6_k`); rows must be a multiple
    /// of 256 values.
    Q6K,
}

impl HeadType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "auto" => HeadType::Auto,
            "f32" => HeadType::F32,
            "f16" => HeadType::F16,
            "q8_0" => HeadType::Q8_0,
            "q6_k" => HeadType::Q6K,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub ty: WeightType,
    pub head: HeadType,
    /// Draw a progress bar on stderr (callers pass whether stderr is a terminal).
    pub progress: bool,
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct Report {
    /// `hf` or `gguf`, for input and output.
    pub from: &'static str,
    pub to: &'static str,
    /// The GGUF architecture written or read.
    pub arch: Option<String>,
    /// Fallbacks and caveats worth telling the user.
    pub notes: Vec<String>,
}

/// A progress bar that draws only when asked to (a terminal on stderr).
pub struct Progress(ProgressBar);

impl Progress {
    fn new(len: u64, visible: bool) -> Self {
        if !visible {
            return Progress(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
            bar.set_style(style);
        }
        Progress(bar)
    }
    pub fn set_message(&self, m: impl Into<std::borrow::Cow<'static, str>>) {
        self.0.set_message(m);
    }
    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }
}

/// Whether `out` names a GGUF file (a `.gguf` extension) rather than a directory.
pub fn is_gguf_path(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Converts `input` (an HF directory or a GGUF file) to `output`: a GGUF file when it ends in
/// `.gguf`, otherwise an HF directory.
pub fn convert(input: &Path, output: &Path, opts: &Options) -> Result<Report, ConvertError> {
    if !input.exists() {
        return Err(ConvertError::io(
            input.display(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let same = std::fs::canonicalize(input)
        .ok()
        .is_some_and(|a| std::fs::canonicalize(output).ok().is_some_and(|b| a == b));
    if same {
        return Err(ConvertError::file(
            output.display(),
            "the output is the input; choose another path",
        ));
    }
    let src = tern_model::source::open(input)?;
    write(src.as_ref(), output, opts)
}

/// Writes the model `src` to `output` as [`convert`] does (e.g. a synthetic model of a named
/// shape, [`tern_model::source::synthetic`]).
pub fn write(src: &dyn Source, output: &Path, opts: &Options) -> Result<Report, ConvertError> {
    // One rule for both kinds of output, as for llama.cpp's tools and `cp`: the output's
    // directory must exist (a mistyped path is an error, not a new directory tree).
    let parent = tern_io::parent_dir(output);
    if !parent.is_dir() {
        return Err(ConvertError::file(
            output.display(),
            format!("the directory {} does not exist", parent.display()),
        ));
    }
    let (from, src_arch) = (src.info().format, src.info().arch.clone());
    if is_gguf_path(output) && opts.ty == WeightType::BF16 {
        return Err(ConvertError::Other(
            "--type bf16 writes Hugging Face master weights; for a GGUF output use tq2_0, \
             tq1_0, i2_s or f16"
                .into(),
        ));
    }
    let steps = src.info().config.num_layers as u64 + 2;
    let progress = Progress::new(steps, opts.progress);
    let result = if is_gguf_path(output) {
        let arch = gguf_out::arch_for(src.info(), opts.ty).to_string();
        gguf_out::write(src, output, opts.ty, opts.head, &progress).map(|notes| Report {
            from,
            to: "gguf",
            arch: Some(arch),
            notes,
        })
    } else {
        let master = opts.ty == WeightType::BF16;
        hf_out::write(src, output, master, &progress).map(|notes| Report {
            from,
            to: "hf",
            arch: src_arch,
            notes,
        })
    };
    progress.0.finish_and_clear();
    result
}
