//! Loading GGUF files written here with `tern_gguf::GgufWriter` from models loaded another
//! way (the golden HF fixtures, or a synthetic model whose dims suit the TQ block of 256):
//! the GGUF load must give the same weights, hence the same logits, and each failure mode must
//! be an error that names the file and the tensor or key.

use std::path::{Path, PathBuf};

use half::f16;
use tern_gguf::{GgmlType, GgufValue, GgufWriter};
use tern_kernels::{Layout, PackedTernary, ThreadPool};
use tern_model::forward::{Logits, State};
use tern_model::hf::LoadOptions;
use tern_model::model::{SyntheticHead, SyntheticWeights};
use tern_model::{gguf, hf, Activation, Embedding, Head, Linear, Model, ModelConfig};

use tern_testutil::{model_fixture as fixture, TempDir};

/// A file path in a fresh temporary directory, both removed on drop.
struct TempFile(PathBuf, #[allow(dead_code)] TempDir); // the directory is held for its Drop

impl TempFile {
    fn new(tag: &str) -> TempFile {
        TempFile::named(tag, "model.gguf")
    }

    fn named(tag: &str, name: &str) -> TempFile {
        let dir = TempDir::new(tag);
        TempFile(dir.join(name), dir)
    }
}

/// How the exporter stores projections.
#[derive(Clone, Copy)]
enum Proj {
    /// As a ggml ternary type.
    Ternary(GgmlType),
    /// Ternary projections written as f32 `q * gamma` (upstream's fake-quantized export).
    FakeQuantF32,
    /// Dense projections as F16.
    F16,
}

/// A GGUF writer holding `m` under architecture `arch`; tests then add, drop or break things.
fn export(m: &Model, arch: &str, proj: Proj, skip: &[&str]) -> GgufWriter<'static> {
    let c = &m.config;
    let mut w = GgufWriter::new();
    let mut kv = |k: &str, v: GgufValue| w.add_kv(k, v).unwrap();
    kv("general.architecture", GgufValue::String(arch.into()));
    let u = |v: usize| GgufValue::U32(v as u32);
    kv(&format!("{arch}.vocab_size"), u(c.vocab_size));
    kv(&format!("{arch}.context_length"), u(c.max_seq_len));
    kv(&format!("{arch}.embedding_length"), u(c.hidden_size));
    kv(&format!("{arch}.block_count"), u(c.num_layers));
    kv(
        &format!("{arch}.feed_forward_length"),
        u(c.intermediate_size),
    );
    kv(&format!("{arch}.attention.head_count"), u(c.num_heads));
    kv(
        &format!("{arch}.attention.head_count_kv"),
        u(c.num_kv_heads),
    );
    kv(
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        GgufValue::F32(c.rms_norm_eps),
    );
    kv(&format!("{arch}.rope.dimension_count"), u(c.head_dim));
    kv(
        &format!("{arch}.rope.freq_base"),
        GgufValue::F32(c.rope_theta),
    );
    if let Some(b) = c.bos_token_id {
        kv("tokenizer.ggml.bos_token_id", GgufValue::U32(b));
    }
    kv(
        "tokenizer.ggml.eos_token_id",
        GgufValue::U32(c.eos_token_ids[0]),
    );

    let mut add = |name: String, f: &mut dyn FnMut(&mut GgufWriter<'static>, &str)| {
        if !skip.contains(&name.as_str()) {
            f(&mut w, &name);
        }
    };
    let (h, v) = (c.hidden_size, c.vocab_size);
    add("token_embd.weight".into(), &mut |w, n| match &m.embed {
        Embedding::F16(t) => {
            let f: Vec<f32> = t.iter().map(|x| x.to_f32()).collect();
            w.add_f32(n, GgmlType::F16, &[h, v], &f).unwrap()
        }
        Embedding::F32(t) => w.add_f32(n, GgmlType::F32, &[h, v], t).unwrap(),
    });
    add("output_norm.weight".into(), &mut |w, n| {
        w.add_f32(n, GgmlType::F32, &[h], &m.norm).unwrap()
    });
    match &m.head {
        Head::Tied => {}
        Head::F16(t) => add("output.weight".into(), &mut |w, n| {
            let f: Vec<f32> = t.iter().map(|x| x.to_f32()).collect();
            w.add_f32(n, GgmlType::F16, &[h, v], &f).unwrap()
        }),
        other => panic!("exporter does not handle head {other:?}"),
    }
    for (i, l) in m.layers.iter().enumerate() {
        let norms: [(&str, Option<&Vec<f32>>); 4] = [
            ("attn_norm", Some(&l.attn_norm)),
            ("ffn_norm", Some(&l.ffn_norm)),
            ("attn_sub_norm", l.attn_sub_norm.as_ref()),
            ("ffn_sub_norm", l.ffn_sub_norm.as_ref()),
        ];
        for (name, t) in norms {
            if let Some(t) = t {
                add(format!("blk.{i}.{name}.weight"), &mut |w, n| {
                    w.add_f32(n, GgmlType::F32, &[t.len()], t).unwrap()
                });
            }
        }
        let projs = [
            ("attn_q", &l.q),
            ("attn_k", &l.k),
            ("attn_v", &l.v),
            ("attn_output", &l.o),
            ("ffn_gate", &l.gate),
            ("ffn_up", &l.up),
            ("ffn_down", &l.down),
        ];
        for (name, p) in projs {
            // llama.cpp's LLaMA converter permutes Q/K rows for its adjacent-pair RoPE.
            let heads = match (arch, name) {
                ("llama", "attn_q") => c.num_heads,
                ("llama", "attn_k") => c.num_kv_heads,
                _ => 0,
            };
            add(
                format!("blk.{i}.{name}.weight"),
                &mut |w, n| match (p, proj) {
                    (Linear::Ternary(p), Proj::Ternary(ty)) => {
                        let mut t = p.unpack();
                        t.values = permute_rows(&t.values, t.rows, t.cols, heads);
                        w.add_ternary(n, ty, &t).unwrap()
                    }
                    (Linear::Ternary(p), Proj::FakeQuantF32) => {
                        let t = p.unpack();
                        w.add_f32(n, GgmlType::F32, &[t.cols, t.rows], &t.dequantize())
                            .unwrap()
                    }
                    (Linear::F16 { w: d, rows, cols }, Proj::F16) => {
                        let f: Vec<f32> = d.iter().map(|x| x.to_f32()).collect();
                        let f = permute_rows(&f, *rows, *cols, heads);
                        w.add_f32(n, GgmlType::F16, &[*cols, *rows], &f).unwrap()
                    }
                    _ => panic!("exporter: projection {n} does not match the requested type"),
                },
            );
        }
    }
    w
}

/// llama.cpp's `LlamaModel.permute` (`reshape(heads, 2, hd / 2, cols).swapaxes(1, 2)`): GGUF
/// row `h*hd + 2*i + j` holds HF row `h*hd + j*hd/2 + i`. `heads == 0` copies.
fn permute_rows<T: Copy>(v: &[T], rows: usize, cols: usize, heads: usize) -> Vec<T> {
    if heads == 0 {
        return v.to_vec();
    }
    let hd = rows / heads;
    let mut out = Vec::with_capacity(v.len());
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + j * hd / 2 + i;
                out.extend_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn write(w: &GgufWriter, tag: &str) -> TempFile {
    let f = TempFile::new(tag);
    w.write(&f.0).unwrap();
    f
}

fn logits(model: &Model, prompt: &[u32]) -> Vec<f32> {
    let pool = ThreadPool::new(1);
    let mut state = State::new(&model.config, 16, 4, 1).unwrap();
    let l = model
        .forward(prompt, &mut state, Logits::All, &pool)
        .unwrap()
        .to_vec();
    assert!(l.iter().all(|v| v.is_finite()));
    l
}

const FIXTURE_PROMPT: [u32; 12] = [1, 17, 200, 43, 99, 5, 128, 255, 64, 7, 150, 33];
const SYN_PROMPT: [u32; 6] = [1, 17, 299, 43, 2, 150];

/// A 2-layer model whose every row length is a multiple of 256 (TQ1_0 / TQ2_0 blocks), with
/// distinct non-unit norms per layer so a misplaced norm changes the logits.
fn synthetic() -> Model {
    let config = ModelConfig {
        vocab_size: 300,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        max_seq_len: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        activation: Activation::Relu2,
        sub_norms: true,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    let mut m = Model::synthetic(
        config,
        SyntheticWeights::Ternary(Layout::Tern2),
        SyntheticHead::Tied,
        7,
    );
    let wiggle = |v: &mut Vec<f32>, k: usize| {
        v.iter_mut()
            .enumerate()
            .for_each(|(j, x)| *x = 1.0 + 0.03 * ((j * 7 + k * 13) % 11) as f32 - 0.15);
    };
    for (i, l) in m.layers.iter_mut().enumerate() {
        wiggle(&mut l.attn_norm, 4 * i);
        wiggle(&mut l.ffn_norm, 4 * i + 1);
        wiggle(l.attn_sub_norm.as_mut().unwrap(), 4 * i + 2);
        wiggle(l.ffn_sub_norm.as_mut().unwrap(), 4 * i + 3);
    }
    wiggle(&mut m.norm, 99);
    m
}

/// `m` with every ternary gamma rounded to f16, as TQ1_0 / TQ2_0 store it.
fn with_f16_gamma(m: &Model) -> Model {
    let mut m = m.clone();
    for l in &mut m.layers {
        for p in [
            &mut l.q,
            &mut l.k,
            &mut l.v,
            &mut l.o,
            &mut l.gate,
            &mut l.up,
            &mut l.down,
        ] {
            if let Linear::Ternary(t) = p {
                let mut u = t.unpack();
                u.gamma = f16::from_f32(u.gamma).to_f32();
                *t = PackedTernary::pack(&u, t.layout());
            }
        }
    }
    m
}

fn load(f: &TempFile) -> Model {
    gguf::load_model(&f.0, &LoadOptions::default()).unwrap()
}

fn load_err(f: &TempFile) -> String {
    match gguf::load_model(&f.0, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", f.0.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn packed_fixture_as_i2s_gives_identical_logits() {
    let hf_model = hf::load_model(&fixture("bitnet_packed"), &LoadOptions::default()).unwrap();
    let f = write(
        &export(
            &hf_model,
            "bitnet-b1.58",
            Proj::Ternary(GgmlType::I2_S),
            &[],
        ),
        "i2s",
    );
    let g = load(&f);
    assert_eq!(g.config, hf_model.config);
    assert_eq!(g.config.activation, Activation::Relu2);
    assert!(matches!(g.head, Head::Tied));
    assert_eq!(
        logits(&g, &FIXTURE_PROMPT),
        logits(&hf_model, &FIXTURE_PROMPT)
    );
    // `load::open` dispatches on the file; this GGUF has no tokenizer keys.
    let loaded = tern_model::load::open(&f.0, &LoadOptions::default()).unwrap();
    assert!(loaded.tokenizer.is_none());
    assert_eq!(loaded.stop_tokens, vec![2]);
}

#[test]
fn synthetic_tq_types_give_identical_logits_after_f16_gamma() {
    let m = synthetic();
    let want = logits(&with_f16_gamma(&m), &SYN_PROMPT);
    for ty in [GgmlType::TQ2_0, GgmlType::TQ1_0] {
        let f = write(
            &export(&m, "bitnet-b1.58", Proj::Ternary(ty), &[]),
            ty.name(),
        );
        let g = load(&f);
        assert_eq!(g.config, m.config, "{}", ty.name());
        assert_eq!(logits(&g, &SYN_PROMPT), want, "{}", ty.name());
    }
    // I2_S keeps the f32 gamma: identical to the original model.
    let f = write(
        &export(&m, "bitnet-b1.58", Proj::Ternary(GgmlType::I2_S), &[]),
        "syn-i2s",
    );
    assert_eq!(logits(&load(&f), &SYN_PROMPT), logits(&m, &SYN_PROMPT));
}

#[test]
fn fake_quantized_float_projections_are_recovered_exactly() {
    let m = synthetic();
    let f = write(&export(&m, "bitnet-b1.58", Proj::FakeQuantF32, &[]), "fq");
    let g = load(&f);
    assert!(g.layers[0].q.is_ternary());
    assert_eq!(logits(&g, &SYN_PROMPT), logits(&m, &SYN_PROMPT));
}

#[test]
fn scale_tensors_multiply_gamma() {
    let m = synthetic();
    let mut w = export(&m, "bitnet-b1.58", Proj::Ternary(GgmlType::I2_S), &[]);
    w.add_f32("blk.1.ffn_down.scale", GgmlType::F32, &[1], &[2.0])
        .unwrap();
    let g = load(&write(&w, "scale"));
    let gamma = |l: &Linear| match l {
        Linear::Ternary(p) => p.gamma(),
        _ => panic!("not ternary"),
    };
    assert_eq!(gamma(&g.layers[1].down), 2.0 * gamma(&m.layers[1].down));
    assert_eq!(gamma(&g.layers[0].down), gamma(&m.layers[0].down));
}

#[test]
fn activation_follows_arch_and_key() {
    let m = synthetic();
    let f = write(
        &export(&m, "bitnet", Proj::Ternary(GgmlType::I2_S), &[]),
        "b",
    );
    assert_eq!(
        gguf::load_config(&f.0).unwrap().activation,
        Activation::Silu
    );
    let mut w = export(&m, "bitnet", Proj::Ternary(GgmlType::I2_S), &[]);
    w.add_kv(
        "bitnet.hidden_activation",
        GgufValue::String("relu2".into()),
    )
    .unwrap();
    let f = write(&w, "b-relu2");
    assert_eq!(
        gguf::load_config(&f.0).unwrap().activation,
        Activation::Relu2
    );
}

#[test]
fn dense_llama_fixture_as_f16_gives_identical_logits() {
    let hf_model = hf::load_model(&fixture("llama_dense_f16"), &LoadOptions::default()).unwrap();
    let f = write(&export(&hf_model, "llama", Proj::F16, &[]), "llama");
    let g = load(&f);
    assert_eq!(g.config, hf_model.config);
    assert!(matches!(g.head, Head::F16(_)));
    assert!(matches!(g.layers[0].q, Linear::F16 { .. }));
    assert_eq!(
        logits(&g, &FIXTURE_PROMPT),
        logits(&hf_model, &FIXTURE_PROMPT)
    );
}

#[test]
fn ternary_llama_arch_is_unpermuted_and_silu() {
    let mut m = synthetic();
    m.config.activation = Activation::Silu;
    let f = write(
        &export(&m, "llama", Proj::Ternary(GgmlType::I2_S), &[]),
        "tllama",
    );
    let g = load(&f);
    assert_eq!(g.config, m.config);
    assert_eq!(logits(&g, &SYN_PROMPT), logits(&m, &SYN_PROMPT));
}

#[test]
fn missing_tensor_is_named() {
    let m = synthetic();
    let f = write(
        &export(
            &m,
            "bitnet-b1.58",
            Proj::Ternary(GgmlType::I2_S),
            &["blk.1.ffn_up.weight"],
        ),
        "missing",
    );
    let e = load_err(&f);
    assert!(e.contains("blk.1.ffn_up.weight"), "{e}");
    eprintln!("{e}");
    assert!(e.contains(&f.0.display().to_string()), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let m = synthetic();
    let mut w = export(
        &m,
        "bitnet-b1.58",
        Proj::Ternary(GgmlType::I2_S),
        &["blk.0.ffn_norm.weight"],
    );
    w.add_f32("blk.0.ffn_norm.weight", GgmlType::F32, &[128], &[1.0; 128])
        .unwrap();
    let f = write(&w, "shape");
    let e = load_err(&f);
    assert!(
        e.contains("blk.0.ffn_norm.weight") && e.contains("[128]"),
        "{e}"
    );
    assert!(e.contains(&f.0.display().to_string()), "{e}");
}

#[test]
fn unknown_arch_is_named() {
    let m = synthetic();
    let f = write(
        &export(&m, "gpt2", Proj::Ternary(GgmlType::I2_S), &[]),
        "arch",
    );
    let e = load_err(&f);
    assert!(
        e.contains("general.architecture") && e.contains("gpt2"),
        "{e}"
    );
    assert!(e.contains(&f.0.display().to_string()), "{e}");
}

#[test]
fn missing_key_is_named() {
    let mut w = GgufWriter::new();
    let mut kv = |k: &str, v: GgufValue| w.add_kv(k, v).unwrap();
    kv("general.architecture", GgufValue::String("llama".into()));
    kv("llama.vocab_size", GgufValue::U32(300));
    kv("llama.embedding_length", GgufValue::U32(256));
    kv("llama.attention.head_count", GgufValue::U32(4));
    let f = write(&w, "key");
    let e = gguf::load_config(&f.0).unwrap_err().to_string();
    assert!(e.contains("'llama.feed_forward_length'"), "{e}");
    assert!(e.contains(&f.0.display().to_string()), "{e}");
}

#[test]
fn truncated_file_is_an_error_naming_the_file() {
    let m = synthetic();
    let bytes = export(&m, "bitnet-b1.58", Proj::Ternary(GgmlType::I2_S), &[]).to_bytes();
    // Cut in the data section (the last tensor loses bytes) and in the header.
    for (cut, what) in [
        (bytes.len() - 1000, "blk.1.ffn_down.weight"),
        (100, "tensor count"),
    ] {
        let f = TempFile::new("trunc");
        std::fs::write(&f.0, &bytes[..cut]).unwrap();
        let e = load_err(&f);
        assert!(e.contains(&f.0.display().to_string()), "{e}");
        assert!(e.contains(what), "{e}");
        // `load::open` recognises the file by its extension and reports the same error.
        let e = tern_model::load::open(&f.0, &LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn quantized_embedding_is_widened_to_f16_and_int8_head_quantizes_it() {
    let m = synthetic();
    let Embedding::F16(table) = &m.embed else {
        panic!("synthetic embeddings are f16")
    };
    let table: Vec<f32> = table.iter().map(|x| x.to_f32()).collect();
    let (h, v) = (m.config.hidden_size, m.config.vocab_size);
    let mut w = export(
        &m,
        "bitnet-b1.58",
        Proj::Ternary(GgmlType::I2_S),
        &["token_embd.weight"],
    );
    w.add_f32("token_embd.weight", GgmlType::Q8_0, &[h, v], &table)
        .unwrap();
    let f = write(&w, "q8emb");
    let q8 = tern_gguf::quants::quantize_q8_0(&table).unwrap();
    let deq = tern_gguf::quants::dequantize(GgmlType::Q8_0, &q8, h * v).unwrap();
    let g = load(&f);
    let want: Vec<f16> = deq.iter().map(|&x| f16::from_f32(x)).collect();
    assert_eq!(g.embed, Embedding::F16(want));
    assert!(matches!(g.head, Head::Tied));

    let opts = LoadOptions {
        head: hf::HeadKind::Int8,
        ..LoadOptions::default()
    };
    let g8 = gguf::load_model(&f.0, &opts).unwrap();
    let Head::Int8(q) = &g8.head else {
        panic!("expected an int8 head")
    };
    let want = tern_kernels::dense::Int8Matrix::quantize(&deq, v, h);
    assert_eq!(
        (q.rows, q.cols, &q.scales),
        (want.rows, want.cols, &want.scales)
    );
    assert!((0..v).all(|r| q.row(r) == want.row(r)));
}

#[test]
fn open_recognises_gguf_by_magic_without_the_extension() {
    let m = synthetic();
    let w = export(&m, "bitnet-b1.58", Proj::Ternary(GgmlType::I2_S), &[]);
    let f = TempFile::named("noext", "noext.bin");
    w.write(&f.0).unwrap();
    let loaded = tern_model::load::open(&f.0, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.config, m.config);
    // A file that is neither: the error says what is expected.
    let other = TempFile::named("other", "other.bin");
    std::fs::write(&other.0, b"not a model").unwrap();
    let e = match tern_model::load::open(&other.0, &LoadOptions::default()) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(".gguf") && e.contains("config.json"), "{e}");
}

/// The packed fixture as I2_S with the `tokenizer.ggml.*` keys of `extra` (keys the export
/// already wrote are kept).
fn packed_with_tokenizer(extra: &[(String, GgufValue)], tag: &str) -> TempFile {
    let hf_model = hf::load_model(&fixture("bitnet_packed"), &LoadOptions::default()).unwrap();
    let mut w = export(
        &hf_model,
        "bitnet-b1.58",
        Proj::Ternary(GgmlType::I2_S),
        &[],
    );
    for (k, v) in extra {
        if k.starts_with("tokenizer.") && !k.ends_with("_token_id") {
            w.add_kv(k.clone(), v.clone()).unwrap();
        }
    }
    write(&w, tag)
}

#[test]
fn open_builds_the_embedded_sentencepiece_tokenizer() {
    // llama.cpp's LLaMA SentencePiece vocabulary, as a 1bitLLM GGUF carries it.
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vocab/ggml-vocab-llama-spm.gguf");
    let spm = tern_gguf::GgufFile::open(&vocab).unwrap();
    let f = packed_with_tokenizer(spm.metadata(), "spm");
    let loaded = tern_model::load::open(&f.0, &LoadOptions::default()).unwrap();
    assert!(loaded.tokenizer_error.is_none());
    let tok = loaded.tokenizer.expect("a SentencePiece tokenizer");
    assert_eq!(tok.encode("Hello world", true).unwrap(), [1, 15043, 3186]);
    assert_eq!(tok.decode(&[1, 15043, 3186, 2]), "Hello world");
    assert!(loaded.stop_tokens.contains(&2));

    // An unsupported tokenizer: the model still loads, and says why there is no tokenizer.
    let t5 = [(
        "tokenizer.ggml.model".to_string(),
        GgufValue::String("t5".into()),
    )];
    let f = packed_with_tokenizer(&t5, "t5");
    let loaded = tern_model::load::open(&f.0, &LoadOptions::default()).unwrap();
    assert!(loaded.tokenizer.is_none());
    let why = loaded.tokenizer_error.unwrap();
    assert!(
        why.contains("tokenizer.ggml.model") && why.contains("t5"),
        "{why}"
    );
}
