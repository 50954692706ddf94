//! `tern serve` as a process: it prints the address it listens on (port 0 = a free one),
//! answers, and on SIGTERM stops and exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `tern serve ARGS` with its stdout piped, and the address it printed.
fn spawn(args: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("tern serve: listening on http://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    (child, addr)
}

/// Posts a streaming completion `body` and reads until its first event.
fn stream_started(addr: &str, body: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        assert!(r.read_line(&mut first).unwrap() > 0);
    }
    r
}

/// Waits for `child` to exit with status 0 within `secs` of `since`.
fn exits_0(child: &mut std::process::Child, since: Instant, secs: u64, what: &str) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(since.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(unix)]
#[test]
fn serve_prints_its_address_answers_and_exits_0_on_sigterm() {
    let (mut child, addr) = spawn(&["serve", "--port", "0", "--ctx", "256", "--grace", "5"]);

    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /v1/models HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.") && reply.contains(" 200 ") && reply.contains("tern-sotu-b158"),
        "{reply}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t = Instant::now();
    exits_0(&mut child, t, 20, "still running 20 s after SIGTERM");
}

/// SIGTERM while a stream is in flight: the stream still finishes (`[DONE]`) within the grace
/// period, and the process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_lets_an_inflight_stream_finish() {
    let (mut child, addr) = spawn(&["serve", "--port", "0", "--grace", "30"]);
    let body = r#"{"prompt":"We will","max_tokens":600,"ignore_eos":true,"stream":true}"#;
    let mut r = stream_started(&addr, body);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: ...{}",
        &rest[rest.len().saturating_sub(300)..]
    );
    assert!(rest.contains("\"finish_reason\":\"length\""));
    let t = Instant::now();
    exits_0(&mut child, t, 20, "still running after the stream ended");
}

/// SIGTERM with a stream that cannot finish within `--grace 0`: the stream is cut (no
/// `finish_reason`), and the process still exits 0, promptly.
#[cfg(unix)]
#[test]
fn sigterm_past_the_grace_period_cancels_and_exits_0() {
    let (mut child, addr) = spawn(&["serve", "--port", "0", "--grace", "0"]);
    // The whole context, token by token: far longer than no grace at all.
    let body = r#"{"prompt":"We will","ignore_eos":true,"stream":true}"#;
    let mut r = stream_started(&addr, body);
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    assert!(
        !rest.contains("\"finish_reason\":\"length\""),
        "the stream ran to its end despite --grace 0"
    );
    exits_0(
        &mut child,
        t,
        10,
        "still running 10 s after SIGTERM with --grace 0",
    );
}
