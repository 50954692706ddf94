//! Interop with gguf-py (`scripts/gguf_interop.py`). The fixture test needs no Python; the
//! others run the script, which needs `gguf==0.19.0` and numpy (`scripts/test.sh` installs
//! them; `TERN_PYTHON` picks another interpreter). Without them they skip visibly, and fail
//! under `CI=true` (`tern_testutil::skip`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tern_gguf::{quants, GgmlType, GgufArray, GgufFile, GgufValue, GgufWriter};
use tern_kernels::formats::{tq1_0, tq2_0};
use tern_testutil::{gguf_py, repo_root};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_py_small.gguf")
}

/// The metadata gguf-py wrote (scripts/gguf_interop.py KVS_PY): tern's all_kv without the
/// empty array (gguf-py refuses those) and with gguf-py's nested array.
fn expected_py_kv() -> Vec<(String, GgufValue)> {
    let mut kv: Vec<_> = all_kv()
        .into_iter()
        .filter(|(k, _)| k != "a.empty" && k != "a.nested")
        .collect();
    kv.push((
        "a.nested".into(),
        GgufValue::Array(GgufArray::Array(vec![
            GgufArray::String(vec!["a b".into(), "c d".into()]),
            GgufArray::String(vec!["e".into()]),
            GgufArray::I32(vec![1, 2]),
        ])),
    ));
    kv
}

fn check_gguf_py_file(path: &Path) {
    let f = GgufFile::open(path).unwrap();
    for (k, v) in expected_py_kv() {
        assert_eq!(f.get(&k), Some(&v), "{k}");
    }
    let t = f.tensor("f32").unwrap();
    assert_eq!(t.dims, &[4, 2]);
    let want: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.0).collect();
    assert_eq!(t.to_f32().unwrap(), want);
    let want: Vec<f32> = [0.1f32, -2.0, 65504.0]
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f.tensor("f16").unwrap().to_f32().unwrap(), want);
    let mut seen = Vec::new();
    for info in f.tensors() {
        let Some(base) = info.name.strip_suffix(".expected") else {
            continue;
        };
        let t = f.tensor(base).unwrap();
        let expected = f.tensor(&info.name).unwrap().to_f32().unwrap();
        assert_eq!(t.n_elements(), expected.len(), "{base}");
        let got = t.to_f32().unwrap();
        assert!(
            got.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{base}: tern != gguf-py dequantization"
        );
        // tern's quantizers give gguf-py's bytes for the same input.
        if let Ok(src) = f.tensor(&format!("{base}.src")) {
            let src = src.to_f32().unwrap();
            let mine = match t.ty {
                GgmlType::Q8_0 => quants::quantize_q8_0(&src).unwrap(),
                GgmlType::BF16 => quants::f32_to_bf16_bytes(&src),
                GgmlType::TQ1_0 => tq1_0::quantize_tq1_0_f32(&src).unwrap(),
                GgmlType::TQ2_0 => tq2_0::quantize_tq2_0_f32(&src).unwrap(),
                _ => t.bytes.to_vec(), // no Q4_0 quantizer in tern (not needed for export)
            };
            assert_eq!(mine, t.bytes, "{base}: tern quantizer != gguf-py bytes");
        }
        seen.push(t.ty);
    }
    for ty in [
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ] {
        assert!(seen.contains(&ty), "{ty:?} not covered");
    }
    // Ternary tensors with one scale convert to a TernaryMatrix; per-block scales are refused.
    for name in ["tq1_0", "tq2_0"] {
        let t = f.tensor(name).unwrap();
        let m = t.to_ternary().unwrap();
        assert_eq!((m.rows, m.cols, m.gamma), (2, 256, 0.0625));
        assert_eq!(
            m.dequantize(),
            f.tensor(&format!("{name}.expected"))
                .unwrap()
                .to_f32()
                .unwrap()
        );
        assert!(f
            .tensor(&format!("{name}.noisy"))
            .unwrap()
            .to_ternary()
            .is_err());
    }
}

#[test]
fn reads_committed_gguf_py_fixture() {
    let size = std::fs::metadata(fixture()).unwrap().len();
    assert!(size < 50_000, "fixture is {size} bytes");
    check_gguf_py_file(&fixture());
}

fn run_script(py: &str, args: &[&str]) {
    let out = Command::new(py)
        .arg(repo_root().join("scripts/gguf_interop.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gguf_interop.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn reads_fresh_gguf_py_file() {
    let Some(py) = gguf_py() else { return };
    let dir = TempDir::new("py-write");
    let path = dir.join("py.gguf");
    run_script(&py, &["write", path.to_str().unwrap()]);
    check_gguf_py_file(&path);
}

#[test]
fn gguf_py_reads_tern_file_and_dequantizes_the_same() {
    let Some(py) = gguf_py() else { return };
    let mut w = GgufWriter::new();
    for (k, v) in all_kv() {
        w.add_kv(k, v).unwrap();
    }
    // Everything but I2_S, which upstream gguf-py does not know. Per-block TQ scales too.
    let noisy = floats(512, 3);
    let mut tensors: Vec<(String, GgmlType, Vec<usize>, Vec<u8>)> = vec![
        (
            "f32".into(),
            GgmlType::F32,
            vec![4, 2],
            quants::f32_to_bytes(&floats(8, 1)),
        ),
        (
            "f16".into(),
            GgmlType::F16,
            vec![3],
            quants::f32_to_f16_bytes(&floats(3, 2)),
        ),
        (
            "bf16".into(),
            GgmlType::BF16,
            vec![5],
            quants::f32_to_bf16_bytes(&floats(5, 3)),
        ),
        (
            "q8_0".into(),
            GgmlType::Q8_0,
            vec![32, 2],
            quants::quantize_q8_0(&floats(64, 4)).unwrap(),
        ),
        (
            "tq1_0.noisy".into(),
            GgmlType::TQ1_0,
            vec![256, 2],
            tq1_0::quantize_tq1_0_f32(&noisy).unwrap(),
        ),
        (
            "tq2_0.noisy".into(),
            GgmlType::TQ2_0,
            vec![256, 2],
            tq2_0::quantize_tq2_0_f32(&noisy).unwrap(),
        ),
    ];
    for (name, ty, seed) in [
        ("q4_0", GgmlType::Q4_0, 5),
        ("q4_k", GgmlType::Q4_K, 6),
        ("q6_k", GgmlType::Q6_K, 7),
    ] {
        let n = ty.block().0;
        tensors.push((name.into(), ty, vec![n], random_blocks(ty, n, seed)));
    }
    for (name, ty, m) in [
        ("tq1_0", GgmlType::TQ1_0, ternary(3, 512, 8)),
        ("tq2_0", GgmlType::TQ2_0, ternary(3, 512, 9)),
    ] {
        let b = match ty {
            GgmlType::TQ1_0 => tq1_0::pack(&m).unwrap(),
            _ => tq2_0::pack(&m).unwrap(),
        };
        tensors.push((name.into(), ty, vec![512, 3], b));
    }
    for (name, ty, dims, bytes) in tensors {
        let deq = quants::dequantize(ty, &bytes, dims.iter().product()).unwrap();
        w.add_f32(format!("{name}.deq"), GgmlType::F32, &dims, &deq)
            .unwrap();
        w.add_tensor(name, ty, &dims, bytes).unwrap();
    }
    let dir = TempDir::new("py-check");
    let path = dir.join("tern.gguf");
    w.write(&path).unwrap();
    run_script(&py, &["check", path.to_str().unwrap()]);
}
