//! Shared helpers: fixtures, expected logits, synthetic HF directories and tokenizers.
#![allow(dead_code, unused_imports)]

use half::bf16;
use serde_json::{json, Value};
use std::path::Path;
use tern_kernels::{Layout, ThreadPool};
use tern_model::forward::Logits;
use tern_model::hf::LoadOptions;
use tern_model::{Model, State};

pub use tern_testutil::{argmax, model_fixture as fixture, rel_l2, TempDir};

pub struct Expected {
    pub input_ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub greedy_ids: Vec<u32>,
}

pub fn expected(name: &str) -> Expected {
    let bytes = std::fs::read(fixture(name).join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    Expected {
        input_ids: ids("input_ids"),
        logits: st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        greedy_ids: ids("greedy_ids"),
    }
}

/// Same tolerance as tern-model's tests/golden.rs.
pub const REL_L2: f64 = 1e-4;

pub fn opts() -> LoadOptions {
    LoadOptions {
        layout: Layout::Tern2,
        ..Default::default()
    }
}

/// Full-sequence logits of `prompt` and `n` greedy tokens after it (through the KV cache).
pub fn run(model: &Model, prompt: &[u32], n: usize) -> (Vec<f32>, Vec<u32>) {
    let pool = ThreadPool::new(1);
    let mut state = State::new(&model.config, 64, 64, 1).unwrap();
    let v = model.config.vocab_size;
    let logits = model
        .forward(prompt, &mut state, Logits::All, &pool)
        .unwrap()
        .to_vec();
    let mut tok = argmax(&logits[(prompt.len() - 1) * v..]);
    let mut out = vec![tok];
    while out.len() < n {
        tok = argmax(
            model
                .forward(&[tok], &mut state, Logits::Last, &pool)
                .unwrap(),
        );
        out.push(tok);
    }
    (logits, out)
}

/// Copies a fixture directory's files into `dir`.
pub fn copy_fixture(name: &str, dir: &Path) {
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
}

/// GPT-2's byte -> unicode map for one byte.
fn byte_char(b: u8) -> char {
    let direct = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if direct {
        return b as char;
    }
    let mut n = 0u32;
    for x in 0..=255u8 {
        let d = (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
        if !d {
            if x == b {
                return char::from_u32(256 + n).unwrap();
            }
            n += 1;
        }
    }
    unreachable!()
}

/// LLaMA-3's split regex (the converter must recognise it byte for byte).
pub const LLAMA3: &str = tern_model::gguf_tokenizer::LLAMA3_PATTERN;

/// A small byte-level BPE `tokenizer.json` (ids < 256): specials `<|pad|>` 0,
/// `<|begin_of_text|>` 1, `<|end_of_text|>` 2, `<|eot_id|>` 3, then printable ASCII, space and
/// newline, then a few merges. `style` is "gpt2" (ByteLevel with its own regex), "llama3"
/// (Split + ByteLevel) or anything else for an unsupported pre-tokenizer (Metaspace).
pub fn tokenizer_json(style: &str) -> Value {
    let mut vocab = serde_json::Map::new();
    let specials = [
        "<|pad|>",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|eot_id|>",
    ];
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    let mut next = specials.len();
    let mut bytes: Vec<u8> = (b' '..=b'~').collect();
    bytes.push(b'\n');
    for b in bytes {
        vocab.insert(byte_char(b).to_string(), json!(next));
        next += 1;
    }
    let merges = [
        ("t", "h"),
        ("th", "e"),
        ("h", "e"),
        ("Ġ", "t"),
        ("Ġt", "he"),
        ("a", "t"),
        ("Ġ", "c"),
        ("Ġc", "at"),
        ("Ġ", "s"),
        ("Ġs", "at"),
        ("o", "n"),
        ("Ġ", "on"),
        ("Ġ", "m"),
        ("Ġm", "at"),
        ("i", "n"),
        ("in", "g"),
    ];
    let mut merge_list = Vec::new();
    for (a, b) in merges {
        vocab.insert(format!("{a}{b}"), json!(next));
        next += 1;
        merge_list.push(json!(format!("{a} {b}")));
    }
    assert!(next <= 256);
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let pre = match style {
        "gpt2" => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
        "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        _ => {
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false})
        }
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [1], "tokens": ["<|begin_of_text|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": style == "llama3", "vocab": vocab, "merges": merge_list}
    })
}

pub const CHAT_TEMPLATE: &str = "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}";

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn write_tokenizer(dir: &Path, style: &str) {
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string_pretty(&tokenizer_json(style)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&json!({
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "add_bos_token": true,
            "chat_template": CHAT_TEMPLATE,
        }))
        .unwrap(),
    )
    .unwrap();
}

/// Deterministic pseudo-random numbers in [-1, 1).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A synthetic 2B4T-style HF directory (bf16 master weights, `quantization_mode: online`,
/// relu2, GQA, sub-norms, tied) whose dims suit TQ blocks: hidden 256, intermediate 512,
/// 4 heads of 64, 2 KV heads, 2 layers, vocab 256, with a GPT-2-style tokenizer (the form
/// `tern train` exports).
pub fn synthetic_hf(dir: &Path) {
    synthetic_hf_with(dir, "relu2", 7);
}

/// [`synthetic_hf`] with another `hidden_act` (`silu`: 1bitLLM-style) and seed.
pub fn synthetic_hf_with(dir: &Path, hidden_act: &str, seed: u64) {
    synthetic_hf_shaped(dir, hidden_act, seed, [256, 512, 4, 2, 2, 256]);
}

/// A synthetic 2B4T-style directory of any shape: `[hidden, intermediate, heads, kv_heads,
/// layers, vocab]` (vocab >= 256 for the test tokenizer).
pub fn synthetic_hf_shaped(dir: &Path, hidden_act: &str, seed: u64, shape: [usize; 6]) {
    let [h, ff, heads, kv_heads, layers, vocab] = shape;
    let hd = h / heads;
    let mut rng = Lcg(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32, rng: &mut Lcg| {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|_| bf16::from_f32(offset + scale * rng.next()).to_le_bytes())
            .collect();
        tensors.push((name, shape, data));
    };
    put(
        "model.embed_tokens.weight".into(),
        vec![vocab, h],
        1.0,
        0.0,
        &mut rng,
    );
    put("model.norm.weight".into(), vec![h], 0.2, 1.0, &mut rng);
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        for (n, dim) in [
            ("input_layernorm.weight", h),
            ("post_attention_layernorm.weight", h),
            ("self_attn.attn_sub_norm.weight", h),
            ("mlp.ffn_sub_norm.weight", ff),
        ] {
            put(p(n), vec![dim], 0.2, 1.0, &mut rng);
        }
        for (n, rows, cols, s) in [
            ("self_attn.q_proj.weight", heads * hd, h, 0.1),
            ("self_attn.k_proj.weight", kv_heads * hd, h, 0.1),
            ("self_attn.v_proj.weight", kv_heads * hd, h, 0.1),
            ("self_attn.o_proj.weight", h, heads * hd, 0.2),
            ("mlp.gate_proj.weight", ff, h, 0.1),
            ("mlp.up_proj.weight", ff, h, 0.1),
            ("mlp.down_proj.weight", h, ff, 0.2),
        ] {
            put(p(n), vec![rows, cols], s, 0.0, &mut rng);
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_act": hidden_act,
        "hidden_size": h,
        "intermediate_size": ff,
        "max_position_embeddings": 64,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "online"}
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    write_tokenizer(dir, "gpt2");
}

/// Bit-identical logits (the max difference is reported, not the vectors).
pub fn assert_same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(a == b, "{what}: logits differ, max abs {max:e}");
}
