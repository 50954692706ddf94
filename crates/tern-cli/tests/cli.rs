//! The `tern` binary end to end on the small fixtures: output, and one clear error line (no
//! panic) for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tern-model/tests/fixtures")
        .join(name)
}

fn tern(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("running tern");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of a fixture directory in a fresh temporary directory.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("tern-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn assert_one_error_line(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("tern: error: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn greedy_run_prints_the_transformers_tokens() {
    let dir = fixture("bitnet_packed");
    let (ok, out, err) = tern(&[
        "run",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1 17 200 43 99 5 128 255 64 7 150 33",
        "-n",
        "16",
        "--temp",
        "0",
        "--print-ids",
    ]);
    assert!(ok, "{err}");
    // The greedy continuation transformers produced for this prompt (expected.safetensors).
    assert_eq!(
        out.trim(),
        "81 81 255 54 54 54 54 45 45 45 45 115 115 115 115 115"
    );
    assert!(err.contains("generation: 16 tokens"), "{err}");
}

#[test]
fn logits_are_written_as_safetensors() {
    let out = std::env::temp_dir().join(format!(
        "tern-cli-logits-{}.safetensors",
        std::process::id()
    ));
    let (ok, _, err) = tern(&[
        "logits",
        fixture("llama_dense_f16").to_str().unwrap(),
        "--prompt-ids",
        "1 17 200",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("logits").unwrap().shape(), &[3, 256]);
    std::fs::remove_file(out).unwrap();
}

#[test]
fn info_describes_the_model() {
    let (ok, out, err) = tern(&["info", fixture("bitnet_online_bf16").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 layers, hidden 64, ffn 172, heads 4 (kv 2)"),
        "{out}"
    );
    assert!(out.contains("ternary/tern2"), "{out}");
}

#[test]
fn over_long_prompt_is_one_clear_error() {
    let ids = vec!["5"; 70].join(" ");
    let (ok, _, err) = tern(&[
        "run",
        fixture("bitnet_packed").to_str().unwrap(),
        "--prompt-ids",
        &ids,
    ]);
    assert!(!ok);
    assert_one_error_line(&err, "the prompt has 70 tokens but the context holds 64");
}

#[test]
fn truncated_weights_are_one_clear_error() {
    let dir = copy_fixture("bitnet_packed", "trunc");
    let f = dir.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (ok, _, err) = tern(&["info", dir.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err, "truncated");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_config_is_one_clear_error() {
    let dir = copy_fixture("bitnet_packed", "config");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"bitnet\", ").unwrap();
    let (ok, _, err) = tern(&["info", dir.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err, "config.json");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_model_and_bad_flags_are_one_clear_error() {
    let (ok, _, err) = tern(&["run", "/nonexistent/model", "-p", "hi"]);
    assert!(!ok);
    assert_one_error_line(&err, "/nonexistent/model");
    let (ok, _, err) = tern(&[
        "run",
        fixture("bitnet_packed").to_str().unwrap(),
        "--prompt-ids",
        "1 x 3",
    ]);
    assert!(!ok);
    assert_one_error_line(&err, "\"x\" is not a token id");
    let (ok, _, err) = tern(&[
        "run",
        fixture("bitnet_packed").to_str().unwrap(),
        "--prompt-ids",
        "1 300",
    ]);
    assert!(!ok);
    assert_one_error_line(&err, "token id 300");
}

/// GPT-2's byte-to-character map, so a 256-token byte-level tokenizer fits the fixtures'
/// vocabulary of 256 exactly.
fn byte_level_tokenizer_json() -> String {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    let mut vocab = Vec::new();
    for b in 0..256u32 {
        let ch = if printable(b) {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
        vocab.push(format!(
            "{}: {b}",
            serde_json::to_string(&ch.to_string()).unwrap()
        ));
    }
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}},
        "post_processor":null,
        "decoder":{{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}},
        "model":{{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
        "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
        "vocab":{{{}}},"merges":[]}}}}"#,
        vocab.join(",")
    )
}

#[test]
fn chat_reads_turns_from_a_pipe_and_run_streams_text() {
    use std::io::Write;
    let dir = copy_fixture("bitnet_packed", "chat");
    std::fs::write(dir.join("tokenizer.json"), byte_level_tokenizer_json()).unwrap();
    // One byte per token: give the conversation room (RoPE works at any position).
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace(
        "\"max_position_embeddings\": 64",
        "\"max_position_embeddings\": 512",
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "chat",
            dir.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "6",
            "--system",
            "Be brief.",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi\nAnd again\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // One reply line per turn.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches('\n').count(),
        2,
        "{stderr}"
    );

    let (ok, out, err) = tern(&[
        "run",
        dir.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "5",
        "--temp",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("Hello"), "the prompt is echoed: {out:?}");
    assert!(err.contains("generation: "), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn convert_to_gguf_and_back_runs_the_transformers_tokens() {
    let tmp = std::env::temp_dir().join(format!("tern-cli-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let gguf = tmp.join("m.gguf");
    let hf = tmp.join("m-hf");
    let greedy = |model: &Path| {
        let (ok, out, err) = tern(&[
            "run",
            model.to_str().unwrap(),
            "--prompt-ids",
            "1 17 200 43 99 5 128 255 64 7 150 33",
            "-n",
            "16",
            "--temp",
            "0",
            "--print-ids",
        ]);
        assert!(ok, "{err}");
        out.split_whitespace().map(String::from).collect::<Vec<_>>()
    };
    let (ok, _, err) = tern(&[
        "convert",
        fixture("bitnet_packed").to_str().unwrap(),
        gguf.to_str().unwrap(),
        "--type",
        "i2_s",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("wrote") && err.contains("bitnet-b1.58"),
        "{err}"
    );
    let (ok, _, err) = tern(&["convert", gguf.to_str().unwrap(), hf.to_str().unwrap()]);
    assert!(ok, "{err}");
    let want = "81 81 255 54 54 54 54 45 45 45 45 115 115 115 115 115";
    assert_eq!(greedy(&gguf).join(" "), want);
    assert_eq!(greedy(&hf).join(" "), want);
    // Errors: one line each, naming the path.
    let (ok, _, err) = tern(&["convert", tmp.join("nope").to_str().unwrap(), "x.gguf"]);
    assert!(!ok);
    assert_one_error_line(&err, "nope");
    let (ok, _, err) = tern(&["convert", gguf.to_str().unwrap(), hf.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err, "already exists");
    std::fs::remove_dir_all(&tmp).unwrap();
}
