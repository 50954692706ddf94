//! Writing a Hugging Face model directory that transformers and tern's HF loader read:
//! `config.json`, `generation_config.json`, `model.safetensors`, and (when the source has a
//! vocabulary) `tokenizer.json` + `tokenizer_config.json`.
//!
//! Ternary models with sub-norms become `BitNetForCausalLM` (`model_type: bitnet`) with packed
//! projections: uint8 `[ceil(out/4), in]` plus an F32 `weight_scale` = gamma, under
//! `quantization_config {quant_method: bitnet, linear_class: autobitlinear,
//! quantization_mode: offline}` (the multiplier convention, like microsoft/bitnet-b1.58-2B-4T).
//! With `master` (`--type bf16`) they are bf16 master weights under `quantization_mode:
//! online` instead (like microsoft/bitnet-b1.58-2B-4T-bf16, and trainable): W = q * c with
//! c = bf16(gamma / f), f the fraction of nonzero q. Absmean of W is then c * f, so
//! `round(W / (c f))` = q / f rounds and clamps back to exactly q, and gamma comes back as
//! bf16(gamma / f) * f, within bf16 rounding (2^-9 relative) of gamma. Writing q * gamma
//! instead would give gamma * f: a different model.
//! Ternary models without sub-norms become `LlamaForCausalLM` with the same quantization
//! config; dense ones plain `LlamaForCausalLM`. Embeddings keep their storage (f32, f16 or
//! bf16; GGUF quantized types become f16), norms are f32.
//!
//! The directory is built under a temporary name next to OUT and renamed into place, so a
//! failed conversion never leaves a half-written model under OUT.

use crate::error::ConvertError;
use crate::{vocab, Progress};
use serde_json::{json, Map, Value};
use std::path::Path;
use tern_kernels::formats::hf as hf_packed;
use tern_model::source::{FloatData, FloatTensor, Proj, Source, PROJ_NAMES};
use tern_model::Activation;

/// Raw little-endian bytes of one safetensors tensor.
struct StTensor {
    name: String,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &StTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn f32_tensor(name: String, shape: Vec<usize>, v: &[f32]) -> StTensor {
    StTensor {
        name,
        dtype: safetensors::Dtype::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A float tensor in its own storage (quantized GGUF types as f16).
fn float_tensor(name: String, t: &FloatTensor) -> Result<(StTensor, &'static str), ConvertError> {
    let shape = vec![t.rows, t.cols];
    Ok(match &t.data {
        FloatData::F32(v) => (f32_tensor(name, shape, v), "float32"),
        FloatData::BF16(v) => (
            StTensor {
                name,
                dtype: safetensors::Dtype::BF16,
                shape,
                data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
            "bfloat16",
        ),
        _ => (
            StTensor {
                name,
                dtype: safetensors::Dtype::F16,
                shape,
                data: t.to_f16()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
            "float16",
        ),
    })
}

/// bf16 master weights `q * bf16(gamma / f)` whose absmean quantization gives back q.
fn master_tensor(name: String, m: &tern_kernels::TernaryMatrix) -> StTensor {
    let nonzero = m.values.iter().filter(|&&q| q != 0).count();
    let c = if nonzero == 0 {
        half::bf16::ZERO
    } else {
        half::bf16::from_f32((m.gamma as f64 * m.values.len() as f64 / nonzero as f64) as f32)
    };
    let data = m
        .values
        .iter()
        .flat_map(|&q| {
            match q {
                0 => half::bf16::ZERO,
                1 => c,
                _ => -c,
            }
            .to_le_bytes()
        })
        .collect();
    StTensor {
        name,
        dtype: safetensors::Dtype::BF16,
        shape: vec![m.rows, m.cols],
        data,
    }
}

/// An f32 as the shortest decimal that reads back as it (1e-5, not 9.999999747378752e-6).
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or_else(|| json!(x), Value::Number)
}

fn write_json(path: &Path, v: &Value) -> Result<(), ConvertError> {
    let mut text =
        serde_json::to_string_pretty(v).map_err(|e| ConvertError::Other(e.to_string()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| ConvertError::io(path.display(), e))
}

pub fn write(
    src: &dyn Source,
    out: &Path,
    master: bool,
    progress: &Progress,
) -> Result<Vec<String>, ConvertError> {
    let info = src.info();
    let c = &info.config;
    let mut notes = Vec::new();
    let vocab = src.vocab(&mut notes)?;
    if out.exists() {
        let empty_dir = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(|e| ConvertError::io(out.display(), e))?
                .next()
                .is_none();
        if !empty_dir {
            return Err(ConvertError::file(
                out.display(),
                "already exists; remove it or choose another output directory",
            ));
        }
    }
    // Written under a temporary name next to `out` and renamed into place when complete (see
    // `tern_io::AtomicDir`); on an error the temporary directory is removed.
    let dir = tern_io::AtomicDir::create(out).map_err(|e| ConvertError::io(out.display(), e))?;
    let tmp = dir.path().to_path_buf();

    let mut tensors: Vec<StTensor> = Vec::new();
    progress.set_message("embeddings");
    let (embed, dtype) = float_tensor("model.embed_tokens.weight".into(), &src.embed()?)?;
    tensors.push(embed);
    tensors.push(f32_tensor(
        "model.norm.weight".into(),
        vec![c.hidden_size],
        &src.final_norm()?,
    ));
    if let Some(h) = src.head()? {
        tensors.push(float_tensor("lm_head.weight".into(), &h)?.0);
    }
    progress.inc(1);
    for i in 0..c.num_layers {
        progress.set_message(format!("block {i}"));
        let l = src.layer(i)?;
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let norm = |name: &str, v: &[f32]| f32_tensor(p(name), vec![v.len()], v);
        tensors.push(norm("input_layernorm.weight", &l.attn_norm));
        tensors.push(norm("post_attention_layernorm.weight", &l.ffn_norm));
        if let Some(n) = &l.attn_sub_norm {
            tensors.push(norm("self_attn.attn_sub_norm.weight", n));
        }
        if let Some(n) = &l.ffn_sub_norm {
            tensors.push(norm("mlp.ffn_sub_norm.weight", n));
        }
        for (proj, (hf_name, _)) in l.projs.iter().zip(PROJ_NAMES) {
            let name = p(&format!("{hf_name}.weight"));
            match proj {
                Proj::Dense(t) => tensors.push(float_tensor(name, t)?.0),
                Proj::Ternary(m) => {
                    if !(m.gamma.is_finite() && m.gamma >= 0.0) {
                        return Err(ConvertError::tensor(
                            &name,
                            format!("scale {} is not a finite non-negative number", m.gamma),
                        ));
                    }
                    if master {
                        tensors.push(master_tensor(name, m));
                        continue;
                    }
                    let (packed, rows) = hf_packed::pack(m)
                        .map_err(|e| ConvertError::tensor(&name, e.to_string()))?;
                    tensors.push(StTensor {
                        name: name.clone(),
                        dtype: safetensors::Dtype::U8,
                        shape: vec![rows, m.cols],
                        data: packed,
                    });
                    tensors.push(f32_tensor(format!("{name}_scale"), vec![1], &[m.gamma]));
                }
            }
        }
        progress.inc(1);
    }
    progress.set_message("writing");
    let st_path = tmp.join(tern_model::hf::WEIGHTS_FILE);
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(
        tensors.iter().map(|t| (t.name.clone(), t)),
        Some(meta),
        &st_path,
    )
    .map_err(|e| ConvertError::file(st_path.display(), e.to_string()))?;
    drop(tensors);
    // safetensors writes through a private (0600) temp file; give it a model file's mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&st_path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ConvertError::io(st_path.display(), e))?;
    }

    // config.json
    let bitnet = info.ternary && c.sub_norms;
    let mut cfg = Map::new();
    cfg.insert(
        "architectures".into(),
        json!([if bitnet {
            "BitNetForCausalLM"
        } else {
            "LlamaForCausalLM"
        }]),
    );
    cfg.insert(
        "model_type".into(),
        json!(if bitnet { "bitnet" } else { "llama" }),
    );
    cfg.insert(
        "hidden_act".into(),
        json!(match c.activation {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }),
    );
    cfg.insert("hidden_size".into(), json!(c.hidden_size));
    cfg.insert("intermediate_size".into(), json!(c.intermediate_size));
    cfg.insert("max_position_embeddings".into(), json!(c.max_seq_len));
    cfg.insert("num_attention_heads".into(), json!(c.num_heads));
    cfg.insert("num_hidden_layers".into(), json!(c.num_layers));
    cfg.insert("num_key_value_heads".into(), json!(c.num_kv_heads));
    if c.head_dim * c.num_heads != c.hidden_size {
        cfg.insert("head_dim".into(), json!(c.head_dim));
    }
    cfg.insert("rms_norm_eps".into(), f32_json(c.rms_norm_eps));
    cfg.insert("rope_theta".into(), f32_json(c.rope_theta));
    cfg.insert("tie_word_embeddings".into(), json!(c.tie_word_embeddings));
    cfg.insert("torch_dtype".into(), json!(dtype));
    cfg.insert("vocab_size".into(), json!(c.vocab_size));
    cfg.insert("attention_bias".into(), json!(false));
    cfg.insert("use_cache".into(), json!(true));
    if let Some(b) = c.bos_token_id {
        cfg.insert("bos_token_id".into(), json!(b));
    }
    let eos = match c.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    if !eos.is_null() {
        cfg.insert("eos_token_id".into(), eos.clone());
    }
    if info.ternary {
        cfg.insert(
            "quantization_config".into(),
            json!({
                "quant_method": "bitnet",
                "linear_class": "autobitlinear",
                "quantization_mode": if master { "online" } else { "offline" },
            }),
        );
    }
    write_json(&tmp.join(tern_model::hf::CONFIG_FILE), &Value::Object(cfg))?;
    let mut gen = Map::new();
    if let Some(b) = c.bos_token_id {
        gen.insert("bos_token_id".into(), json!(b));
    }
    if !eos.is_null() {
        gen.insert("eos_token_id".into(), eos);
    }
    write_json(
        &tmp.join(tern_model::hf::GENERATION_CONFIG_FILE),
        &Value::Object(gen),
    )?;
    if let Some(v) = &vocab {
        write_json(&tmp.join(vocab::TOKENIZER_FILE), &vocab::tokenizer_json(v))?;
        write_json(
            &tmp.join(vocab::TOKENIZER_CONFIG_FILE),
            &vocab::tokenizer_config_json(v, c.max_seq_len),
        )?;
    }

    dir.commit()
        .map_err(|e| ConvertError::io(out.display(), e))?;
    progress.inc(1);
    Ok(notes)
}
