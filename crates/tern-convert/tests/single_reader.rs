//! One reader per format: every fixture model is read through `tern_model::source::open` as
//! its Hugging Face directory and as the GGUF file `tern convert` makes of it; both readers
//! must describe the same model (ternary values and scales bit for bit, dense values exactly)
//! and `Model::from_source` must give bit-identical logits from either.

mod common;

use common::*;
use tern_convert::{convert, HeadType, Options, WeightType};
use tern_model::source::{self, Proj, Source};
use tern_model::Model;

const FIXTURES: [(&str, WeightType); 4] = [
    ("bitnet_packed", WeightType::TQ2_0),
    ("bitnet_online_bf16", WeightType::TQ1_0),
    ("bitnet_1bitllm_f32", WeightType::I2S),
    ("llama_dense_f16", WeightType::F16),
];

fn same_projection(a: &Proj, b: &Proj, what: &str) {
    match (a, b) {
        (Proj::Ternary(x), Proj::Ternary(y)) => {
            assert_eq!((x.rows, x.cols), (y.rows, y.cols), "{what}: shape");
            assert_eq!(x.values, y.values, "{what}: ternary values");
            assert_eq!(x.gamma.to_bits(), y.gamma.to_bits(), "{what}: scale");
        }
        (Proj::Dense(x), Proj::Dense(y)) => {
            assert_eq!((x.rows, x.cols), (y.rows, y.cols), "{what}: shape");
            assert_eq!(x.to_f32().unwrap(), y.to_f32().unwrap(), "{what}: values");
        }
        _ => panic!("{what}: one reader says ternary, the other dense"),
    }
}

fn same_source(hf: &dyn Source, gguf: &dyn Source, name: &str) {
    let (a, b) = (&hf.info().config, &gguf.info().config);
    assert_eq!(
        (
            a.num_layers,
            a.hidden_size,
            a.intermediate_size,
            a.vocab_size
        ),
        (
            b.num_layers,
            b.hidden_size,
            b.intermediate_size,
            b.vocab_size
        ),
        "{name}: shape"
    );
    assert_eq!(hf.info().ternary, gguf.info().ternary, "{name}: ternary");
    assert_eq!(hf.final_norm().unwrap(), gguf.final_norm().unwrap());
    for i in 0..a.num_layers {
        let (x, y) = (hf.layer(i).unwrap(), gguf.layer(i).unwrap());
        assert_eq!(x.attn_norm, y.attn_norm, "{name} layer {i}: attn_norm");
        assert_eq!(
            x.ffn_sub_norm, y.ffn_sub_norm,
            "{name} layer {i}: ffn_sub_norm"
        );
        for (k, (p, q)) in x.projs.iter().zip(&y.projs).enumerate() {
            same_projection(p, q, &format!("{name} layer {i} projection {k}"));
        }
    }
}

#[test]
fn hf_and_converted_gguf_load_through_one_path_bit_identically() {
    for (name, ty) in FIXTURES {
        let tmp = TempDir::new(name);
        let out = tmp.join("model.gguf");
        let o = Options {
            ty,
            head: HeadType::Auto,
            progress: false,
        };
        convert(&fixture(name), &out, &o).unwrap_or_else(|e| panic!("{name}: {e}"));
        let hf = source::open(&fixture(name)).unwrap();
        let gguf = source::open(&out).unwrap();
        assert_eq!((hf.info().format, gguf.info().format), ("hf", "gguf"));
        same_source(hf.as_ref(), gguf.as_ref(), name);

        let prompt = expected(name).input_ids;
        let a = Model::from_source(hf.as_ref(), &opts()).unwrap();
        let b = Model::from_source(gguf.as_ref(), &opts()).unwrap();
        let (la, ga) = run(&a, &prompt, 4);
        let (lb, gb) = run(&b, &prompt, 4);
        assert_same(&la, &lb, &format!("{name} ({}): HF vs GGUF", ty.name()));
        assert_eq!(ga, gb, "{name}: greedy tokens");
    }
}
