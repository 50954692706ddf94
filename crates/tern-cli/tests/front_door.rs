//! The engine's front door as a user meets it: conversations longer than the context, thread
//! counts beyond the cores, conflicting prompt flags, generation that reaches the context end,
//! `tern info` and `tern bench model` on the bundled model.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `tern` with `stdin` piped in; (success, stdout, stderr).
fn tern_with_input(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tern");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    let out = child.wait_with_output().expect("waiting for tern");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tern(args: &[&str]) -> (bool, String, String) {
    tern_with_input(args, "")
}

#[test]
fn chat_outlives_its_context_by_dropping_the_oldest_turns() {
    let turns = 8;
    let input: String = (0..turns)
        .map(|i| format!("Tell me about the economy, the war and the Union, part {i}.\n"))
        .collect();
    let (ok, out, err) =
        tern_with_input(&["chat", "--ctx", "96", "-n", "24", "--temp", "0"], &input);
    assert!(ok, "{err}");
    // One reply line per turn, each non-empty.
    let replies: Vec<&str> = out.lines().collect();
    assert_eq!(replies.len(), turns, "{out}\n{err}");
    assert!(replies.iter().all(|r| !r.trim().is_empty()), "{out}");
    // Each notice once, however many turns it applies to.
    assert_eq!(err.matches("dropping the oldest turns").count(), 1, "{err}");
    assert_eq!(
        err.matches("replies are cut at 24 tokens").count(),
        1,
        "{err}"
    );
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn chat_caps_replies_at_half_the_context_and_says_so() {
    let (ok, _, err) = tern_with_input(&["chat", "--ctx", "64", "--temp", "0"], "Hello.\n");
    assert!(ok, "{err}");
    assert!(
        err.contains("replies are capped at 32 tokens, half the context of 64"),
        "{err}"
    );
}

#[test]
fn chat_with_no_reply_budget_is_a_clear_error() {
    let (ok, _, err) = tern(&["chat", "-n", "0"]);
    assert!(!ok);
    assert!(err.contains("-n") && err.contains('0'), "{err}");
    assert!(!err.contains("context"), "{err}");
}

#[test]
fn more_threads_than_cores_are_capped_with_a_note() {
    let (ok, _, err) = tern(&["run", "-p", "The Union", "-n", "4", "--threads", "1000"]);
    assert!(ok, "{err}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        err.contains(&format!(
            "1000 threads requested but {cores} cores are available"
        )),
        "{err}"
    );
}

#[test]
fn text_and_token_id_prompts_are_exclusive() {
    let (ok, _, err) = tern(&["run", "-p", "The Union", "--prompt-ids", "1 2 3"]);
    assert!(!ok);
    assert!(
        err.contains("--prompt-ids") && err.contains("--prompt"),
        "{err}"
    );
}

#[test]
fn generation_that_reaches_the_context_end_says_so() {
    let (ok, _, err) = tern(&[
        "run",
        "-p",
        "The state of the Union",
        "--ctx",
        "16",
        "-n",
        "100",
        "--temp",
        "0",
        "--ignore-eos",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("the context of 16 tokens is full"), "{err}");
}

#[test]
fn info_speaks_plainly_and_names_the_bundled_model_once() {
    let (ok, out, err) = tern(&["info"]);
    assert!(ok, "{err}");
    assert_eq!(err.matches("using the bundled").count(), 1, "{err}");
    for debug in ["Some(", "None", "Relu2", "Silu", "[", "true", "false"] {
        assert!(!out.contains(debug), "{debug:?} in:\n{out}");
    }
    assert!(out.contains("activation       relu2"), "{out}");
    assert!(out.contains("format           gguf"), "{out}");
}

#[test]
fn bench_model_without_a_model_uses_the_bundled_one() {
    let (ok, out, err) = tern(&[
        "bench", "model", "--prompt", "8", "--gen", "4", "--reps", "1", "--json",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("using the bundled"), "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(rows.iter().any(|r| r["test"] == "pp8"), "{out}");
    assert!(rows.iter().any(|r| r["test"] == "tg4"), "{out}");
}
