//! The HTTP endpoints. Handlers parse and validate, tokenize, queue a [`Job`] with their
//! engine, then turn its [`Event`]s into OpenAI's response or SSE chunk shapes.

use crate::api::{self, GenRequest, Input, Kind};
use crate::engine::{EngineHandle, Event, Finish, Job};
use crate::error::{json_response, ApiError};
use crate::logprobs::Logprobs;
use crate::text::TextOut;
use crate::App;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(app, body, Kind::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, body, Kind::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn models(State(app): State<Arc<App>>) -> Response {
    let data: Vec<Value> = app
        .engines
        .iter()
        .map(|e| json!({"id": e.name, "object": "model", "created": app.started, "owned_by": "tern"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// The chat page (`static/chat.html`, built into the binary): plain HTML and JS that use the
/// API above like any client.
pub const CHAT_PAGE: &str = include_str!("../static/chat.html");

pub async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        CHAT_PAGE,
    )
        .into_response()
}

pub async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

pub async fn fallback(req: Request) -> Response {
    ApiError::not_found(req.uri().path()).into_response()
}

pub async fn wrong_method(req: Request) -> Response {
    ApiError::wrong_method(req.method().as_str(), req.uri().path()).into_response()
}

/// Counts every answer by endpoint and status for `/metrics`.
pub async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        "/health" => "health",
        "/metrics" => "metrics",
        "/" => "page",
        _ => "other",
    };
    let r = next.run(req).await;
    app.metrics.record_request(endpoint, r.status().as_u16());
    r
}

/// `Authorization: Bearer KEY` on `/v1/*` when the server has a key.
pub async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Equality whose time does not depend on where the bytes differ (only on the length of the
/// key tried), so a wrong key cannot be found byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a response needs besides the text.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
}

impl Meta {
    fn usage(&self, completion: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    /// A streamed chunk in the endpoint's shape.
    fn chunk(
        &self,
        delta: Option<&str>,
        role: bool,
        finish: Option<Finish>,
        usage: Option<Value>,
        logprobs: Value,
    ) -> Value {
        let finish = finish.map(Finish::as_str);
        match self.kind {
            Kind::Chat => {
                let mut d = serde_json::Map::new();
                if role {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = delta {
                    d.insert("content".into(), t.into());
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "system_fingerprint": null,
                    "choices": [{"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": finish}],
                    "usage": usage,
                })
            }
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "system_fingerprint": null,
                "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish}],
                "usage": usage,
            }),
        }
    }

    fn whole(&self, text: &str, finish: Finish, completion: usize, logprobs: Value) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": logprobs, "finish_reason": finish.as_str()}),
            Kind::Completion => json!({"index": 0, "text": text, "logprobs": logprobs,
                                       "finish_reason": finish.as_str()}),
        };
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Completion => "text_completion",
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "system_fingerprint": null, "choices": [choice], "usage": self.usage(completion),
        })
    }
}

async fn generate(
    app: Arc<App>,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(app.body_limit)
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    let req = api::parse(&body, kind)?;
    let engine = app.engine(req.model.as_deref())?;
    // Templates and tokenizers take real time on long inputs: off the async workers.
    let (e, input) = (engine.clone(), req.input.clone());
    let (prompt, field) = tokio::task::spawn_blocking(move || tokenize(&e, &input))
        .await
        .map_err(|_| ApiError::internal("the tokenizer task failed"))??;
    if prompt.is_empty() {
        return Err(ApiError::invalid(field, format!("the {field} is empty")));
    }
    if prompt.len() >= engine.ctx {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                field,
                format!(
                    "the prompt has {} tokens but the context is {} tokens (prompt + completion): shorten it, or start the server with a larger --ctx",
                    prompt.len(),
                    engine.ctx
                ),
            )
        });
    }
    let max_new = req
        .max_tokens
        .unwrap_or(usize::MAX)
        .min(engine.ctx - prompt.len());
    // Each sequence reserves KV cache for prompt + max_tokens; one that could never fit the
    // budget would wait forever.
    let need = engine.kv_bytes(prompt.len() + max_new);
    if need > engine.kv_budget {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                "max_tokens",
                format!(
                    "{} prompt tokens + {max_new} completion tokens need {} MiB of KV cache, more than the server's budget of {} MiB: lower max_tokens, or start the server with a larger --kv-budget",
                    prompt.len(),
                    need.div_ceil(1 << 20),
                    engine.kv_budget >> 20
                ),
            )
        });
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let meta = Meta {
        id: format!(
            "{}-{}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            app.next_id()
        ),
        created: unix_now(),
        model: engine.name.clone(),
        kind,
        prompt_tokens: prompt.len(),
    };
    let GenRequest {
        sampling,
        frequency_penalty,
        presence_penalty,
        ignore_eos,
        ..
    } = req.clone();
    engine.submit(Job {
        prompt,
        max_new,
        sampling,
        frequency_penalty,
        presence_penalty,
        ignore_eos,
        logprobs: req.logprobs,
        events: tx,
        arrived,
    })?;
    app.metrics
        .prompt_tokens
        .fetch_add(meta.prompt_tokens as u64, Relaxed);
    if req.stream {
        Ok(stream(engine.clone(), req, meta, rx))
    } else {
        whole(&engine, &req, &meta, rx).await
    }
}

/// The prompt's tokens (with BOS, as `tern run` and `tern chat` encode) and the field they
/// came from, for error messages.
fn tokenize(engine: &EngineHandle, input: &Input) -> Result<(Vec<u32>, &'static str), ApiError> {
    let (text, field) = match input {
        Input::Messages(m) => (
            engine.template.render(m, true).map_err(|e| {
                ApiError::invalid("messages", format!("the chat template failed: {e}"))
            })?,
            "messages",
        ),
        Input::Prompt(p) => (p.clone(), "prompt"),
    };
    let tok = engine
        .loaded
        .require_tokenizer()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let prompt = tok
        .encode(&text, true)
        .map_err(|e| ApiError::invalid(field, e.to_string()))?;
    Ok((prompt, field))
}

/// Waits for the end and answers in one JSON body. Dropping this future (client gone) drops
/// `rx`, which cancels the job.
async fn whole(
    engine: &EngineHandle,
    req: &GenRequest,
    meta: &Meta,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let tok = engine
        .loaded
        .require_tokenizer()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = TextOut::new(tok, &req.stop);
    let mut lps = Logprobs::new(meta.kind, tok, req.logprobs.is_some());
    let mut generated = 0;
    let finish = loop {
        match rx.recv().await {
            Some(Event::Token(t, lp)) => {
                generated += 1;
                lps.push(t, lp);
                out.push(t);
                if out.stopped {
                    break Finish::Stop;
                }
            }
            Some(Event::Done {
                finish,
                generated: n,
            }) => {
                generated = n;
                out.finish();
                break finish;
            }
            Some(Event::Error(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("the engine dropped the request")),
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &meta.whole(out.text(), finish, generated, lps.take()),
    ))
}

/// Server-sent events: a task turns engine events into `data: {chunk}` frames. When the
/// client goes away the body (and `frames`' receiver) is dropped, the task's next send fails,
/// it ends and drops `rx`, and the engine frees the sequence at its next token.
fn stream(
    engine: Arc<EngineHandle>,
    req: GenRequest,
    meta: Meta,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> Response {
    let (frames, body_rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        let send = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
        let Ok(tok) = engine.loaded.require_tokenizer() else {
            return;
        };
        let mut out = TextOut::new(tok, &req.stop);
        let mut lps = Logprobs::new(meta.kind, tok, req.logprobs.is_some());
        let nu = || req.include_usage.then_some(Value::Null);
        // Chat streams open with the assistant's role, as OpenAI's do.
        if meta.kind == Kind::Chat
            && frames
                .send(send(&meta.chunk(Some(""), true, None, nu(), lps.take())))
                .await
                .is_err()
        {
            return;
        }
        let mut generated = 0;
        let (finish, tail) = loop {
            match rx.recv().await {
                Some(Event::Token(t, lp)) => {
                    generated += 1;
                    lps.push(t, lp);
                    let delta = out.push(t);
                    if out.stopped {
                        break (Finish::Stop, delta);
                    }
                    if !delta.is_empty()
                        && frames
                            .send(send(&meta.chunk(
                                Some(&delta),
                                false,
                                None,
                                nu(),
                                lps.take(),
                            )))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                Some(Event::Done {
                    finish,
                    generated: n,
                }) => {
                    generated = n;
                    break (finish, out.finish());
                }
                Some(Event::Error(e)) => {
                    let _ = frames.send(send(&ApiError::internal(e).body())).await;
                    let _ = frames.send(Bytes::from("data: [DONE]\n\n")).await;
                    return;
                }
                None => return,
            }
        };
        drop(rx);
        let delta = (!tail.is_empty()).then_some(tail.as_str());
        let mut last = vec![send(&meta.chunk(
            delta,
            false,
            Some(finish),
            nu(),
            lps.take(),
        ))];
        if req.include_usage {
            let mut u = meta.chunk(None, false, None, Some(meta.usage(generated)), Value::Null);
            u["choices"] = json!([]);
            last.push(send(&u));
        }
        last.push(Bytes::from("data: [DONE]\n\n"));
        for f in last {
            if frames.send(f).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"sekrit", b"sekrit"));
        assert!(!constant_time_eq(b"sekriT", b"sekrit"));
        assert!(!constant_time_eq(b"sekri", b"sekrit"));
        assert!(!constant_time_eq(b"sekrit!", b"sekrit"));
        assert!(!constant_time_eq(b"", b"sekrit"));
        assert!(constant_time_eq(b"", b""));
    }
}
