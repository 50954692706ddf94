//! `tern bench serve`: a load generator for any OpenAI-compatible server (`tern serve`,
//! llama-server, vLLM): `C` clients stream completions at once, each request generating
//! exactly `--gen` tokens (`ignore_eos`), and the run reports aggregate output tokens/s,
//! time to first token and inter-token latency (p50/p99), and the server's peak RSS when its
//! pid is given. Plain HTTP/1.1 over `TcpStream` (chunked or close-delimited SSE), one thread
//! per client: the generator costs microseconds per token next to the server's milliseconds.
//! `scripts/bench_serve.sh` runs tern and llama-server side by side with it.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The server: host:port or http://host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    url: String,
    /// Model name to ask for (absent: the server's default).
    #[arg(long)]
    model: Option<String>,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Requests per run: this many per client (at least 4 in all).
    #[arg(long, default_value_t = 2)]
    requests_per_client: usize,
    /// Prompt length in words (each a token or two of a BPE vocabulary).
    #[arg(long, default_value_t = 24)]
    prompt_words: usize,
    /// Tokens each request generates (`max_tokens`, with `ignore_eos`).
    #[arg(long, default_value_t = 64)]
    gen: usize,
    /// The server's pid, to report its peak RSS (Linux `VmHWM`).
    #[arg(long)]
    pid: Option<u32>,
    /// A label for the JSON lines (e.g. `tern` or `llama-server`).
    #[arg(long, default_value = "server")]
    label: String,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// Timings of one request.
struct Timing {
    /// From send to the first token.
    ttft: f64,
    /// Between consecutive token events.
    gaps: Vec<f64>,
    tokens: usize,
}

pub fn run(a: &Args) -> Result<()> {
    let host = a.url.trim_start_matches("http://").trim_end_matches('/');
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("--url {}", a.url))?
        .next()
        .with_context(|| format!("--url {}: no address", a.url))?;
    // One warm-up request (first-touch of the weights, thread start-up).
    request(addr, a, 0, a.gen.min(8)).context("warm-up request")?;
    if !a.json {
        println!("| clients | requests | output tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | server peak RSS |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    for &c in &a.concurrency {
        let c = c.max(1);
        let n = (c * a.requests_per_client).max(4);
        let next = Arc::new(Mutex::new(0usize));
        let results = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let clients: Vec<_> = (0..c)
            .map(|_| {
                let (next, results) = (next.clone(), results.clone());
                let a = a.clone();
                std::thread::spawn(move || -> Result<()> {
                    loop {
                        let i = {
                            let mut g = next.lock().unwrap_or_else(|e| e.into_inner());
                            if *g >= n {
                                return Ok(());
                            }
                            *g += 1;
                            *g
                        };
                        let t = request(addr, &a, i, a.gen)?;
                        results.lock().unwrap_or_else(|e| e.into_inner()).push(t);
                    }
                })
            })
            .collect();
        for h in clients {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        let wall = t0.elapsed().as_secs_f64();
        let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
        let tokens: usize = results.iter().map(|t| t.tokens).sum();
        let mut ttft: Vec<f64> = results.iter().map(|t| t.ttft).collect();
        let mut itl: Vec<f64> = results.iter().flat_map(|t| t.gaps.clone()).collect();
        let (t50, t99) = (pct(&mut ttft, 0.5), pct(&mut ttft, 0.99));
        let (i50, i99) = (pct(&mut itl, 0.5), pct(&mut itl, 0.99));
        let tps = tokens as f64 / wall;
        let rss = a.pid.and_then(peak_rss_of);
        if a.json {
            println!(
                "{}",
                json!({
                    "label": a.label, "clients": c, "requests": n, "prompt_words": a.prompt_words,
                    "gen": a.gen, "output_tokens": tokens, "wall_s": wall,
                    "output_tokens_per_s": tps, "ttft_p50_s": t50, "ttft_p99_s": t99,
                    "itl_p50_s": i50, "itl_p99_s": i99, "server_peak_rss_bytes": rss,
                    "connection_retries": RETRIES.swap(0, std::sync::atomic::Ordering::Relaxed),
                })
            );
        } else {
            let rss = rss.map_or("-".into(), |b| format!("{:.2} GB", b as f64 / 1e9));
            println!(
                "| {c} | {n} | {tps:.1} | {:.0} ms | {:.0} ms | {:.1} ms | {:.1} ms | {rss} |",
                t50 * 1e3,
                t99 * 1e3,
                i50 * 1e3,
                i99 * 1e3
            );
        }
    }
    Ok(())
}

/// The `q`-quantile (nearest rank) of `v`; NaN when empty.
fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Prompt `i`: distinct words first (no two requests share a prefix a server could reuse),
/// then ordinary English.
fn prompt(i: usize, words: usize) -> String {
    const TEXT: [&str; 12] = [
        "the", "state", "of", "our", "union", "is", "strong", "and", "we", "will", "build",
        "together",
    ];
    let mut s = format!("Request {i} asks:");
    for w in 0..words {
        s.push(' ');
        s.push_str(TEXT[(w * 7 + i) % TEXT.len()]);
    }
    s
}

/// One streamed completion; the timings of its token events.
fn request(addr: SocketAddr, a: &Args, i: usize, gen: usize) -> Result<Timing> {
    let mut body = json!({
        "prompt": prompt(i, a.prompt_words), "max_tokens": gen, "temperature": 0,
        "stream": true, "ignore_eos": true,
    });
    if let Some(m) = &a.model {
        body["model"] = m.clone().into();
    }
    let body = body.to_string();
    let t0 = Instant::now();
    // A connection the server resets before answering (an overflowing accept queue) is tried
    // again, up to 10 times; the time counts toward this request's TTFT.
    let mut attempt = 0;
    let (r, status, chunked) = loop {
        attempt += 1;
        match send(addr, &body) {
            Ok(x) => break x,
            Err(e) if attempt < 10 && is_reset(&e) => {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e).with_context(|| format!("request {i}")),
        }
    };
    let mut r = r;
    if status != "200" {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        bail!("HTTP {status}: {rest}");
    }
    let mut events = SseReader::new(r, chunked);
    let (mut first, mut last, mut gaps, mut finish): (Option<Instant>, Option<Instant>, _, _) =
        (None, None, Vec::new(), None);
    while let Some(data) = events.next_event()? {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).with_context(|| format!("event {data:?}"))?;
        if v.get("error").is_some() {
            bail!("server error: {data}");
        }
        // A token event: a choice with text (llama-server sends one per token; tern one per
        // token whose text is complete UTF-8).
        let Some(ch) = v["choices"].get(0) else {
            continue;
        };
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        if ch["text"].as_str().is_none_or(str::is_empty) {
            continue;
        }
        let now = Instant::now();
        if first.is_none() {
            first = Some(now);
        }
        if let Some(l) = last {
            gaps.push((now - l).as_secs_f64());
        }
        last = Some(now);
    }
    let Some(first) = first else {
        bail!("no tokens in the stream");
    };
    // With `ignore_eos`, a request that ends by length generated exactly `max_tokens` (the
    // event count can be lower: a server may hold back a token that is half a character).
    if finish.as_deref() != Some("length") {
        bail!("request {i} ended with finish_reason {finish:?}, not \"length\"");
    }
    Ok(Timing {
        ttft: (first - t0).as_secs_f64(),
        gaps,
        tokens: gen,
    })
}

/// Connections the server reset before answering, retried (all runs of the process).
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// Sends the request; returns the body reader after the headers, the status and whether the
/// body is chunked.
fn send(addr: SocketAddr, body: &str) -> std::io::Result<(BufReader<TcpStream>, String, bool)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let l = line.to_ascii_lowercase();
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
    }
    Ok((r, status, chunked))
}

/// `data:` payloads of a server-sent event stream, over a chunked or plain body.
struct SseReader<R> {
    r: BufReader<R>,
    chunked: bool,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> SseReader<R> {
    fn new(r: BufReader<R>, chunked: bool) -> Self {
        SseReader {
            r,
            chunked,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next `data:` payload; `None` at the end of the body.
    fn next_event(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(d) = line.trim_end().strip_prefix("data:") {
                    return Ok(Some(d.trim().to_string()));
                }
                continue;
            }
            if self.done || !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Appends more of the body to `buf`; `false` at its end.
    fn fill(&mut self) -> Result<bool> {
        if !self.chunked {
            let mut b = [0u8; 4096];
            let n = self.r.read(&mut b)?;
            self.buf.extend_from_slice(&b[..n]);
            self.done = n == 0;
            return Ok(n > 0);
        }
        let mut size = String::new();
        if self.r.read_line(&mut size)? == 0 {
            self.done = true;
            return Ok(false);
        }
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            self.done = true;
            return Ok(false);
        }
        let at = self.buf.len();
        self.buf.resize(at + n, 0);
        self.r.read_exact(&mut self.buf[at..])?;
        let mut crlf = [0u8; 2];
        self.r.read_exact(&mut crlf)?;
        Ok(true)
    }
}

/// Peak RSS of process `pid` (Linux `VmHWM`).
fn peak_rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(pct(&mut v, 0.5), 3.0);
        assert_eq!(pct(&mut v, 0.99), 5.0);
        assert_eq!(pct(&mut v, 0.0), 1.0);
        assert!(pct(&mut [], 0.5).is_nan());
    }

    #[test]
    fn sse_over_chunked_and_plain_bodies() {
        let events = "data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let chunked = format!(
            "{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            10,
            &events[..10],
            events.len() - 10,
            &events[10..]
        );
        for (body, c) in [(chunked.as_str(), true), (events, false)] {
            let mut r = SseReader::new(BufReader::new(body.as_bytes()), c);
            assert_eq!(r.next_event().unwrap().as_deref(), Some("{\"a\":1}"));
            assert_eq!(r.next_event().unwrap().as_deref(), Some("[DONE]"));
            assert_eq!(r.next_event().unwrap(), None);
        }
    }
}
