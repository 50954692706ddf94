//! gguf-py (PyPI `gguf==0.19.0`) reads files written by `tern convert`: the same metadata
//! (keys, value types, values, the whole vocabulary), the same tensor types and shapes, and
//! gguf-py's dequantization of every tensor (TQ1_0 / TQ2_0 included) equals tern's bit for
//! bit; its TQ values times the `.scale` tensor equal tern's ternary weights exactly.
//!
//! Runs `scripts/gguf_interop.py model`, which needs gguf-py and numpy (`scripts/test.sh`
//! installs them; `TERN_PYTHON` picks another interpreter). Without them the test skips
//! visibly, and fails under `CI=true` (`tern_testutil::skip`).

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tern_convert::{convert, HeadType, Options, WeightType};
use tern_gguf::{GgufArray, GgufFile, GgufValue};
use tern_model::gguf::GgufSource;
use tern_model::source::{Proj, Source};
use tern_testutil::{gguf_py, repo_root};

/// gguf-py's JSON value against tern's reading of the same key.
fn same_value(key: &str, tern: &GgufValue, py: &Value) {
    let ok = match tern {
        GgufValue::String(s) => py.as_str() == Some(s),
        GgufValue::U32(x) => py.as_u64() == Some(*x as u64),
        GgufValue::I32(x) => py.as_i64() == Some(*x as i64),
        GgufValue::U64(x) => py.as_u64() == Some(*x),
        GgufValue::F32(x) => py.as_f64().map(|v| v as f32) == Some(*x),
        GgufValue::Bool(b) => py.as_bool() == Some(*b),
        GgufValue::Array(GgufArray::String(v)) => py.as_array().is_some_and(|p| {
            p.len() == v.len() && p.iter().zip(v).all(|(a, b)| a.as_str() == Some(b))
        }),
        GgufValue::Array(GgufArray::I32(v)) => py.as_array().is_some_and(|p| {
            p.len() == v.len() && p.iter().zip(v).all(|(a, b)| a.as_i64() == Some(*b as i64))
        }),
        other => panic!("{key}: unexpected value type {other:?} in a converted file"),
    };
    assert!(ok, "{key}: tern {tern:?} vs gguf-py {py}");
}

fn check_with_gguf_py(py: &str, path: &Path, out: &Path) -> usize {
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new(py)
        .arg(repo_root().join("scripts/gguf_interop.py"))
        .args(["model", path.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gguf_interop.py model failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&o.stdout));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fields.json")).unwrap()).unwrap();
    let f = GgufFile::open(path).unwrap();

    let fields = json["fields"].as_object().unwrap();
    assert_eq!(fields.len(), f.metadata().len(), "key count");
    for (k, v) in f.metadata() {
        let p = fields
            .get(k)
            .unwrap_or_else(|| panic!("gguf-py lacks key {k}"));
        let want_type = match v {
            GgufValue::String(_) => "STRING",
            GgufValue::U32(_) => "UINT32",
            GgufValue::I32(_) => "INT32",
            GgufValue::F32(_) => "FLOAT32",
            GgufValue::Bool(_) => "BOOL",
            GgufValue::Array(_) => "ARRAY",
            _ => "?",
        };
        assert_eq!(p["type"], want_type, "{k}");
        same_value(k, v, &p["value"]);
    }

    let tensors = json["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), f.tensors().len());
    let mut tq = 0;
    for t in f.tensors() {
        let p = &tensors[&t.name];
        assert_eq!(p["type"], t.ty.name(), "{}", t.name);
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, t.dims, "{}", t.name);
        let theirs: Vec<f32> = std::fs::read(out.join(format!("{}.f32", t.name)))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mine = f.tensor(&t.name).unwrap().to_f32().unwrap();
        assert!(
            mine == theirs,
            "{}: gguf-py dequantizes differently",
            t.name
        );
        if t.ty.is_ternary() {
            tq += 1;
        }
    }

    // gguf-py's TQ values times `.scale` are tern's ternary weights exactly.
    let src = GgufSource::open(path).unwrap();
    let l = src.layer(0).unwrap();
    for (proj, (_, base)) in l.projs.iter().zip(tern_model::source::PROJ_NAMES) {
        let Proj::Ternary(m) = proj else {
            panic!("dense")
        };
        let name = format!("blk.0.{base}");
        let raw: Vec<f32> = std::fs::read(out.join(format!("{name}.weight.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let r = match std::fs::read(out.join(format!("{name}.scale.f32"))) {
            Ok(b) => f32::from_le_bytes(b[..4].try_into().unwrap()),
            Err(_) => 1.0,
        };
        let scaled: Vec<f32> = raw.iter().map(|x| x * r).collect();
        assert!(
            scaled == m.dequantize(),
            "{name}: gguf-py value x scale != tern's weight"
        );
    }
    tq
}

#[test]
fn gguf_py_reads_converted_models() {
    let Some(py) = gguf_py() else { return };
    let tmp = TempDir::new("interop");
    let dir = tmp.join("hf");
    std::fs::create_dir(&dir).unwrap();
    synthetic_hf(&dir);
    for (ty, head) in [
        (WeightType::TQ1_0, HeadType::Q8_0),
        (WeightType::TQ2_0, HeadType::Q6K),
        (WeightType::F16, HeadType::F16),
    ] {
        let out = tmp.join(format!("{}.gguf", ty.name()));
        let opts = Options {
            ty,
            head,
            progress: false,
        };
        convert(&dir, &out, &opts).unwrap();
        let tq = check_with_gguf_py(&py, &out, &tmp.join(ty.name()));
        assert_eq!(tq > 0, ty != WeightType::F16, "{ty:?}: {tq} TQ tensors");
    }
}
