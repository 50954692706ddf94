//! The request side of the OpenAI API: a JSON body turned into a [`GenRequest`], field by field,
//! so that a wrong type or value is a 400 naming the field (a derive would only say "line 1
//! column 40"). Unknown fields are ignored, as OpenAI does.

use crate::error::ApiError;
use serde_json::{Map, Value};
use tern_model::chat::Message;
use tern_model::sample::SamplerConfig;

/// Which endpoint a request came to: decides the input field and the response shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// The input text: a conversation to render with the model's template, or a raw prompt.
#[derive(Clone, Debug)]
pub enum Input {
    Messages(Vec<Message>),
    Prompt(String),
}

/// One parsed request, before tokenization.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub model: Option<String>,
    pub input: Input,
    /// `None`: until the context is full (OpenAI's default for chat).
    pub max_tokens: Option<usize>,
    pub sampling: SamplerConfig,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// Log-probabilities of the sampled tokens with this many alternatives each (chat:
    /// `logprobs: true` and `top_logprobs`; completions: `logprobs: N`); `None`: not asked.
    pub logprobs: Option<usize>,
    pub user: Option<String>,
}

/// Roles the chat templates know.
const ROLES: [&str; 4] = ["system", "user", "assistant", "developer"];

/// Most stop strings (OpenAI allows 4).
const MAX_STOPS: usize = 4;

/// Defaults where a field is absent: OpenAI's for the fields it has (temperature 1, top_p 1,
/// no penalties), llama-server's for its extensions (top_k 40, min_p 0.05); the seed is
/// random unless given, as with OpenAI.
pub fn parse(body: &[u8], kind: Kind) -> Result<GenRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(n) = opt_u64(&o, "n")? {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("n = {n} is not supported: tern returns one choice per request (n = 1)"),
            ));
        }
    }
    let input = match kind {
        Kind::Chat => Input::Messages(messages(&o)?),
        Kind::Completion => Input::Prompt(prompt(&o)?),
    };
    let max_tokens = match opt_u64(&o, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(&o, "max_tokens")?,
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let temperature = opt_f32(&o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature = {temperature} is out of range: 0 to 2"),
        ));
    }
    let top_p = opt_f32(&o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p = {top_p} is out of range: above 0, at most 1"),
        ));
    }
    let min_p = opt_f32(&o, "min_p")?.unwrap_or(0.05);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid(
            "min_p",
            format!("min_p = {min_p} is out of range: 0 to 1"),
        ));
    }
    let top_k = opt_u64(&o, "top_k")?.unwrap_or(40) as usize;
    let seed = match o.get("seed") {
        None | Some(Value::Null) => random_seed(),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .ok_or_else(|| ApiError::invalid("seed", "seed must be an integer"))?,
    };
    let penalty = |name: &str| -> Result<f32, ApiError> {
        let p = opt_f32(&o, name)?.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&p) {
            return Err(ApiError::invalid(
                name,
                format!("{name} = {p} is out of range: -2 to 2"),
            ));
        }
        Ok(p)
    };
    let frequency_penalty = penalty("frequency_penalty")?;
    let presence_penalty = penalty("presence_penalty")?;
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid("stop", "stop must be a string or a list of strings")
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or a list of strings",
            ))
        }
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop strings"),
        ));
    }
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => {
            opt_bool(so, "include_usage", "stream_options.include_usage")?.unwrap_or(false)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options must be an object",
            ))
        }
    };
    let logprobs = match kind {
        Kind::Chat => {
            let top = opt_u64(&o, "top_logprobs")?;
            if top.is_some_and(|t| t > 20) {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs is out of range: 0 to 20",
                ));
            }
            match (opt_bool(&o, "logprobs", "logprobs")?.unwrap_or(false), top) {
                (true, t) => Some(t.unwrap_or(0) as usize),
                (false, Some(_)) => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "top_logprobs requires logprobs: true",
                    ))
                }
                (false, None) => None,
            }
        }
        Kind::Completion => match opt_u64(&o, "logprobs")? {
            Some(n) if n > 5 => {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!("logprobs = {n} is out of range: 0 to 5"),
                ))
            }
            n => n.map(|n| n as usize),
        },
    };
    Ok(GenRequest {
        model: opt_str(&o, "model")?,
        input,
        max_tokens: max_tokens.map(|n| n as usize),
        sampling: SamplerConfig {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed,
        },
        frequency_penalty,
        presence_penalty,
        stop,
        stream: opt_bool(&o, "stream", "stream")?.unwrap_or(false),
        include_usage,
        ignore_eos: opt_bool(&o, "ignore_eos", "ignore_eos")?.unwrap_or(false),
        logprobs,
        user: opt_str(&o, "user")?,
    })
}

fn messages(o: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(list)) = o.get("messages") else {
        return Err(ApiError::invalid(
            "messages",
            "messages must be a list of {role, content} objects",
        ));
    };
    if list.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |f: &str| format!("messages[{i}].{f}");
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid(
                    &field("role"),
                    format!("{} must be a string", field("role")),
                )
            })?;
            if !ROLES.contains(&role) {
                return Err(ApiError::invalid(
                    &field("role"),
                    format!(
                        "unknown role '{role}' in {}: tern takes {}",
                        field("role"),
                        ROLES.join(", ")
                    ),
                ));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None if role == "assistant" => String::new(),
                // The list form: text parts only.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => Ok(t),
                            _ => Err(ApiError::invalid(
                                &field("content"),
                                format!("{}: only text parts are supported", field("content")),
                            )),
                        }
                    })
                    .collect::<Result<String, _>>()?,
                _ => {
                    return Err(ApiError::invalid(
                        &field("content"),
                        format!("{} must be a string", field("content")),
                    ))
                }
            };
            // The templates know "system"; "developer" is OpenAI's newer name for it.
            let role = if role == "developer" { "system" } else { role };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn prompt(o: &Map<String, Value>) -> Result<String, ApiError> {
    match o.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(_)) => Err(ApiError::invalid(
            "prompt",
            "prompt must be one string (a list of prompts is not supported)",
        )),
        _ => Err(ApiError::invalid("prompt", "prompt must be a string")),
    }
}

fn type_error(name: &str, what: &str) -> ApiError {
    ApiError::invalid(name, format!("{name} must be {what}"))
}

fn opt_u64(o: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| type_error(name, "a non-negative integer")),
    }
}

fn opt_f32(o: &Map<String, Value>, name: &str) -> Result<Option<f32>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| type_error(name, "a number")),
    }
}

fn opt_bool(o: &Map<String, Value>, name: &str, shown: &str) -> Result<Option<bool>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| type_error(shown, "true or false")),
    }
}

fn opt_str(o: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(type_error(name, "a string")),
    }
}

/// A seed from the clock and a counter: different per request, no extra dependency.
fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse(br#"{"prompt":"a","temperature":"hot"}"#, Kind::Completion).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse(
            br#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            Kind::Chat,
        )
        .unwrap_err();
        assert!(e.message.contains("unknown role 'wizard'"), "{}", e.message);
        let e = parse(br#"{"prompt":"a","n":2}"#, Kind::Completion).unwrap_err();
        assert!(e.message.contains("n = 2"));
        assert!(parse(b"{nope", Kind::Chat)
            .unwrap_err()
            .message
            .contains("not valid JSON"));
    }

    #[test]
    fn fields_and_defaults() {
        let r = parse(
            br#"{"prompt":"a","max_tokens":5,"stop":"x","seed":3,"temperature":0,"ignore_eos":true,"whatever":1}"#,
            Kind::Completion,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.stop, vec!["x".to_string()]);
        assert_eq!((r.sampling.seed, r.sampling.temperature), (3, 0.0));
        assert!(r.ignore_eos && !r.stream);
        let r = parse(
            br#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":7}"#,
            Kind::Chat,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.sampling.top_k, 40);
    }
}
