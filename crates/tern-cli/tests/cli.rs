//! The `tern` binary end to end on the small fixtures: output, and one clear error line (no
//! panic) for each kind of bad input.

use std::path::Path;
use std::process::Command;
use tern_testutil::{model_fixture as fixture, TempDir};

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
fn copy_fixture(name: &str, tag: &str) -> TempDir {
    let dst = TempDir::new(tag);
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
    let tmp = TempDir::new("logits");
    let out = tmp.join("logits.safetensors");
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
}

#[test]
fn bad_config_is_one_clear_error() {
    let dir = copy_fixture("bitnet_packed", "config");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"bitnet\", ").unwrap();
    let (ok, _, err) = tern(&["info", dir.to_str().unwrap()]);
    assert!(!ok);
    assert_one_error_line(&err, "config.json");
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
}

#[test]
fn convert_to_gguf_and_back_runs_the_transformers_tokens() {
    let tmp = TempDir::new("convert");
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
}

/// With no model argument, `tern run` uses the bundled model: the README's first command.
#[test]
fn run_without_a_model_uses_the_bundled_one() {
    let cache = TempDir::new("cache");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", "-p", "The Congress", "-n", "8", "--temp", "0"])
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .expect("running tern");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("bundled tern-sotu-b158"), "{stderr}");
    assert!(
        stdout.starts_with("The Congress") && stdout.len() > "The Congress".len(),
        "{stdout}"
    );
}

/// `tern train` on a few documents, then eval, export, convert, run and plot the result.
#[test]
fn train_eval_export_convert_run_and_plot() {
    let dir = TempDir::new("train");
    std::fs::create_dir_all(dir.join("text")).unwrap();
    let sentences = [
        "The state of the union is strong, and the people are free.",
        "Congress shall make the laws of the nation, and the president shall see them done.",
        "We have paid the debts of the war and opened new roads to the west.",
    ];
    for i in 0..8 {
        let doc: String = (0..40)
            .map(|j| sentences[(i + j) % 3])
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(dir.join(format!("text/{i}.txt")), doc).unwrap();
    }
    let config = dir.join("tiny.toml");
    std::fs::write(
        &config,
        "[model]\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\nnum_kv_heads = 1\n\
         intermediate_size = 64\nmax_seq_len = 64\n[tokenizer]\nvocab_size = 300\n\
         [train]\nseq_len = 32\nbatch_size = 2\nsteps = 4\nwarmup_steps = 1\neval_every = 2\n\
         eval_windows = 2\nsave_every = 2\n",
    )
    .unwrap();
    let run = dir.join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ok, _, err) = tern(&[
        "train",
        "-c",
        &s(&config),
        "-o",
        &s(&run),
        "--data",
        &s(&dir.join("text")),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("validation loss"), "{err}");
    assert!(run.join("checkpoints/step-00000004.safetensors").is_file());
    // A second run into the same directory is refused, not silently restarted.
    let (ok, _, err) = tern(&[
        "train",
        "-c",
        &s(&config),
        "-o",
        &s(&run),
        "--data",
        &s(&dir.join("text")),
    ]);
    assert!(!ok);
    assert_one_error_line(&err, "--resume");

    let (ok, out, err) = tern(&["train", "eval", &s(&run), "--ptq", "int4", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["val_ppl"].as_f64().unwrap() > 1.0, "{out}");

    let hf = dir.join("hf");
    let (ok, _, err) = tern(&["train", "export", &s(&run), "-o", &s(&hf)]);
    assert!(ok, "{err}");
    let gguf = dir.join("m.gguf");
    let (ok, _, err) = tern(&["convert", &s(&hf), &s(&gguf), "--type", "tq2_0"]);
    assert!(ok, "{err}");
    // The GGUF carries the exported chat template, and the loader uses it.
    let loaded = tern_model::load::open(&gguf, &Default::default()).unwrap();
    let tpl = loaded
        .chat_template
        .expect("chat template from tokenizer.chat_template");
    let text = tpl
        .render(&[tern_model::chat::Message::new("user", "Hello")], true)
        .unwrap();
    assert_eq!(text, "<|begin_of_text|>User: Hello<|eot_id|>Assistant: ");
    for model in [&hf, &gguf] {
        let (ok, out, err) = tern(&[
            "run",
            &s(model),
            "-p",
            "The state",
            "-n",
            "4",
            "--temp",
            "0",
        ]);
        assert!(ok, "{err}");
        assert!(out.starts_with("The state"), "{out}");
    }
    // The engine's perplexity on the packed export equals the trainer's evaluation of the
    // same text: training, export and engine agree end to end.
    let packed = dir.join("packed");
    let (ok, _, err) = tern(&[
        "train",
        "export",
        &s(&run),
        "-o",
        &s(&packed),
        "--form",
        "packed",
    ]);
    assert!(ok, "{err}");
    let text = dir.join("text/0.txt");
    let (ok, out, err) = tern(&["train", "eval", &s(&run), "--data", &s(&text), "--json"]);
    assert!(ok, "{err}");
    let trainer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (ok, out, err) = tern(&[
        "perplexity",
        &s(&packed),
        "-f",
        &s(&text),
        "--ctx",
        "32",
        "--json",
    ]);
    assert!(ok, "{err}");
    let engine: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (a, b) = (
        trainer["val_loss"].as_f64().unwrap(),
        engine["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-4 * a, "trainer {a} vs engine {b}");
    assert_eq!(trainer["tokens"], engine["tokens"]);
    let png = dir.join("loss.png");
    let (ok, _, err) = tern(&["plot", &s(&run), "-o", &s(&png)]);
    assert!(ok, "{err}");
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
}

#[test]
fn bench_model_reports_rows_roofline_and_a_profile_that_adds_up() {
    let dir = fixture("bitnet_packed");
    let (ok, out, err) = tern(&[
        "bench",
        "model",
        dir.to_str().unwrap(),
        "--prompt",
        "4",
        "--gen",
        "4",
        "--reps",
        "1",
        "--json",
        "--profile",
    ]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["test"], "pp4");
    let tg = &rows[1];
    assert_eq!(tg["test"], "tg4");
    assert!(tg["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(tg["bytes_per_token"].as_u64().unwrap() > 0);
    assert!(tg["roofline_fraction"].as_f64().unwrap() > 0.0);
    // The profile: one line per phase, and the phases sum to the total it prints.
    let phase_ms: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| phase") && !l.starts_with("| total"))
        .map(|l| l.split('|').nth(2).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(phase_ms.len(), 8, "{out}");
    let total: f64 = out
        .lines()
        .find(|l| l.starts_with("| total"))
        .and_then(|l| l.split('|').nth(2))
        .map(|v| v.trim().parse().unwrap())
        .expect("a total line");
    // (Each value is rounded to 0.001 ms.)
    assert!(
        (phase_ms.iter().sum::<f64>() - total).abs() <= 0.01 * total + 0.005,
        "{out}"
    );
    let shares: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains('%') && !l.starts_with("| phase"))
        .map(|l| {
            l.split('|')
                .nth(3)
                .unwrap()
                .trim()
                .trim_end_matches('%')
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(shares.len(), 8, "{out}");
    assert!((shares.iter().sum::<f64>() - 100.0).abs() < 0.5, "{out}");
    assert!(
        shares[1] > 0.0 && shares[7] > 0.0,
        "projections and head timed: {out}"
    );
}

#[test]
fn errors_say_each_cause_once() {
    let (ok, _, err) = tern(&["run", "/nonexistent/model", "-p", "hi"]);
    assert!(!ok);
    assert_one_error_line(&err, "/nonexistent/model");
    assert_eq!(err.matches("no such file or directory").count(), 1, "{err}");
    // An I/O error inside a library error (tern-train's, for a missing config file).
    let tmp = TempDir::new("nocfg");
    let (cfg, run) = (tmp.join("missing.toml"), tmp.join("run"));
    let (ok, _, err) = tern(&[
        "train",
        "-c",
        cfg.to_str().unwrap(),
        "-o",
        run.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_one_error_line(&err, "missing.toml: No such file or directory");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
}

#[test]
fn a_directory_without_config_json_is_not_a_model_directory() {
    let dir = TempDir::new("noconfig");
    std::fs::write(dir.join("notes.txt"), "not a model").unwrap();
    let (d, out) = (dir.to_str().unwrap(), dir.join("m.gguf"));
    for args in [
        vec!["info", d],
        vec!["run", d, "--prompt-ids", "1"],
        vec!["convert", d, out.to_str().unwrap()],
    ] {
        let (ok, _, err) = tern(&args);
        assert!(!ok, "{args:?}");
        assert_one_error_line(&err, "not a model directory: there is no config.json");
    }
}

#[test]
fn plot_into_a_missing_directory_names_the_path() {
    let run = TempDir::new("plotrun");
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"tokens\": 1000, \"loss\": 5.0}\n{\"tokens\": 2000, \"loss\": 4.0, \"val_loss\": 4.5}\n",
    )
    .unwrap();
    let (ok, _, err) = tern(&["plot", run.to_str().unwrap(), "-o", "/nope/x.png"]);
    assert!(!ok);
    assert_one_error_line(&err, "writing /nope/x.png: No such file or directory");
    assert!(!err.contains("Os {") && !err.contains("kind:"), "{err}");
    // The same chart into a directory that exists.
    let png = run.join("loss.png");
    let (ok, _, err) = tern(&["plot", run.to_str().unwrap(), "-o", png.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
}

/// One rule for GGUF and Hugging Face outputs: the output's directory must exist; tern convert
/// names it and creates nothing.
#[test]
fn convert_into_a_missing_directory_is_an_error_for_both_outputs() {
    let tmp = TempDir::new("convert-parent");
    let model = fixture("bitnet_packed");
    for out in ["no/such/m.gguf", "no/such/m-hf"] {
        let out = tmp.join(out);
        let (ok, _, err) = tern(&["convert", model.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(!ok);
        let parent = tmp.join("no/such");
        assert_one_error_line(
            &err,
            &format!("the directory {} does not exist", parent.display()),
        );
        assert!(!tmp.join("no").exists(), "nothing is created");
    }
}

/// `tern eval` on hand-built task files (plain JSON Lines under the fetched files' names) and
/// the bundled model: the table, one sample line per document, the same numbers with
/// `--naive`; a missing task file is one error line naming it and the fetch command.
#[test]
fn eval_scores_hand_built_tasks_and_names_missing_data() {
    let data = TempDir::new("eval-cli");
    let lines = [
        (
            "piqa/rc_0shot",
            r#"{"doc": {"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Paint the lid.", "label": 0}, "doc_id": 0}"#,
        ),
        (
            "piqa/rc_0shot",
            r#"{"doc": {"goal": "How do I cool soup?", "sol1": "Let it stand.", "sol2": "Boil it.", "label": 0}, "doc_id": 1}"#,
        ),
        (
            "winogrande/rc_0shot",
            r#"{"doc": {"sentence": "The trophy did not fit in the case because _ was too big.", "option1": "the trophy", "option2": "the case", "answer": "1"}, "doc_id": 0}"#,
        ),
    ];
    for (dir, line) in lines {
        let d = data.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("requests.jsonl.gz");
        let mut text = std::fs::read_to_string(&f).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        std::fs::write(f, text).unwrap();
    }
    let d = data.path().to_str().unwrap();
    let samples = data.join("s.jsonl");
    let (ok, out, err) = tern(&[
        "eval",
        "--tasks",
        "piqa,winogrande",
        "--data-dir",
        d,
        "--threads",
        "2",
        "--log-samples",
        samples.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("| piqa | 2 | 0 |"), "{out}");
    assert!(out.contains("| winogrande | 1 | 0 |"), "{out}");
    let logged = std::fs::read_to_string(&samples).unwrap();
    assert_eq!(logged.lines().count(), 3, "{logged}");
    let (ok, naive, err) = tern(&[
        "eval",
        "--tasks",
        "piqa,winogrande",
        "--data-dir",
        d,
        "--naive",
    ]);
    assert!(ok, "{err}");
    assert_eq!(naive, out, "the naive loop gives the same table");

    let (ok, _, err) = tern(&["eval", "--tasks", "boolq", "--data-dir", d]);
    assert!(!ok);
    let err: String = err
        .lines()
        .filter(|l| !l.starts_with("tern: no model given"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_one_error_line(&err, "boolq/rc_0shot/requests.jsonl.gz");
    assert!(err.contains("fetch_eval_data.py --tasks"), "{err}");
}
