//! `tern serve` against a real server on 127.0.0.1 (port 0) with the bundled model, through a
//! plain HTTP/1.0 client on a `TcpStream` (the server closes the connection after each answer,
//! so a body is simply what arrives before EOF): every endpoint, streaming, each error case, a
//! client that disconnects mid-stream, and concurrent greedy requests that must equal
//! `Session::generate` (what `tern run --temp 0` prints) byte for byte.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tern_model::sample::SamplerConfig;
use tern_model::{GenParams, KvType, ModelPath, Options, Session};
use tern_serve::{Config, Server};

/// The bundled model's whole context: long generations, so a disconnect lands mid-stream.
const CTX: usize = 1024;

/// The shared server: the bundled model, 4 sequence slots.
fn server() -> SocketAddr {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        tern_serve::start(&Config {
            port: 0,
            ctx: CTX,
            ..Config::default()
        })
        .expect("server starts")
    })
    .addr
}

/// A second server with an API key, a one-slot engine, a one-request queue and a small body
/// limit, for the 401 / 429 / 413 cases.
fn strict_server() -> SocketAddr {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        tern_serve::start(&Config {
            port: 0,
            ctx: CTX,
            parallel: 1,
            max_queue: 1,
            api_key: Some("sekrit".into()),
            body_limit: 2000,
            ..Config::default()
        })
        .expect("server starts")
    })
    .addr
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s
}

fn http(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Reply {
    let mut s = send(addr, method, path, extra, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    http(addr, "POST", path, &[], &body.to_string())
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let m = http(addr, "GET", "/metrics", &[], "").body;
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{m}"))
        .parse()
        .unwrap()
}

/// A session like `tern run --kv-type KV`'s, for the reference outputs.
fn reference_session(kv: KvType) -> std::sync::MutexGuard<'static, Session> {
    static S: OnceLock<Vec<std::sync::Mutex<Session>>> = OnceLock::new();
    let all = S.get_or_init(|| {
        KvType::ALL
            .iter()
            .map(|&kv| {
                let opts = Options {
                    ctx: CTX,
                    kv,
                    ..Options::default()
                };
                std::sync::Mutex::new(Session::open(&ModelPath::Bundled, &opts).unwrap())
            })
            .collect()
    });
    let i = KvType::ALL.iter().position(|&t| t == kv).unwrap();
    all[i].lock().unwrap_or_else(|e| e.into_inner())
}

/// What `tern run --temp 0 -n N --kv-type KV` generates for `prompt` (its tokens, stop token
/// left out, decoded), and whether it ended on a stop token.
fn reference_kv(kv: KvType, prompt_ids: &[u32], n: usize) -> (String, bool) {
    let mut s = reference_session(kv);
    s.state.reset();
    let stops = s.loaded.stop_tokens.clone();
    let mut ids = Vec::new();
    let p = GenParams {
        max_new: n,
        sampling: SamplerConfig::greedy(),
        ignore_eos: false,
    };
    let st = s
        .generate(prompt_ids, &p, |t| {
            if !stops.contains(&t) {
                ids.push(t);
            }
            true
        })
        .unwrap();
    (
        s.loaded.tokenizer.as_ref().unwrap().decode(&ids),
        st.stopped,
    )
}

/// [`reference_kv`] with the server's default KV type.
fn reference(prompt_ids: &[u32], n: usize) -> (String, bool) {
    reference_kv(Config::default().kv_type, prompt_ids, n)
}

fn encode(text: &str) -> Vec<u32> {
    reference_session(KvType::F32).encode(text).unwrap()
}

#[test]
fn health_models_and_metrics() {
    let a = server();
    let h = http(a, "GET", "/health", &[], "");
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let m = http(a, "GET", "/v1/models", &[], "").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "tern-sotu-b158");
    let text = http(a, "GET", "/metrics", &[], "").body;
    for name in [
        "tern_requests_total",
        "tern_prompt_tokens_total",
        "tern_completion_tokens_total",
        "tern_queue_depth",
        "tern_active_sequences",
        "tern_time_to_first_token_seconds_bucket",
        "tern_inter_token_latency_seconds_count",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let wm = http(a, "GET", "/v1/chat/completions", &[], "");
    assert_eq!(wm.status, 405);
    assert!(wm.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GET"));
    let nf = http(a, "GET", "/nope", &[], "");
    assert_eq!(nf.status, 404);
    assert!(nf.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/nope"));
}

#[test]
fn concurrent_greedy_completions_equal_tern_run() {
    let a = server();
    let prompts = [
        "The state of the Union is",
        "Tonight I want to talk about",
        "We will",
        "America is a nation that",
    ];
    let n = 24;
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let p = p.to_string();
            std::thread::spawn(move || {
                post(
                    a,
                    "/v1/completions",
                    &json!({"prompt": p, "max_tokens": n, "temperature": 0}),
                )
            })
        })
        .collect();
    for (p, h) in prompts.iter().zip(handles) {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let (want, stopped) = reference(&encode(p), n);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(
            v["choices"][0]["text"].as_str().unwrap(),
            want,
            "prompt {p:?}"
        );
        assert_eq!(
            v["choices"][0]["finish_reason"],
            if stopped { "stop" } else { "length" }
        );
        let u = &v["usage"];
        assert_eq!(
            u["prompt_tokens"].as_u64().unwrap() as usize,
            encode(p).len()
        );
        assert_eq!(
            u["total_tokens"],
            u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
        );
    }
}

#[test]
fn chat_non_streaming_and_streaming_agree() {
    let a = server();
    let msgs = json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the state of the Union?"}]);
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 16, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let whole = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 16, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("text/event-stream"), "{}", r.headers);
    let ev = events(&r.body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], v["usage"]);
    let fin = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(fin, &v["choices"][0]["finish_reason"]);
}

#[test]
fn streaming_completions_and_stop_strings() {
    let a = server();
    let base = json!({"prompt": "The state of the Union is", "max_tokens": 24, "temperature": 0});
    let whole = post(a, "/v1/completions", &base).json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = base.clone();
    s["stream"] = json!(true);
    let r = post(a, "/v1/completions", &s);
    let ev = events(&r.body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let text: String = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .inspect(|c| assert_eq!(c["object"], "text_completion"))
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, whole);

    // A stop string taken from the middle of the greedy text cuts it there.
    let words: Vec<&str> = whole.split_whitespace().collect();
    assert!(words.len() > 3, "{whole:?}");
    let stop = format!(" {}", words[2]);
    let cut = &whole[..whole.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut req = base.clone();
        req["stop"] = json!([stop, "zzzz-never"]);
        req["stream"] = json!(stream);
        let r = post(a, "/v1/completions", &req);
        let (text, fin) = if stream {
            let ev = events(&r.body);
            let cs: Vec<Value> = ev[..ev.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let t: String = cs
                .iter()
                .filter_map(|c| c["choices"][0]["text"].as_str())
                .collect();
            (t, cs.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let v = r.json();
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, cut, "stream {stream}");
        assert_eq!(fin, "stop");
    }
}

#[test]
fn sampling_fields_are_accepted_and_seeded_runs_repeat() {
    let a = server();
    let req = json!({"prompt": "We will", "max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "top_k": 20,
        "min_p": 0.01, "seed": 7, "frequency_penalty": 0.5, "presence_penalty": 0.3, "user": "u1",
        "ignore_eos": true, "some_unknown_field": {"x": 1}});
    let x = post(a, "/v1/completions", &req);
    assert_eq!(x.status, 200, "{}", x.body);
    let y = post(a, "/v1/completions", &req);
    assert_eq!(
        x.json()["choices"][0]["text"],
        y.json()["choices"][0]["text"]
    );
    assert_eq!(x.json()["usage"]["completion_tokens"], 12);
    assert_eq!(x.json()["choices"][0]["finish_reason"], "length");
}

/// An OpenAI error of `status` whose message contains `needle`.
fn check(r: Reply, status: u16, needle: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let e = &r.json()["error"];
    assert!(
        e["message"].as_str().unwrap().contains(needle),
        "{needle:?} not in {e}"
    );
    assert!(e["type"].is_string());
    e.clone()
}

#[test]
fn bad_requests_get_openai_errors() {
    let a = server();
    check(
        http(a, "POST", "/v1/chat/completions", &[], "{not json"),
        400,
        "not valid JSON",
    );
    let e = check(
        post(
            a,
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": "many"}),
        ),
        400,
        "max_tokens",
    );
    assert_eq!(e["param"], "max_tokens");
    check(
        post(a, "/v1/completions", &json!({"prompt": 3})),
        400,
        "prompt",
    );
    check(
        post(
            a,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "wizard", "content": "x"}]}),
        ),
        400,
        "unknown role",
    );
    check(
        post(
            a,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}], "n": 3}),
        ),
        400,
        "n = 3",
    );
    let e = check(
        post(
            a,
            "/v1/completions",
            &json!({"prompt": "x", "model": "gpt-17"}),
        ),
        404,
        "gpt-17",
    );
    assert_eq!(e["code"], "model_not_found");
    let long = "the union ".repeat(1500);
    let e = check(
        post(a, "/v1/completions", &json!({"prompt": long})),
        400,
        &format!("context is {CTX} tokens"),
    );
    assert_eq!(e["code"], "context_length_exceeded");
    check(
        post(
            a,
            "/v1/completions",
            &json!({"prompt": "x", "temperature": 5}),
        ),
        400,
        "temperature",
    );
}

#[test]
fn api_key_body_limit_and_full_queue() {
    let a = strict_server();
    let body = json!({"prompt": "We will", "max_tokens": 4}).to_string();
    assert_eq!(http(a, "POST", "/v1/completions", &[], &body).status, 401);
    let wrong = http(
        a,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer sekriT")],
        &body,
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    let key = [("Authorization", "Bearer sekrit")];
    assert_eq!(http(a, "POST", "/v1/completions", &key, &body).status, 200);
    assert_eq!(
        http(a, "GET", "/health", &[], "").status,
        200,
        "health needs no key"
    );

    let big = json!({"prompt": "x".repeat(5000)}).to_string();
    let r = http(a, "POST", "/v1/completions", &key, &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2000 bytes"));

    // One slot, one queue place: of several long streams at once, some must be turned away.
    let long = json!({"prompt": "We will", "max_tokens": 1000, "ignore_eos": true, "stream": true})
        .to_string();
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        let mut s = send(a, "POST", "/v1/completions", &key, &long);
        let mut line = String::new();
        let mut r = BufReader::new(&mut s);
        r.read_line(&mut line).unwrap();
        if line.contains(" 429 ") {
            let mut rest = String::new();
            r.read_to_string(&mut rest).unwrap();
            refused = Some(rest);
        }
        open.push(s);
    }
    let rest = refused.expect("a full queue answers 429");
    assert!(
        rest.to_ascii_lowercase().contains("retry-after: 1"),
        "{rest}"
    );
    assert!(rest.contains("rate_limit_error"), "{rest}");
    drop(open);
    wait_idle(a);
}

/// Waits until no sequence is active and nothing is queued (bounded: a leak fails).
fn wait_idle(a: SocketAddr) {
    let t = Instant::now();
    while metric(a, "tern_active_sequences") != 0.0 || metric(a, "tern_queue_depth") != 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "sequences still active after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_leaves_mid_stream_frees_its_sequence() {
    let a = server();
    let before = metric(a, "tern_cancelled_total");
    let body = json!({"messages": [{"role": "user", "content": "Talk."}], "max_tokens": 10000,
        "ignore_eos": true, "stream": true})
    .to_string();
    let s = send(a, "POST", "/v1/chat/completions", &[], &body);
    let mut r = BufReader::new(s);
    let mut seen = 0;
    let mut line = String::new();
    while seen < 3 {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.starts_with("data: ") {
            seen += 1;
        }
    }
    assert!(metric(a, "tern_active_sequences") >= 1.0);
    drop(r);
    wait_idle(a);
    assert!(metric(a, "tern_cancelled_total") > before);
}

/// The concurrency check: 64 streaming clients at once (16 sequence slots, the rest
/// queued): every one completes, each greedy text equals `Session::generate` of its prompt
/// alone, and the server ends with no active sequence and an empty queue.
#[test]
fn sixty_four_concurrent_streams_equal_their_single_stream_output() {
    static S: OnceLock<Server> = OnceLock::new();
    let a = S
        .get_or_init(|| {
            tern_serve::start(&Config {
                port: 0,
                ctx: CTX,
                max_queue: 128,
                ..Config::default()
            })
            .expect("server starts")
        })
        .addr;
    let prompts = sixty_four_prompts();
    assert_eq!(prompts.len(), 64);
    concurrent_streams_equal_references(a, &prompts, 16, Config::default().kv_type);
    wait_idle(a);
}

/// 64 prompts of the 64-stream test.
fn sixty_four_prompts() -> Vec<String> {
    let starts = [
        "The state of the Union",
        "Tonight",
        "We will",
        "America",
        "Our economy",
        "The Congress",
        "My fellow citizens",
        "This year",
    ];
    let ends = [
        " is", " must", " has", " will", " and", " can", " was", " should",
    ];
    starts
        .iter()
        .flat_map(|s| ends.iter().map(move |e| format!("{s}{e}")))
        .collect()
}

/// Streams `prompts` at once (greedy, `n` tokens each) and checks every text against the
/// single-stream reference with KV type `kv`.
fn concurrent_streams_equal_references(a: SocketAddr, prompts: &[String], n: usize, kv: KvType) {
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = json!({"prompt": p, "max_tokens": n, "temperature": 0, "stream": true});
            std::thread::spawn(move || post(a, "/v1/completions", &body))
        })
        .collect();
    for (p, h) in prompts.iter().zip(handles) {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let ev = events(&r.body);
        assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{p:?}");
        let text: String = ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            text,
            reference_kv(kv, &encode(p), n).0,
            "KV {}: prompt {p:?}",
            kv.name()
        );
    }
}

/// The batch-invariance check for every KV type: 32 requests in one 32-way batch,
/// each greedy output equal to `tern run --kv-type KV` of its prompt alone, byte for byte.
#[test]
fn thirty_two_way_batches_equal_single_streams_for_every_kv_type() {
    let prompts = sixty_four_prompts();
    for kv in KvType::ALL {
        let server = tern_serve::start(&Config {
            port: 0,
            ctx: CTX,
            parallel: 32,
            kv_type: kv,
            ..Config::default()
        })
        .expect("server starts");
        concurrent_streams_equal_references(server.addr, &prompts[..32], 12, kv);
        wait_idle(server.addr);
        assert_eq!(metric(server.addr, "tern_kv_used_bytes"), 0.0);
    }
}

/// A KV budget of two sequences' reservations: six requests run at most two at a time (the
/// used bytes never exceed the budget), all complete with their single-stream text, and a
/// request that could never fit gets a 400 naming --kv-budget.
#[test]
fn the_kv_budget_bounds_the_sequences_in_flight() {
    let n = 40;
    // The bundled model: 6 layers, 2 KV heads of 64; f16; a prompt of a few tokens + 40
    // generated reserves a 64-position cache.
    let per_seq = 2 * 6 * 128 * 2 * 64;
    let budget = 2 * per_seq;
    let server = tern_serve::start(&Config {
        port: 0,
        ctx: CTX,
        parallel: 8,
        kv_type: KvType::F16,
        kv_budget: budget,
        ..Config::default()
    })
    .expect("server starts");
    let a = server.addr;
    assert_eq!(metric(a, "tern_kv_budget_bytes"), budget as f64);
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": "We will", "max_tokens": 200}),
    );
    check(r, 400, "--kv-budget");
    let prompts: Vec<String> = sixty_four_prompts().into_iter().step_by(10).collect();
    assert_eq!(prompts.len(), 7);
    let watch = std::thread::spawn(move || {
        let (mut most_used, mut most_active) = (0.0f64, 0.0f64);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            most_used = most_used.max(metric(a, "tern_kv_used_bytes"));
            most_active = most_active.max(metric(a, "tern_active_sequences"));
            std::thread::sleep(Duration::from_millis(2));
        }
        (most_used, most_active)
    });
    concurrent_streams_equal_references(a, &prompts, n, KvType::F16);
    let (most_used, most_active) = watch.join().unwrap();
    assert!(most_used <= budget as f64, "{most_used} bytes used");
    assert!(most_active <= 2.0, "{most_active} sequences at once");
    assert!(
        most_used > 0.0 && most_active >= 1.0,
        "the watcher saw nothing run"
    );
    wait_idle(a);
    assert_eq!(metric(a, "tern_kv_used_bytes"), 0.0);
}

/// `logprobs` against the engine itself: each greedy token's log-probability equals the
/// log-softmax of `Session::logits_all` over prompt + generated tokens (to f32 rounding: the
/// full-sequence head sums in another order), its top alternatives are the largest, and the
/// chat and completion shapes agree; the fields are checked.
#[test]
fn logprobs_are_the_models_log_softmax() {
    let a = server();
    let prompt = "The state of the Union is";
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let l = &v["choices"][0]["logprobs"];
    let lps: Vec<f64> = l["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(lps.len(), 6);
    assert_eq!(l["tokens"].as_array().unwrap().len(), 6);
    let offsets: Vec<u64> = l["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    // The generated ids, from the single-stream reference (greedy, same KV type).
    let mut s = reference_session(Config::default().kv_type);
    s.state.reset();
    let ids = encode_with(&s, prompt);
    let mut gen = Vec::new();
    let p = GenParams {
        max_new: 6,
        sampling: SamplerConfig::greedy(),
        ignore_eos: true,
    };
    s.generate(&ids, &p, |t| {
        gen.push(t);
        true
    })
    .unwrap();
    let all: Vec<u32> = ids.iter().chain(&gen).copied().collect();
    s.state.reset();
    let logits = s.logits_all(&all[..all.len() - 1]).unwrap().to_vec();
    let vocab = logits.len() / (all.len() - 1);
    for (k, (&t, &got)) in gen.iter().zip(&lps).enumerate() {
        let row = &logits[(ids.len() - 1 + k) * vocab..][..vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let want = row[t as usize] as f64 - lse;
        assert!((got - want).abs() < 2e-3, "token {k}: {got} vs {want}");
        let top = l["top_logprobs"][k].as_object().unwrap();
        assert_eq!(top.len(), 3);
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            (best - got).abs() < 1e-6,
            "greedy picks the most likely token"
        );
    }
    drop(s);
    // Chat: one entry per token, streamed the same as whole.
    let body = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5,
        "temperature": 0, "logprobs": true, "top_logprobs": 2, "ignore_eos": true});
    let whole = post(a, "/v1/chat/completions", &body).json();
    let content = whole["choices"][0]["logprobs"]["content"].clone();
    assert_eq!(content.as_array().unwrap().len(), 5);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    let mut sbody = body.clone();
    sbody["stream"] = true.into();
    let ev = events(&post(a, "/v1/chat/completions", &sbody).body);
    let streamed: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(Value::Array(streamed), content);
    // Not asked: null.
    let plain = post(
        a,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert!(plain.json()["choices"][0]["logprobs"].is_null());
    // Bad values name the field.
    let msgs = json!([{"role": "user", "content": "x"}]);
    check(
        post(
            a,
            "/v1/chat/completions",
            &json!({"messages": msgs, "top_logprobs": 2}),
        ),
        400,
        "requires logprobs",
    );
    check(
        post(
            a,
            "/v1/chat/completions",
            &json!({"messages": msgs, "logprobs": true, "top_logprobs": 21}),
        ),
        400,
        "top_logprobs",
    );
    check(
        post(a, "/v1/completions", &json!({"prompt": "x", "logprobs": 6})),
        400,
        "logprobs",
    );
}

fn encode_with(s: &Session, text: &str) -> Vec<u32> {
    s.encode(text).unwrap()
}
