mod common;

use common::*;
use tern_gguf::{quants, GgmlType, GgufError, GgufFile, GgufValue, GgufWriter};

#[test]
fn every_kv_type_round_trips() {
    let bytes = sample_writer().to_bytes();
    let f = GgufFile::from_bytes("mem", bytes).unwrap();
    assert_eq!(f.version(), 3);
    let kv = all_kv();
    assert_eq!(f.metadata().len(), kv.len());
    for ((k, v), (k2, v2)) in kv.iter().zip(f.metadata()) {
        assert_eq!(k, k2);
        assert_eq!(v, v2, "{k}");
        assert_eq!(f.get(k), Some(v));
    }
    assert_eq!(f.architecture(), Some("bitnet-b1.58"));
    assert!(f.type_context().fork_likely());
}

#[test]
fn every_tensor_type_round_trips_through_a_file() {
    let dir = TempDir::new("rt");
    let path = dir.join("m.gguf");
    let w = sample_writer();
    w.write(&path).unwrap();
    // Only the final file is left: the temp file was renamed.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.gguf")]);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes());
    assert_eq!(f.data_offset() % 32, 0);
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0, "{}", t.name);
    }

    let x = floats(8, 1);
    let t = f.tensor("f32").unwrap();
    assert_eq!(
        (t.ty, t.dims, t.rows(), t.cols()),
        (GgmlType::F32, &[4usize, 2][..], 2, 4)
    );
    assert_eq!(t.to_f32().unwrap(), x);
    let f16: Vec<f32> = floats(3, 2)
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f.tensor("f16").unwrap().to_f32().unwrap(), f16);
    let bf: Vec<f32> = floats(5, 3)
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f.tensor("bf16").unwrap().to_f32().unwrap(), bf);
    let q8 = f.tensor("q8_0").unwrap().to_f32().unwrap();
    for (a, b) in floats(64, 4).iter().zip(&q8) {
        assert!((a - b).abs() < 0.02, "{a} {b}");
    }
    for (name, ty, seed) in [
        ("q4_0", GgmlType::Q4_0, 5),
        ("q4_k", GgmlType::Q4_K, 6),
        ("q6_k", GgmlType::Q6_K, 7),
    ] {
        let t = f.tensor(name).unwrap();
        let n = ty.block().0;
        assert_eq!(t.bytes, &random_blocks(ty, n, seed)[..]);
        assert_eq!(t.to_f32().unwrap().len(), n);
    }
    for (name, ty, m) in [
        ("tq1_0", GgmlType::TQ1_0, ternary(2, 256, 8)),
        ("tq2_0", GgmlType::TQ2_0, ternary(2, 256, 9)),
        ("i2_s", GgmlType::I2_S, ternary(2, 128, 10)),
    ] {
        let t = f.tensor(name).unwrap();
        assert_eq!(t.ty, ty);
        assert_eq!(t.dims, &[m.cols, m.rows]);
        assert_eq!(t.to_ternary().unwrap(), m, "{name}");
        assert_eq!(t.to_f32().unwrap(), m.dequantize(), "{name}");
    }
    assert!(matches!(f.tensor("nope"), Err(GgufError::NoTensor { .. })));
    assert!(f.tensor("f32").unwrap().to_ternary().is_err());
}

#[test]
fn custom_alignment_is_written_and_honoured() {
    let mut w = GgufWriter::with_alignment(64).unwrap();
    w.add_f32("a", GgmlType::F32, &[3], &[1.0, 2.0, 3.0])
        .unwrap();
    w.add_f32("b", GgmlType::F32, &[1], &[4.0]).unwrap();
    let f = GgufFile::from_bytes("mem", w.to_bytes()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get("general.alignment"), Some(&GgufValue::U32(64)));
    assert_eq!(f.tensor_info("b").unwrap().offset, 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor("b").unwrap().to_f32().unwrap(), vec![4.0]);
    assert!(GgufWriter::with_alignment(48).is_err());
    assert!(GgufWriter::new()
        .add_kv("general.alignment", GgufValue::U32(64))
        .is_err());
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    w.add_kv("k", GgufValue::U8(1)).unwrap();
    assert!(w.add_kv("k", GgufValue::U8(2)).is_err());
    assert!(w
        .add_tensor("t", GgmlType::F32, &[4], vec![0u8; 15])
        .is_err());
    assert!(w
        .add_tensor("t", GgmlType::Q8_0, &[33], vec![0u8; 68])
        .is_err());
    assert!(w
        .add_tensor("t", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4])
        .is_err());
    assert!(w
        .add_tensor("x".repeat(64), GgmlType::F32, &[1], vec![0u8; 4])
        .is_err());
    w.add_tensor("t", GgmlType::F32, &[1], vec![0u8; 4])
        .unwrap();
    assert!(w
        .add_tensor("t", GgmlType::F32, &[1], vec![0u8; 4])
        .is_err());
    // TQ rows must be whole 256-value blocks.
    assert!(w
        .add_ternary("q", GgmlType::TQ2_0, &ternary(1, 128, 1))
        .is_err());
}

/// A spilling writer (tensor bytes in an unlinked scratch file, not in memory) writes the same
/// bytes as one that holds them, and leaves nothing but the file behind; dropped unwritten,
/// it leaves nothing at all.
#[test]
fn spilling_writer_writes_the_same_file() {
    let dir = TempDir::new("spill");
    let path = dir.join("s.gguf");
    let w = fill_sample(GgufWriter::new().spill_near(&path).unwrap());
    w.write(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), sample_writer().to_bytes());
    assert_eq!(w.to_bytes(), sample_writer().to_bytes());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("s.gguf")]);
    drop(w);
    let other = dir.join("t.gguf");
    drop(fill_sample(GgufWriter::new().spill_near(&other).unwrap()));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    // A writer spills from its first tensor on, or not at all.
    let mut w = GgufWriter::new();
    w.add_f32("x", GgmlType::F32, &[1], &[1.0]).unwrap();
    assert!(w.spill_near(&other).is_err());
    // A directory that does not exist is an error naming the target.
    let e = GgufWriter::new()
        .spill_near(&dir.join("no/such/x.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no/such/x.gguf"), "{e}");
}

#[test]
fn failed_write_leaves_no_temp_file_and_keeps_the_old_file() {
    let dir = TempDir::new("atomic");
    let path = dir.join("m.gguf");
    std::fs::write(&path, b"old").unwrap();
    // Target is a directory: rename fails after the temp file was fully written.
    let sub = dir.join("sub.gguf");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("x"), b"x").unwrap();
    let err = sample_writer().write(&sub).unwrap_err();
    assert!(err.to_string().contains("sub.gguf"), "{err}");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("m.gguf"), "sub.gguf".into()]
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    // Missing directory: an error naming the path, nothing created.
    assert!(sample_writer().write(dir.join("no/such/dir.gguf")).is_err());
    sample_writer().write(&path).unwrap();
    assert!(GgufFile::open(&path).is_ok());
}

#[test]
fn open_errors_name_the_file() {
    let e = GgufFile::open("/nonexistent/x.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.gguf"), "{e}");
}

#[test]
fn q8_0_quantize_then_dequantize_matches_ggml_reference_values() {
    // Values chosen so x/d hits exact halves: ggml's roundf rounds them away from zero.
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    let q = quants::quantize_q8_0(&x).unwrap();
    assert_eq!(half::f16::from_le_bytes([q[0], q[1]]).to_f32(), 1.0);
    assert_eq!((q[2] as i8, q[3] as i8, q[4] as i8), (127, 3, -3));
}

/// `release` drops a mapped tensor's pages, and reading it again gives the same bytes (they
/// fault back in from the file); unknown names and in-memory files are no-ops.
#[test]
fn released_tensors_read_back_the_same() {
    let dir = TempDir::new("release");
    let path = dir.join("big.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", GgufValue::String("llama".into()))
        .unwrap();
    let data: Vec<f32> = (0..64 * 1024).map(|i| (i as f32).sin()).collect();
    w.add_f32("t", GgmlType::F32, &[1024, 64], &data).unwrap();
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let before = f.tensor("t").unwrap().to_f32().unwrap();
    f.release("t");
    f.release("no such tensor");
    assert_eq!(f.tensor("t").unwrap().to_f32().unwrap(), before);
    assert_eq!(before, data);
    GgufFile::from_bytes("mem", std::fs::read(&path).unwrap())
        .unwrap()
        .release("t");
}
