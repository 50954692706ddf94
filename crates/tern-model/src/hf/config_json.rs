//! `config.json` (plus the token ids of `generation_config.json`) of a Hugging Face model
//! directory, read with `serde_json::Value` so that every error can name its field.

use super::{HfQuant, ScaleConvention, CONFIG_FILE, GENERATION_CONFIG_FILE};
use crate::config::{Activation, ModelConfig};
use crate::error::ModelError;
use serde_json::{Map, Value};
use std::path::Path;

/// Which checkpoint family a config describes; it decides defaults and tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    /// transformers' `BitNetForCausalLM` (`model_type: "bitnet"`, BitNet b1.58 2B4T).
    BitNet,
    /// 1bitLLM's remote-code `BitnetForCausalLM` (`model_type: "llama"`, lower-case "net"):
    /// latent float weights, SubLN named `inner_attn_ln` / `ffn_layernorm`.
    OneBitLlm,
    /// `LlamaForCausalLM`: dense (the FP16 baseline), or ternary when it carries a bitnet
    /// `quantization_config` (e.g. HF1BitLLM's Llama3-8B-1.58).
    Llama,
}

/// Everything `load_model` needs from the directory's JSON files.
#[derive(Clone, Debug)]
pub(super) struct Parsed {
    pub config: ModelConfig,
    pub quant: HfQuant,
    pub family: Family,
}

/// Reads and parses one JSON file; syntax errors keep serde's line and column.
pub(super) fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.display().to_string(),
        what: format!("invalid JSON: {e}"),
    })
}

/// Typed access to one JSON object, with errors naming `file` and the field (prefixed by the
/// enclosing object, e.g. `quantization_config.linear_class`).
struct Fields<'a> {
    file: &'a str,
    prefix: &'a str,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(file: &'a str, prefix: &'a str, value: &'a Value) -> Result<Self, ModelError> {
        match value.as_object() {
            Some(obj) => Ok(Fields { file, prefix, obj }),
            None => Err(ModelError::Config {
                file: file.to_string(),
                what: if prefix.is_empty() {
                    format!(
                        "expected a JSON object at the top level, got {}",
                        kind(value)
                    )
                } else {
                    format!(
                        "field {}: expected an object, got {}",
                        prefix.trim_end_matches('.'),
                        kind(value)
                    )
                },
            }),
        }
    }

    fn err(&self, field: &str, what: impl std::fmt::Display) -> ModelError {
        ModelError::Config {
            file: self.file.to_string(),
            what: format!("field {}{field}: {what}", self.prefix),
        }
    }

    /// The field's value; JSON `null` counts as absent (transformers writes `null` for unset).
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        self.err(field, format!("expected a non-negative integer, got {v}"))
                    })
            })
            .transpose()
    }

    fn usize_req(&self, field: &str) -> Result<usize, ModelError> {
        self.usize_opt(field)?
            .ok_or_else(|| self.err(field, "missing (required)"))
    }

    fn f32_opt(&self, field: &str) -> Result<Option<f32>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.err(field, format!("expected a number, got {v}")))
            })
            .transpose()
    }

    fn str_opt(&self, field: &str) -> Result<Option<&'a str>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.err(field, format!("expected a string, got {v}")))
            })
            .transpose()
    }

    fn bool_opt(&self, field: &str) -> Result<Option<bool>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.err(field, format!("expected true or false, got {v}")))
            })
            .transpose()
    }

    fn str_list_opt(&self, field: &str) -> Result<Vec<&'a str>, ModelError> {
        let Some(v) = self.get(field) else {
            return Ok(Vec::new());
        };
        let bad = || self.err(field, format!("expected a list of strings, got {v}"));
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|s| s.as_str().ok_or_else(bad))
            .collect()
    }

    /// A token id field that may be one integer or a list of them (`eos_token_id`).
    fn token_ids(&self, field: &str) -> Result<Vec<u32>, ModelError> {
        let Some(v) = self.get(field) else {
            return Ok(Vec::new());
        };
        let one = |x: &Value| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    self.err(
                        field,
                        format!("expected a token id or a list of them, got {v}"),
                    )
                })
        };
        match v.as_array() {
            Some(list) => list.iter().map(one).collect(),
            None => Ok(vec![one(v)?]),
        }
    }

    fn token_id(&self, field: &str) -> Result<Option<u32>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| self.err(field, format!("expected a token id, got {v}")))
            })
            .transpose()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parses `dir/config.json` and, when present, `dir/generation_config.json`.
pub(super) fn parse(dir: &Path) -> Result<Parsed, ModelError> {
    let path = dir.join(CONFIG_FILE);
    if dir.is_dir() && !path.exists() {
        return Err(ModelError::Config {
            file: dir.display().to_string(),
            what: format!(
                "not a model directory: there is no {CONFIG_FILE} (a Hugging Face model \
                 directory has {CONFIG_FILE} and *.safetensors; a GGUF model is one .gguf file)"
            ),
        });
    }
    let file = path.display().to_string();
    let json = read_json(&path)?;
    let f = Fields::new(&file, "", &json)?;

    let architectures = f.str_list_opt("architectures")?;
    let model_type = f.str_opt("model_type")?;
    let family = if architectures.contains(&"BitnetForCausalLM") {
        Family::OneBitLlm
    } else if model_type == Some("bitnet") || architectures.contains(&"BitNetForCausalLM") {
        Family::BitNet
    } else if model_type == Some("llama") || architectures.contains(&"LlamaForCausalLM") {
        Family::Llama
    } else {
        let model_type = model_type.map_or("absent".to_string(), |t| format!("{t:?}"));
        return Err(f.err(
            "model_type",
            format!(
                "{model_type} (architectures {architectures:?}) is not supported: expected \
                 BitNetForCausalLM (\"bitnet\"), 1bitLLM's BitnetForCausalLM, or \
                 LlamaForCausalLM (\"llama\")"
            ),
        ));
    };

    let hidden_size = f.usize_req("hidden_size")?;
    let intermediate_size = f.usize_req("intermediate_size")?;
    let num_layers = f.usize_req("num_hidden_layers")?;
    let num_heads = f.usize_req("num_attention_heads")?;
    let vocab_size = f.usize_req("vocab_size")?;
    let num_kv_heads = f.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = match f.usize_opt("head_dim")? {
        Some(d) => d,
        None if num_heads == 0 => 0, // validate() names the zero head count
        None if !hidden_size.is_multiple_of(num_heads) => {
            return Err(f.err(
                "hidden_size",
                format!(
                    "{hidden_size} is not a multiple of num_attention_heads ({num_heads}) and \
                     no head_dim is given"
                ),
            ))
        }
        None => hidden_size / num_heads,
    };

    // transformers' defaults per config class: BitNetConfig uses relu2 and eps 1e-5,
    // LlamaConfig (also the base of 1bitLLM's config) silu and 1e-6.
    let (default_act, default_eps) = match family {
        Family::BitNet => ("relu2", 1e-5),
        Family::OneBitLlm | Family::Llama => ("silu", 1e-6),
    };
    let act = f.str_opt("hidden_act")?.unwrap_or(default_act);
    let activation = match act {
        "relu2" => Activation::Relu2,
        "silu" | "swish" => Activation::Silu,
        other => {
            return Err(f.err(
                "hidden_act",
                format!("{other:?} is not supported (expected \"relu2\" or \"silu\")"),
            ))
        }
    };

    // Features that would change the numerics but that the forward pass does not implement:
    // refuse them rather than silently compute something else.
    if let Some(v) = f.get("rope_scaling") {
        return Err(f.err(
            "rope_scaling",
            format!("{v} is not supported (only plain RoPE)"),
        ));
    }
    for bias in ["attention_bias", "mlp_bias"] {
        if f.bool_opt(bias)? == Some(true) {
            return Err(f.err(
                bias,
                "true is not supported (tern's projections have no bias)",
            ));
        }
    }

    let quant = match json.get("quantization_config").filter(|v| !v.is_null()) {
        Some(q) => parse_quant(&file, q, num_layers)?,
        // 1bitLLM checkpoints have no quantization_config but are ternary: their custom
        // modeling code quantizes the latent weights in every forward.
        None if family == Family::OneBitLlm => HfQuant::Absmean,
        None => HfQuant::Dense,
    };

    // transformers 5.x writes `rope_parameters: {rope_theta, rope_type: "default"}` instead of
    // a top-level `rope_theta`.
    let rope_theta = match (f.f32_opt("rope_theta")?, f.get("rope_parameters")) {
        (Some(t), _) => t,
        (None, Some(rp)) => {
            let r = Fields::new(&file, "rope_parameters.", rp)?;
            if let Some(t) = r.str_opt("rope_type")?.filter(|t| *t != "default") {
                return Err(r.err(
                    "rope_type",
                    format!("{t:?} is not supported (only plain RoPE)"),
                ));
            }
            r.f32_opt("rope_theta")?.unwrap_or(10_000.0)
        }
        (None, None) => 10_000.0,
    };

    let mut bos_token_id = f.token_id("bos_token_id")?;
    let mut eos_token_ids = f.token_ids("eos_token_id")?;
    let gen_path = dir.join(GENERATION_CONFIG_FILE);
    if gen_path.is_file() {
        let gen_file = gen_path.display().to_string();
        let gen_json = read_json(&gen_path)?;
        let g = Fields::new(&gen_file, "", &gen_json)?;
        let gen_bos = g.token_id("bos_token_id")?;
        let gen_eos = g.token_ids("eos_token_id")?;
        for &t in gen_bos.iter().chain(&gen_eos) {
            if t as usize >= vocab_size {
                return Err(ModelError::Config {
                    file: gen_file,
                    what: format!("special token id {t} is outside the vocabulary ({vocab_size})"),
                });
            }
        }
        bos_token_id = bos_token_id.or(gen_bos);
        // generation_config.json is what transformers stops on (it may list end-of-turn
        // tokens too); the union keeps config.json's EOS as well.
        for t in gen_eos {
            if !eos_token_ids.contains(&t) {
                eos_token_ids.push(t);
            }
        }
    }

    let config = ModelConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_seq_len: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
        rms_norm_eps: f.f32_opt("rms_norm_eps")?.unwrap_or(default_eps),
        rope_theta,
        activation,
        // Every BitNet b1.58 checkpoint family has SubLN; plain LLaMA has none.
        sub_norms: family != Family::Llama,
        // LlamaConfig and BitNetConfig both default to untied.
        tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
        bos_token_id,
        eos_token_ids,
    };
    config
        .validate()
        .map_err(|what| ModelError::Config { file, what })?;
    Ok(Parsed {
        config,
        quant,
        family,
    })
}

/// transformers' `BitNetQuantConfig` (defaults: `linear_class: "bitlinear"`,
/// `quantization_mode: "offline"`, `use_rms_norm: false`).
fn parse_quant(file: &str, value: &Value, num_layers: usize) -> Result<HfQuant, ModelError> {
    let q = Fields::new(file, "quantization_config.", value)?;
    match q.str_opt("quant_method")? {
        Some("bitnet") => {}
        Some(other) => {
            return Err(q.err(
                "quant_method",
                format!("{other:?} is not supported (only \"bitnet\")"),
            ))
        }
        None => return Err(q.err("quant_method", "missing (required)")),
    }
    if q.bool_opt("use_rms_norm")? == Some(true) {
        return Err(q.err(
            "use_rms_norm",
            "true (an RMSNorm inside every BitLinear) is not supported",
        ));
    }
    let convention = match q.str_opt("linear_class")?.unwrap_or("bitlinear") {
        // AutoBitLinear offline: y = linear(x, q) * weight_scale, so weight_scale = mean|W|.
        "autobitlinear" => ScaleConvention::Multiplier,
        // BitLinear: y = acc / (weight_scale * s_x), so weight_scale = 1 / mean|W|.
        "bitlinear" => ScaleConvention::Divisor,
        other => {
            return Err(q.err(
                "linear_class",
                format!("{other:?} is not supported (expected \"bitlinear\" or \"autobitlinear\")"),
            ))
        }
    };
    let quant = match q.str_opt("quantization_mode")?.unwrap_or("offline") {
        "offline" => HfQuant::Packed(convention),
        "online" => HfQuant::Absmean,
        other => {
            return Err(q.err(
                "quantization_mode",
                format!("{other:?} is not supported (expected \"online\" or \"offline\")"),
            ))
        }
    };
    // transformers keeps a linear dense when any entry is a substring of its module name; tern
    // has no dense projections in a ternary model, so only entries that spare none are accepted.
    for module in q.str_list_opt("modules_to_not_convert")? {
        let hits_projection = (0..num_layers).any(|i| {
            super::PROJECTIONS
                .iter()
                .any(|p| format!("model.layers.{i}.{p}").contains(module))
        });
        if hits_projection {
            return Err(q.err(
                "modules_to_not_convert",
                format!(
                    "{module:?} keeps transformer-block projections unquantized, which is not \
                     supported"
                ),
            ));
        }
    }
    Ok(quant)
}
