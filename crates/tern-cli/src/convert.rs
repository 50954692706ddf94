//! `tern convert IN OUT`: Hugging Face directory <-> GGUF, GGUF retyping (crate tern-convert).

use anyhow::{anyhow, bail, Result};
use clap::Args as ClapArgs;
use std::io::IsTerminal;
use std::path::PathBuf;
use tern_convert::{HeadType, Options, WeightType};
use tern_model::source::synthetic::SyntheticSource;

#[derive(ClapArgs)]
pub struct Args {
    /// Input: a Hugging Face model directory or a GGUF file (with --shape: leave it out).
    #[arg(value_name = "INPUT")]
    pub paths: Vec<PathBuf>,
    /// Instead of an input, a model of a named shape with random ternary weights (700m, 1.3b,
    /// 2b4t, 3b, 3.9b, 7b, 13b, 30b, 70b), written layer by layer (one block in memory at a
    /// time, whatever the size): a benchmark file peers can load.
    #[arg(long)]
    pub shape: Option<String>,
    /// With --shape: the tokenizer (and vocab size) of this model, e.g. one of llama.cpp's
    /// models/ggml-vocab-*.gguf files; without it the file has no tokenizer.
    #[arg(long, requires = "shape")]
    pub vocab_from: Option<PathBuf>,
    /// With --shape: the seed of the random weights.
    #[arg(long, default_value_t = 1, requires = "shape")]
    pub seed: u64,
    /// Storage of ternary projections in a GGUF output: tq2_0, tq1_0, i2_s or f16. Dense
    /// (LLaMA) projections are always f16. For a Hugging Face output: bf16 writes master
    /// weights (quantization_mode online, trainable); anything else packed uint8.
    #[arg(long = "type", default_value = "tq2_0", value_parser = parse_type)]
    pub ty: WeightType,
    /// Storage of the token embedding and untied LM head in a GGUF output: auto (f32 stays
    /// f32, a GGUF input keeps its type, else f16), f32, f16, q8_0 or q6_k (rows of a multiple
    /// of 256 values).
    #[arg(long, default_value = "auto", value_parser = parse_head)]
    pub head: HeadType,
}

fn parse_type(s: &str) -> Result<WeightType, String> {
    WeightType::parse(s)
        .ok_or_else(|| format!("unknown type {s:?} (tq2_0, tq1_0, i2_s, f16; bf16 for HF output)"))
}

fn parse_head(s: &str) -> Result<HeadType, String> {
    HeadType::parse(s)
        .ok_or_else(|| format!("unknown head type {s:?} (auto, f32, f16, q8_0, q6_k)"))
}

pub fn run(a: &Args) -> Result<()> {
    let opts = Options {
        ty: a.ty,
        head: a.head,
        progress: std::io::stderr().is_terminal(),
    };
    let (r, input, output) = match (&a.shape, a.paths.as_slice()) {
        (Some(shape), [output]) => {
            let src = SyntheticSource::new(shape, a.vocab_from.as_deref(), a.seed)?;
            let r = tern_convert::write(&src, output, &opts).map_err(|e| anyhow!("{e}"))?;
            (r, format!("random weights of shape {shape}"), output)
        }
        (Some(_), _) => bail!("with --shape, give only the output path"),
        (None, [input, output]) => {
            let r = tern_convert::convert(input, output, &opts).map_err(|e| anyhow!("{e}"))?;
            (r, input.display().to_string(), output)
        }
        (None, _) => bail!("give an input model and an output path (or --shape and an output)"),
    };
    for n in &r.notes {
        eprintln!("tern: note: {n}");
    }
    let arch = r.arch.map(|a| format!(", arch {a}")).unwrap_or_default();
    let what = if r.to == "gguf" {
        format!("GGUF ({}{arch})", a.ty.name())
    } else {
        format!("Hugging Face directory{arch}")
    };
    let from = match r.from {
        "gguf" => format!("GGUF {input}"),
        "hf" => format!("Hugging Face directory {input}"),
        _ => input,
    };
    eprintln!("tern: wrote {} as {what} from {from}", output.display());
    Ok(())
}
