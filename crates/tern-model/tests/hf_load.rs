//! Loading tiny Hugging Face model directories written here with the `safetensors` crate:
//! each checkpoint family and storage form, sharding, heads, and one test per failure mode.

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tern_kernels::dense::Int8Matrix;
use tern_kernels::formats::hf as hf_packed;
use tern_kernels::rng::Rng;
use tern_kernels::{Layout, TernaryMatrix, ThreadPool};
use tern_model::forward::{Logits, State};
use tern_model::hf::{load_config, load_model, HeadKind, HfQuant, LoadOptions, ScaleConvention};
use tern_model::{Activation, Head, Linear, Model, ModelError};
use tern_testutil::TempDir;

// Tiny shapes: GQA 4 query heads / 2 KV heads of 4 dims; a vocabulary just over the int8
// head's 1024-row conversion block.
const VOCAB: usize = 1100;
const HIDDEN: usize = 16;
const INTER: usize = 24;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const KV_DIM: usize = 8;

/// A tensor as it goes into a file.
#[derive(Clone, Debug)]
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Raw {
    /// Floats stored as `dtype` (F32, F16 or BF16), rounded to nearest.
    fn float(dtype: Dtype, shape: &[usize], v: &[f32]) -> Raw {
        let bytes = match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            other => panic!("not a float dtype: {other:?}"),
        };
        Raw {
            dtype,
            shape: shape.to_vec(),
            bytes,
        }
    }
    fn u8(shape: &[usize], bytes: Vec<u8>) -> Raw {
        Raw {
            dtype: Dtype::U8,
            shape: shape.to_vec(),
            bytes,
        }
    }
    /// The stored values back as f32 (what the loader sees).
    fn values(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => panic!("not a float dtype: {other:?}"),
        }
    }
}

type Tensors = BTreeMap<String, Raw>;

fn write_safetensors(path: &Path, tensors: &Tensors) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, r)| {
            let view = TensorView::new(r.dtype, r.shape.clone(), &r.bytes).unwrap();
            (name.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

fn write_dir(tag: &str, config: &Value, tensors: &Tensors) -> TempDir {
    let dir = TempDir::new(tag);
    write_json(&dir.path().join("config.json"), config);
    write_safetensors(&dir.path().join("model.safetensors"), tensors);
    dir
}

/// `(module name, rows, cols)` of every projection.
fn projections() -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for i in 0..LAYERS {
        for (name, rows, cols) in [
            ("self_attn.q_proj", HIDDEN, HIDDEN),
            ("self_attn.k_proj", KV_DIM, HIDDEN),
            ("self_attn.v_proj", KV_DIM, HIDDEN),
            ("self_attn.o_proj", HIDDEN, HIDDEN),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
        ] {
            out.push((format!("model.layers.{i}.{name}"), rows, cols));
        }
    }
    out
}

fn layer_linears(m: &Model, i: usize) -> [&Linear; 7] {
    let l = &m.layers[i];
    [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
}

/// The loaded projection for module `model.layers.{i}.{name}`, in `projections()` order.
fn loaded(m: &Model, index: usize) -> &Linear {
    layer_linears(m, index / 7)[index % 7]
}

fn ternary(l: &Linear) -> TernaryMatrix {
    match l {
        Linear::Ternary(p) => p.unpack(),
        other => panic!("expected a ternary projection, got {}", other.type_name()),
    }
}

fn random(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.unit_f32() * scale).collect()
}

/// Sub-norm module names of a family.
#[derive(Clone, Copy)]
enum SubNorms {
    BitNet,
    OneBitLlm,
    None,
}

/// Everything but the projections: embeddings, norms (values near 1, so that a mix-up shows),
/// and `lm_head` when untied.
fn base_tensors(rng: &mut Rng, dtype: Dtype, sub: SubNorms, tied: bool) -> Tensors {
    let mut t = Tensors::new();
    let mut norm = |t: &mut Tensors, name: String, dim: usize| {
        let v: Vec<f32> = (0..dim).map(|_| 1.0 + 0.25 * rng.unit_f32()).collect();
        t.insert(name, Raw::float(dtype, &[dim], &v));
    };
    for i in 0..LAYERS {
        norm(
            &mut t,
            format!("model.layers.{i}.input_layernorm.weight"),
            HIDDEN,
        );
        norm(
            &mut t,
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            HIDDEN,
        );
        let names = match sub {
            SubNorms::BitNet => Some(("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")),
            SubNorms::OneBitLlm => Some(("self_attn.inner_attn_ln", "mlp.ffn_layernorm")),
            SubNorms::None => None,
        };
        if let Some((attn, ffn)) = names {
            norm(&mut t, format!("model.layers.{i}.{attn}.weight"), HIDDEN);
            norm(&mut t, format!("model.layers.{i}.{ffn}.weight"), INTER);
        }
    }
    norm(&mut t, "model.norm.weight".into(), HIDDEN);
    let embed = random(rng, VOCAB * HIDDEN, 0.5);
    t.insert(
        "model.embed_tokens.weight".into(),
        Raw::float(dtype, &[VOCAB, HIDDEN], &embed),
    );
    if !tied {
        let head = random(rng, VOCAB * HIDDEN, 0.3);
        t.insert(
            "lm_head.weight".into(),
            Raw::float(dtype, &[VOCAB, HIDDEN], &head),
        );
    }
    t
}

fn bitnet_config(quantization_config: Value) -> Value {
    json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_act": "relu2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "quantization_config": quantization_config,
    })
}

fn onebitllm_config() -> Value {
    json!({
        "architectures": ["BitnetForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 1000,
        "input_bits": 8,
        "weight_bits": 1,
        "torch_dtype": "float32",
    })
}

fn llama_config(tied: bool) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
    })
}

/// A 2B4T-style packed checkpoint: random ternary projections packed the transformers way,
/// with a `weight_scale` each. Returns the tensors and the matrices with their stored scales.
fn packed_fixture(seed: u64, scale_dtype: Dtype) -> (Tensors, Vec<(TernaryMatrix, f32)>) {
    let mut rng = Rng::new(seed);
    let mut t = base_tensors(&mut rng, Dtype::BF16, SubNorms::BitNet, true);
    let mut expected = Vec::new();
    for (name, rows, cols) in projections() {
        let m = TernaryMatrix::random(rows, cols, 1.0, &mut rng);
        let (bytes, packed_rows) = hf_packed::pack(&m).unwrap();
        let scale_raw = Raw::float(scale_dtype, &[1], &[0.5 + rng.unit_f32().abs() * 2.0]);
        let scale = scale_raw.values()[0];
        t.insert(
            format!("{name}.weight"),
            Raw::u8(&[packed_rows, cols], bytes),
        );
        t.insert(format!("{name}.weight_scale"), scale_raw);
        expected.push((m, scale));
    }
    (t, expected)
}

/// Float latent projections stored as `dtype`.
fn add_master_weights(rng: &mut Rng, t: &mut Tensors, dtype: Dtype) {
    for (name, rows, cols) in projections() {
        let w = random(rng, rows * cols, 0.08);
        t.insert(
            format!("{name}.weight"),
            Raw::float(dtype, &[rows, cols], &w),
        );
    }
}

fn norm_values(t: &Tensors, name: &str) -> Vec<f32> {
    t[name].values()
}

/// Runs a short prompt; returns every position's logits.
fn run_forward(model: &Model) -> Vec<f32> {
    let pool = ThreadPool::new(1);
    let mut state = State::new(&model.config, 16, 4, 1).unwrap();
    let logits = model
        .forward(&[1, 5, 7, 1099, 3], &mut state, Logits::All, &pool)
        .unwrap()
        .to_vec();
    assert_eq!(logits.len(), 5 * VOCAB);
    assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits");
    logits
}

fn load_err(dir: &TempDir) -> String {
    match load_model(dir.path(), &LoadOptions::default()) {
        Ok(_) => panic!("load of {} unexpectedly succeeded", dir.path().display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn packed_offline_autobitlinear_2b4t() {
    let (tensors, expected) = packed_fixture(1, Dtype::BF16);
    let config = bitnet_config(json!({
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
    }));
    let dir = write_dir("packed-auto", &config, &tensors);
    write_json(
        &dir.path().join("generation_config.json"),
        &json!({"bos_token_id": 1, "eos_token_id": [2, 9], "do_sample": false}),
    );

    let (cfg, quant) = load_config(dir.path()).unwrap();
    assert_eq!(quant, HfQuant::Packed(ScaleConvention::Multiplier));
    assert_eq!(cfg.activation, Activation::Relu2);
    assert_eq!(
        (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim),
        (HEADS, KV_HEADS, 4)
    );
    assert_eq!(
        (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_seq_len),
        (500000.0, 1e-5, 64)
    );
    assert!(cfg.sub_norms && cfg.tie_word_embeddings);
    assert_eq!(
        (cfg.bos_token_id, cfg.eos_token_ids.clone()),
        (Some(1), vec![2, 9])
    );

    let model = load_model(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.config, cfg);
    for (index, (m, scale)) in expected.iter().enumerate() {
        let l = loaded(&model, index);
        assert_eq!(l.type_name(), "ternary/tern2");
        let got = ternary(l);
        assert_eq!(got.values, m.values, "projection {index}");
        // autobitlinear: weight_scale is mean|W|, the multiplier itself.
        assert_eq!(got.gamma, *scale, "projection {index}");
    }
    let embed: Vec<f16> = tensors["model.embed_tokens.weight"]
        .values()
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    assert_eq!(model.embed, tern_model::Embedding::F16(embed));
    assert_eq!(model.norm, norm_values(&tensors, "model.norm.weight"));
    let l1 = &model.layers[1];
    assert_eq!(
        l1.attn_norm,
        norm_values(&tensors, "model.layers.1.input_layernorm.weight")
    );
    assert_eq!(
        l1.ffn_norm,
        norm_values(&tensors, "model.layers.1.post_attention_layernorm.weight")
    );
    assert_eq!(
        l1.attn_sub_norm.as_deref(),
        Some(&norm_values(&tensors, "model.layers.1.self_attn.attn_sub_norm.weight")[..])
    );
    assert_eq!(
        l1.ffn_sub_norm.as_deref(),
        Some(&norm_values(&tensors, "model.layers.1.mlp.ffn_sub_norm.weight")[..])
    );
    assert!(matches!(model.head, Head::Tied));
    let logits = run_forward(&model);

    // The other compute layout holds the same weights and computes the same logits.
    let opts = LoadOptions {
        layout: Layout::Tern3,
        ..LoadOptions::default()
    };
    let tern3 = load_model(dir.path(), &opts).unwrap();
    for index in 0..expected.len() {
        assert_eq!(loaded(&tern3, index).type_name(), "ternary/tern3");
        assert_eq!(
            ternary(loaded(&tern3, index)),
            ternary(loaded(&model, index))
        );
    }
    assert_eq!(run_forward(&tern3), logits);
}

#[test]
fn packed_bitlinear_scale_is_a_divisor() {
    let (tensors, expected) = packed_fixture(2, Dtype::F32);
    // linear_class "bitlinear" explicitly, and as transformers' default.
    for qc in [
        json!({"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}),
        json!({"quant_method": "bitnet"}),
    ] {
        let dir = write_dir("packed-div", &bitnet_config(qc), &tensors);
        let (_, quant) = load_config(dir.path()).unwrap();
        assert_eq!(quant, HfQuant::Packed(ScaleConvention::Divisor));
        let model = load_model(dir.path(), &LoadOptions::default()).unwrap();
        for (index, (m, scale)) in expected.iter().enumerate() {
            let got = ternary(loaded(&model, index));
            assert_eq!(got.values, m.values);
            assert_eq!(got.gamma, 1.0 / scale, "bitlinear stores 1/mean|W|");
        }
    }
}

#[test]
fn bf16_online_master_weights_quantize_with_absmean() {
    let mut rng = Rng::new(3);
    let mut tensors = base_tensors(&mut rng, Dtype::BF16, SubNorms::BitNet, true);
    add_master_weights(&mut rng, &mut tensors, Dtype::BF16);
    let config = bitnet_config(json!({
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "online",
    }));
    let dir = write_dir("online", &config, &tensors);
    assert_eq!(load_config(dir.path()).unwrap().1, HfQuant::Absmean);
    let model = load_model(dir.path(), &LoadOptions::default()).unwrap();
    let mut packed = base_tensors(&mut Rng::new(3), Dtype::BF16, SubNorms::BitNet, true);
    for (index, (name, rows, cols)) in projections().into_iter().enumerate() {
        let w = tensors[&format!("{name}.weight")].values();
        let want = TernaryMatrix::quantize_absmean(rows, cols, &w).unwrap();
        assert_eq!(ternary(loaded(&model, index)), want, "{name}");
        // The same ternary weights, shipped packed with weight_scale = gamma.
        let (bytes, r) = hf_packed::pack(&want).unwrap();
        packed.insert(format!("{name}.weight"), Raw::u8(&[r, cols], bytes));
        packed.insert(
            format!("{name}.weight_scale"),
            Raw::float(Dtype::F32, &[1], &[want.gamma]),
        );
    }

    // Quantizing the master at load and loading the offline export agree exactly.
    let offline = bitnet_config(json!({
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
    }));
    let packed_dir = write_dir("online-vs-offline", &offline, &packed);
    let packed_model = load_model(packed_dir.path(), &LoadOptions::default()).unwrap();
    for index in 0..projections().len() {
        assert_eq!(
            ternary(loaded(&packed_model, index)),
            ternary(loaded(&model, index))
        );
    }
    assert_eq!(run_forward(&packed_model), run_forward(&model));
}

#[test]
fn onebitllm_names_silu_and_f32_latent_weights() {
    let mut rng = Rng::new(4);
    let mut tensors = base_tensors(&mut rng, Dtype::F32, SubNorms::OneBitLlm, true);
    add_master_weights(&mut rng, &mut tensors, Dtype::F32);
    // Old checkpoints carry rotary buffers; unknown tensors are ignored.
    tensors.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        Raw::float(Dtype::F32, &[2], &[1.0, 0.01]),
    );
    let dir = write_dir("1bitllm", &onebitllm_config(), &tensors);

    let (cfg, quant) = load_config(dir.path()).unwrap();
    assert_eq!(
        quant,
        HfQuant::Absmean,
        "1bitLLM is ternary without a quantization_config"
    );
    assert_eq!(cfg.activation, Activation::Silu);
    assert_eq!((cfg.rope_theta, cfg.max_seq_len), (10_000.0, 2048));
    assert!(cfg.sub_norms);

    let model = load_model(dir.path(), &LoadOptions::default()).unwrap();
    for (index, (name, rows, cols)) in projections().into_iter().enumerate() {
        let w = tensors[&format!("{name}.weight")].values();
        let want = TernaryMatrix::quantize_absmean(rows, cols, &w).unwrap();
        assert_eq!(ternary(loaded(&model, index)), want, "{name}");
    }
    let l0 = &model.layers[0];
    assert_eq!(
        l0.attn_sub_norm.as_deref(),
        Some(&norm_values(&tensors, "model.layers.0.self_attn.inner_attn_ln.weight")[..])
    );
    assert_eq!(
        l0.ffn_sub_norm.as_deref(),
        Some(&norm_values(&tensors, "model.layers.0.mlp.ffn_layernorm.weight")[..])
    );
    run_forward(&model);
}

#[test]
fn dense_llama_loads_as_f16_or_f32() {
    for (dtype, type_name) in [
        (Dtype::F16, "f16"),
        (Dtype::BF16, "f16"),
        (Dtype::F32, "f32"),
    ] {
        let mut rng = Rng::new(5);
        let mut tensors = base_tensors(&mut rng, dtype, SubNorms::None, false);
        add_master_weights(&mut rng, &mut tensors, dtype);
        let dir = write_dir("llama", &llama_config(false), &tensors);

        let (cfg, quant) = load_config(dir.path()).unwrap();
        assert_eq!(quant, HfQuant::Dense);
        assert!(!cfg.sub_norms && !cfg.tie_word_embeddings);
        assert_eq!((cfg.activation, cfg.rms_norm_eps), (Activation::Silu, 1e-6));
        assert_eq!(cfg.eos_token_ids, vec![2, 3]);

        let model = load_model(dir.path(), &LoadOptions::default()).unwrap();
        for (index, (name, rows, cols)) in projections().into_iter().enumerate() {
            let src = tensors[&format!("{name}.weight")].values();
            match loaded(&model, index) {
                Linear::F16 {
                    w,
                    rows: r,
                    cols: c,
                } => {
                    assert_eq!((type_name, *r, *c), ("f16", rows, cols));
                    // f16 is taken as is, bf16 rounded to nearest (exact but for subnormals).
                    assert_eq!(
                        *w,
                        src.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()
                    );
                }
                Linear::F32 {
                    w,
                    rows: r,
                    cols: c,
                } => {
                    assert_eq!((type_name, *r, *c), ("f32", rows, cols));
                    assert_eq!(*w, src);
                }
                other => panic!("{name}: expected dense, got {}", other.type_name()),
            }
        }
        assert!(model
            .layers
            .iter()
            .all(|l| l.attn_sub_norm.is_none() && l.ffn_sub_norm.is_none()));
        // f16 / bf16 heads are stored as f16; f32 heads stay f32 (exact).
        let values = tensors["lm_head.weight"].values();
        match &model.head {
            Head::F16(w) => {
                assert_ne!(type_name, "f32");
                assert_eq!(
                    *w,
                    values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()
                );
            }
            Head::F32(w) => {
                assert_eq!(type_name, "f32");
                assert_eq!(*w, values);
            }
            _ => panic!("expected a dense head, got {}", model.head_type()),
        }
        run_forward(&model);
    }
}

#[test]
fn sharded_index_matches_single_file() {
    let (tensors, _) = packed_fixture(6, Dtype::BF16);
    let config = bitnet_config(json!({"quant_method": "bitnet", "linear_class": "autobitlinear"}));
    let single = write_dir("single", &config, &tensors);

    let dir = TempDir::new("sharded");
    write_json(&dir.path().join("config.json"), &config);
    let (mut a, mut b) = (Tensors::new(), Tensors::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (name, raw)) in tensors.iter().enumerate() {
        let (shard, file) = if i % 2 == 0 {
            (&mut a, "model-00001-of-00002.safetensors")
        } else {
            (&mut b, "model-00002-of-00002.safetensors")
        };
        shard.insert(name.clone(), raw.clone());
        weight_map.insert(name.clone(), json!(file));
    }
    write_safetensors(&dir.path().join("model-00001-of-00002.safetensors"), &a);
    write_safetensors(&dir.path().join("model-00002-of-00002.safetensors"), &b);
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    write_json(&dir.path().join("model.safetensors.index.json"), &index);

    let want = load_model(single.path(), &LoadOptions::default()).unwrap();
    let got = load_model(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(got.embed, want.embed);
    assert_eq!(got.norm, want.norm);
    for index in 0..projections().len() {
        assert_eq!(ternary(loaded(&got, index)), ternary(loaded(&want, index)));
    }
    assert_eq!(run_forward(&got), run_forward(&want));

    // A tensor the index lists in a shard that does not have it: the shard is named.
    let victim = "model.layers.0.mlp.up_proj.weight";
    let file = weight_map[victim].as_str().unwrap();
    let mut shard = if file.contains("00001") {
        a.clone()
    } else {
        b.clone()
    };
    shard.remove(victim);
    write_safetensors(&dir.path().join(file), &shard);
    let msg = load_err(&dir);
    assert!(msg.contains(file) && msg.contains(victim), "{msg}");

    // A tensor missing from the weight_map: the index is named.
    let mut index = index.clone();
    index["weight_map"].as_object_mut().unwrap().remove(victim);
    write_json(&dir.path().join("model.safetensors.index.json"), &index);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.safetensors.index.json") && msg.contains(victim),
        "{msg}"
    );
}

#[test]
fn tied_and_untied_heads_in_f16_and_int8() {
    let mut rng = Rng::new(7);
    let mut tensors = base_tensors(&mut rng, Dtype::BF16, SubNorms::None, false);
    add_master_weights(&mut rng, &mut tensors, Dtype::BF16);
    let int8 = LoadOptions {
        head: HeadKind::Int8,
        ..LoadOptions::default()
    };
    let check_int8 = |head: &Head, source: &str| {
        let w = tensors[source].values();
        let want = Int8Matrix::quantize(&w, VOCAB, HIDDEN);
        let Head::Int8(got) = head else {
            panic!("expected an int8 head");
        };
        assert_eq!((got.rows, got.cols), (VOCAB, HIDDEN));
        assert_eq!(got.scales, want.scales);
        assert!((0..VOCAB).all(|r| got.row(r) == want.row(r)));
    };

    // Untied: lm_head.weight is the head.
    let untied = write_dir("untied", &llama_config(false), &tensors);
    let m = load_model(untied.path(), &LoadOptions::default()).unwrap();
    assert!(matches!(m.head, Head::F16(_)));
    let m8 = load_model(untied.path(), &int8).unwrap();
    check_int8(&m8.head, "lm_head.weight");
    assert_eq!(run_forward(&m8).len(), 5 * VOCAB);

    // Tied: the embedding is the head, and an lm_head.weight in the file is ignored (as
    // transformers does).
    let tied = write_dir("tied", &llama_config(true), &tensors);
    let m = load_model(tied.path(), &LoadOptions::default()).unwrap();
    assert!(matches!(m.head, Head::Tied));
    let m8 = load_model(tied.path(), &int8).unwrap();
    check_int8(&m8.head, "model.embed_tokens.weight");
    run_forward(&m8);

    // Untied without lm_head.weight is a missing tensor.
    tensors.remove("lm_head.weight");
    let dir = write_dir("no-head", &llama_config(false), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("lm_head.weight") && msg.contains("missing"),
        "{msg}"
    );
}

// ---- errors ------------------------------------------------------------------------------

fn offline_config() -> Value {
    bitnet_config(json!({"quant_method": "bitnet", "linear_class": "autobitlinear"}))
}

#[test]
fn truncated_safetensors_file() {
    let (tensors, _) = packed_fixture(8, Dtype::BF16);
    let dir = write_dir("truncated", &offline_config(), &tensors);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // Cut in the tensor data (an interrupted download), then inside the header.
    for keep in [bytes.len() - 100, 40, 3] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = load_model(dir.path(), &LoadOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Config { .. }), "{msg}");
        assert!(
            msg.contains("model.safetensors") && msg.contains("truncated"),
            "{msg}"
        );
    }
    // Extra bytes at the end are reported too.
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 5]);
    std::fs::write(&path, &long).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.safetensors") && msg.contains("trailing"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (mut tensors, _) = packed_fixture(9, Dtype::BF16);
    tensors.remove("model.layers.1.mlp.down_proj.weight");
    let dir = write_dir("missing", &offline_config(), &tensors);
    match load_model(dir.path(), &LoadOptions::default()).unwrap_err() {
        ModelError::Tensor { file, tensor, what } => {
            assert!(file.ends_with("model.safetensors"), "{file}");
            assert_eq!(tensor, "model.layers.1.mlp.down_proj.weight");
            assert!(what.contains("missing"), "{what}");
        }
        other => panic!("expected a tensor error, got {other}"),
    }

    // A packed projection without its weight_scale.
    let (mut tensors, _) = packed_fixture(9, Dtype::BF16);
    tensors.remove("model.layers.0.self_attn.o_proj.weight_scale");
    let dir = write_dir("missing-scale", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.layers.0.self_attn.o_proj.weight_scale"),
        "{msg}"
    );

    // A missing sub-norm names the family's own tensor name.
    let mut rng = Rng::new(9);
    let mut tensors = base_tensors(&mut rng, Dtype::F32, SubNorms::OneBitLlm, true);
    add_master_weights(&mut rng, &mut tensors, Dtype::F32);
    tensors.remove("model.layers.1.mlp.ffn_layernorm.weight");
    let dir = write_dir("missing-subnorm", &onebitllm_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.layers.1.mlp.ffn_layernorm.weight"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let (mut tensors, _) = packed_fixture(10, Dtype::BF16);
    // k_proj packed for 12 output rows instead of the config's 8 (2 KV heads x 4).
    tensors.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        Raw::u8(&[3, HIDDEN], vec![0x55; 3 * HIDDEN]),
    );
    let dir = write_dir("shape", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.layers.0.self_attn.k_proj.weight")
            && msg.contains("[3, 16]")
            && msg.contains("[2, 16]"),
        "{msg}"
    );

    // A norm of the wrong length.
    let (mut tensors, _) = packed_fixture(10, Dtype::BF16);
    tensors.insert(
        "model.norm.weight".into(),
        Raw::float(Dtype::BF16, &[HIDDEN + 1], &[1.0; HIDDEN + 1]),
    );
    let dir = write_dir("shape-norm", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.norm.weight") && msg.contains("shape"),
        "{msg}"
    );

    // An embedding table whose vocabulary disagrees with config.json.
    let (mut tensors, _) = packed_fixture(10, Dtype::BF16);
    tensors.insert(
        "model.embed_tokens.weight".into(),
        Raw::float(
            Dtype::BF16,
            &[VOCAB - 1, HIDDEN],
            &vec![0.0; (VOCAB - 1) * HIDDEN],
        ),
    );
    let dir = write_dir("shape-embed", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.embed_tokens.weight") && msg.contains("vocab_size"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_and_bad_values_are_named() {
    // Offline config with float master weights: the config and the file disagree.
    let mut rng = Rng::new(11);
    let mut tensors = base_tensors(&mut rng, Dtype::BF16, SubNorms::BitNet, true);
    add_master_weights(&mut rng, &mut tensors, Dtype::BF16);
    let dir = write_dir("dtype", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.layers.0.self_attn.q_proj.weight")
            && msg.contains("BF16")
            && msg.contains("U8"),
        "{msg}"
    );

    // An embedding value that f16 cannot hold.
    let (mut tensors, _) = packed_fixture(11, Dtype::BF16);
    let mut embed = tensors["model.embed_tokens.weight"].values();
    embed[37] = 1.0e6;
    tensors.insert(
        "model.embed_tokens.weight".into(),
        Raw::float(Dtype::BF16, &[VOCAB, HIDDEN], &embed),
    );
    let dir = write_dir("overflow", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.embed_tokens.weight")
            && msg.contains("element 37")
            && msg.contains("f16"),
        "{msg}"
    );

    // A code-3 byte in a packed tensor (corrupt data).
    let (mut tensors, _) = packed_fixture(11, Dtype::BF16);
    let mut raw = tensors["model.layers.1.mlp.gate_proj.weight"].clone();
    raw.bytes[5] = 0xFF;
    tensors.insert("model.layers.1.mlp.gate_proj.weight".into(), raw);
    let dir = write_dir("code3", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.layers.1.mlp.gate_proj.weight") && msg.contains("code 3"),
        "{msg}"
    );

    // A non-positive scale.
    let (mut tensors, _) = packed_fixture(11, Dtype::BF16);
    tensors.insert(
        "model.layers.0.mlp.up_proj.weight_scale".into(),
        Raw::float(Dtype::BF16, &[1], &[0.0]),
    );
    let dir = write_dir("zero-scale", &offline_config(), &tensors);
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.layers.0.mlp.up_proj.weight_scale") && msg.contains("positive"),
        "{msg}"
    );
}

#[test]
fn invalid_json_names_file_and_position() {
    let (tensors, _) = packed_fixture(12, Dtype::BF16);
    let dir = write_dir("bad-json", &offline_config(), &tensors);
    std::fs::write(
        dir.path().join("config.json"),
        "{\n  \"hidden_size\": 16,\n  oops\n}",
    )
    .unwrap();
    let msg = load_config(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("config.json") && msg.contains("line 3"),
        "{msg}"
    );

    // The same for the shard index and generation_config.json.
    let dir = TempDir::new("bad-index");
    write_json(&dir.path().join("config.json"), &offline_config());
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        "{\"weight_map\": [}",
    )
    .unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.safetensors.index.json") && msg.contains("line 1"),
        "{msg}"
    );
    let dir = write_dir("bad-gen", &offline_config(), &tensors);
    std::fs::write(
        dir.path().join("generation_config.json"),
        "{\"eos_token_id\": }",
    )
    .unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("generation_config.json") && msg.contains("column"),
        "{msg}"
    );
}

#[test]
fn config_field_errors_are_named() {
    let check = |config: Value, needles: &[&str]| {
        let dir = TempDir::new("config");
        write_json(&dir.path().join("config.json"), &config);
        let msg = load_config(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("config.json"), "{msg}");
        for needle in needles {
            assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        }
    };
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = offline_config();
        f(c.as_object_mut().unwrap());
        c
    };
    check(
        edit(&|c| {
            c.remove("num_hidden_layers");
        }),
        &["num_hidden_layers", "missing"],
    );
    check(
        edit(&|c| {
            c.insert("hidden_size".into(), json!("16"));
        }),
        &["hidden_size", "integer"],
    );
    check(
        edit(&|c| {
            c.insert("hidden_act".into(), json!("gelu"));
        }),
        &["hidden_act", "gelu"],
    );
    check(
        edit(&|c| {
            c.insert("eos_token_id".into(), json!(VOCAB));
        }),
        &["1100", "outside the vocabulary"],
    );
    check(
        edit(&|c| {
            c.insert("num_key_value_heads".into(), json!(3));
        }),
        &["num_key_value_heads"],
    );
    check(
        edit(&|c| {
            c.insert("rope_scaling".into(), json!({"rope_type": "llama3"}));
        }),
        &["rope_scaling"],
    );
    check(
        edit(&|c| {
            c.insert("model_type".into(), json!("gpt2"));
            c.remove("architectures");
        }),
        &["model_type", "gpt2"],
    );
    check(
        bitnet_config(json!({"quant_method": "bitnet", "use_rms_norm": true})),
        &["quantization_config.use_rms_norm", "not supported"],
    );
    check(
        bitnet_config(json!({"quant_method": "gptq"})),
        &["quantization_config.quant_method", "gptq"],
    );
    check(
        bitnet_config(json!({"quant_method": "bitnet", "quantization_mode": "dynamic"})),
        &["quantization_config.quantization_mode"],
    );
    check(
        bitnet_config(json!({"quant_method": "bitnet", "modules_to_not_convert": ["mlp"]})),
        &["modules_to_not_convert"],
    );
    // lm_head in modules_to_not_convert is what every checkpoint has anyway.
    let dir = TempDir::new("lm-head-not-converted");
    let ok =
        bitnet_config(json!({"quant_method": "bitnet", "modules_to_not_convert": ["lm_head"]}));
    write_json(&dir.path().join("config.json"), &ok);
    load_config(dir.path()).unwrap();
}

#[test]
fn missing_files_are_named() {
    let dir = TempDir::new("empty");
    let msg = load_config(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
    write_json(&dir.path().join("config.json"), &offline_config());
    let msg = load_err(&dir);
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn config_defaults() {
    // The minimal LLaMA config: defaults as in transformers' LlamaConfig, plus tern's
    // max_position_embeddings of 2048 and rope_theta of 10000.
    let dir = TempDir::new("defaults");
    let minimal = json!({
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 8,
        "vocab_size": 100,
        "eos_token_id": null,
    });
    write_json(&dir.path().join("config.json"), &minimal);
    let (cfg, quant) = load_config(dir.path()).unwrap();
    assert_eq!(quant, HfQuant::Dense);
    assert_eq!(
        (cfg.num_kv_heads, cfg.head_dim),
        (8, 8),
        "kv heads default to heads"
    );
    assert_eq!(
        (cfg.max_seq_len, cfg.rope_theta, cfg.rms_norm_eps),
        (2048, 10_000.0, 1e-6)
    );
    assert_eq!(
        (cfg.activation, cfg.sub_norms, cfg.tie_word_embeddings),
        (Activation::Silu, false, false)
    );
    assert_eq!(
        (cfg.bos_token_id, cfg.eos_token_ids.clone()),
        (None, vec![])
    );

    // An explicit head_dim wins over hidden / heads; ids come from generation_config.json.
    let mut explicit = minimal.clone();
    explicit["head_dim"] = json!(16);
    write_json(&dir.path().join("config.json"), &explicit);
    write_json(
        &dir.path().join("generation_config.json"),
        &json!({"bos_token_id": 5, "eos_token_id": 6}),
    );
    let (cfg, _) = load_config(dir.path()).unwrap();
    assert_eq!((cfg.head_dim, cfg.q_dim()), (16, 128));
    assert_eq!((cfg.bos_token_id, cfg.eos_token_ids), (Some(5), vec![6]));

    // A 2B4T config defaults to relu2 and eps 1e-5 (BitNetConfig).
    let mut bitnet = minimal.clone();
    bitnet["model_type"] = json!("bitnet");
    write_json(&dir.path().join("config.json"), &bitnet);
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    let (cfg, quant) = load_config(dir.path()).unwrap();
    assert_eq!(quant, HfQuant::Dense);
    assert_eq!(
        (cfg.activation, cfg.rms_norm_eps, cfg.sub_norms),
        (Activation::Relu2, 1e-5, true)
    );
}
