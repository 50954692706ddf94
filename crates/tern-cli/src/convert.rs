//! `tern convert IN OUT`: Hugging Face directory <-> GGUF, GGUF retyping (crate tern-convert).

use anyhow::{anyhow, Result};
use clap::Args as ClapArgs;
use std::io::IsTerminal;
use std::path::PathBuf;
use tern_convert::{HeadType, Options, WeightType};

#[derive(ClapArgs)]
pub struct Args {
    /// Input: a Hugging Face model directory or a GGUF file.
    pub input: PathBuf,
    /// Output: a `.gguf` file, or else a Hugging Face directory (created; must not exist or
    /// be empty).
    pub output: PathBuf,
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
    let r = tern_convert::convert(&a.input, &a.output, &opts).map_err(|e| anyhow!("{e}"))?;
    for n in &r.notes {
        eprintln!("tern: note: {n}");
    }
    let arch = r.arch.map(|a| format!(", arch {a}")).unwrap_or_default();
    let what = if r.to == "gguf" {
        format!("GGUF ({}{arch})", a.ty.name())
    } else {
        format!("Hugging Face directory{arch}")
    };
    eprintln!(
        "tern: wrote {} as {what} from {}",
        a.output.display(),
        if r.from == "gguf" {
            "GGUF"
        } else {
            "Hugging Face directory"
        }
    );
    Ok(())
}
