//! Checkpoint -> Hugging Face directory in the shape transformers' `BitNetForCausalLM`
//! expects (bitnet-spec.md 5.1): `config.json` with the quantization config, `model.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`. The engine loads it as
//! is, and `tern convert` turns it into GGUF.

use crate::checkpoint;
use crate::data::{write_file, BOS, EOS, EOT};
use crate::error::{Result, TrainError};
use crate::recipe::{Act, Quant};
use crate::transformer::is_projection;
use safetensors::tensor::Dtype;
use std::path::Path;
use tern_kernels::formats::{hf as hf_packed, TernaryMatrix};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// bf16 master weights; the loader quantizes them (`quantization_mode: "online"`).
    Bf16,
    /// f32 master weights: exactly the trainer's latent weights.
    F32,
    /// Ternary projections packed 4 per byte with an f32 `weight_scale` (offline,
    /// `autobitlinear`); norms and embeddings f32. Bit-exact with the trainer's quantizer.
    Packed,
}

/// The 2B4T chat template (`Role: content<|eot_id|>`, generation prompt `Assistant: `).
const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}";

/// Post-training quantization applied on export (`tern quantize`), for the paper's PTQ
/// baselines: the FP model's weights as they are, quantized once, no training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ptq {
    /// Absmean ternary (what the paper warns against): the FP weights exported as a b1.58
    /// model, so every projection is quantized as BitNet's would be.
    Ternary,
    /// Symmetric 4-bit per group of `group` weights (the common practice), stored
    /// dequantized in a dense model.
    Int4 { group: usize },
}

pub fn export_hf(ckpt: &Path, tokenizer: &Path, out: &Path, form: Form) -> Result<()> {
    export_hf_ptq(ckpt, tokenizer, out, form, None)
}

pub fn export_hf_ptq(
    ckpt: &Path,
    tokenizer: &Path,
    out: &Path,
    form: Form,
    ptq: Option<Ptq>,
) -> Result<()> {
    let mut ck = checkpoint::load(ckpt)?;
    if ptq.is_some() && ck.config.model.quant != Quant::None {
        return Err(TrainError::Config {
            file: ckpt.display().to_string(),
            what: "post-training quantization applies to FP runs (model.quant = \"none\")".into(),
        });
    }
    match ptq {
        Some(Ptq::Ternary) => ck.config.model.quant = Quant::B158,
        Some(Ptq::Int4 { group }) => {
            for (name, var) in &ck.params {
                if is_projection(name) {
                    let q = crate::quant::apply(
                        var.as_tensor(),
                        crate::quant::Int4GroupQuant { group },
                    )?;
                    var.set(&q)?;
                }
            }
        }
        None => {}
    }
    let c = &ck.config;
    let m = &c.model;
    let tok = tokenizers::Tokenizer::from_file(tokenizer)
        .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", tokenizer.display())))?;
    let id = |s: &str| tok.token_to_id(s);
    let ternary = m.quant == Quant::B158;
    if form == Form::Packed && !ternary {
        return Err(TrainError::Config {
            file: ckpt.display().to_string(),
            what: "--form packed needs a b1.58 run (model.quant = \"b1.58\"); this one is FP"
                .into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;

    let dtype_name = match form {
        Form::Bf16 => "bfloat16",
        Form::F32 | Form::Packed => "float32",
    };
    let mut config = serde_json::json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_act": match m.activation { Act::Relu2 => "relu2", Act::Silu => "silu" },
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "num_hidden_layers": m.num_layers,
        "head_dim": c.head_dim(),
        "vocab_size": ck.vocab,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "tie_word_embeddings": m.tie_embeddings,
        "attention_bias": false,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": id(BOS),
        "eos_token_id": id(EOS),
        "torch_dtype": dtype_name,
    });
    if ternary {
        config["quantization_config"] = serde_json::json!({
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": if form == Form::Packed { "offline" } else { "online" },
        });
    }

    let mut blobs: Vec<checkpoint::Blob> = Vec::new();
    for (name, var) in &ck.params {
        let shape = var.dims().to_vec();
        let w = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        if form == Form::Packed && is_projection(name) {
            let (rows, cols) = (shape[0], shape[1]);
            let q = TernaryMatrix::quantize_absmean(rows, cols, &w).map_err(|e| {
                TrainError::Checkpoint {
                    file: ckpt.display().to_string(),
                    what: format!("tensor {name}: {e}"),
                }
            })?;
            let (bytes, prows) = hf_packed::pack(&q).map_err(|e| TrainError::Checkpoint {
                file: ckpt.display().to_string(),
                what: format!("tensor {name}: {e}"),
            })?;
            blobs.push((name.clone(), Dtype::U8, vec![prows, cols], bytes));
            blobs.push((
                format!("{name}_scale"),
                Dtype::F32,
                vec![1],
                q.gamma.to_le_bytes().to_vec(),
            ));
            continue;
        }
        let (dt, bytes) = match form {
            Form::Bf16 => (
                Dtype::BF16,
                w.iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
            ),
            Form::F32 | Form::Packed => {
                (Dtype::F32, w.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
        };
        blobs.push((name.clone(), dt, shape, bytes));
    }
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    checkpoint::write_safetensors(&out.join("model.safetensors"), &blobs, meta)?;

    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("json") + "\n";
    write_file(&out.join("config.json"), json(&config).as_bytes())?;
    let gen = serde_json::json!({
        "bos_token_id": id(BOS),
        "eos_token_id": [id(EOS), id(EOT)],
        "do_sample": false,
    });
    write_file(&out.join("generation_config.json"), json(&gen).as_bytes())?;
    let tcfg = serde_json::json!({
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": true,
        "add_eos_token": false,
        "model_max_length": m.max_seq_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
    });
    write_file(&out.join("tokenizer_config.json"), json(&tcfg).as_bytes())?;
    let tok_json = tok
        .to_string(true)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    write_file(&out.join("tokenizer.json"), tok_json.as_bytes())?;
    Ok(())
}
