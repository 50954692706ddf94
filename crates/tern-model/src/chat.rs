//! Chat templates: turning a conversation into the prompt text a chat model was trained on.
//!
//! Hugging Face ships templates as Jinja in `tokenizer_config.json`; they are rendered here
//! with `minijinja` set up like `transformers`' `apply_chat_template` (`trim_blocks`,
//! `lstrip_blocks`, loop controls, Python string methods via `minijinja-contrib`'s pycompat,
//! `raise_exception`, `strftime_now`, and a Python-style `tojson`). For BitNet b1.58 2B4T there
//! is also a built-in template, because GGUF files embed a different one
//! (`bitnet-spec.md` section 6).

use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde_json::Value as Json;

use crate::error::ModelError;

/// One turn of a conversation. `role` is usually `system`, `user` or `assistant`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const TEMPLATE_NAME: &str = "chat_template";

enum Engine {
    /// The 2B4T format in Rust: exact, and independent of any file.
    Bitnet2b4t,
    Jinja(Box<Environment<'static>>),
}

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    /// Where the template came from (a path or `built-in ...`), for error messages.
    source: String,
    engine: Engine,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The BitNet b1.58 2B4T format: per message `Capitalized(role): trim(content)<|eot_id|>`,
    /// then `Assistant: ` with a generation prompt.
    ///
    /// The output has no BOS: the tokenizer adds exactly one (`Tokenizer::encode` with
    /// `add_bos`), which is also what keeps the HF template, which may write `bos_token`
    /// itself, from producing two.
    pub fn bitnet_2b4t() -> Self {
        Self {
            source: "built-in bitnet-2b4t template".to_string(),
            engine: Engine::Bitnet2b4t,
            bos_token: "<|begin_of_text|>".to_string(),
            eos_token: "<|eot_id|>".to_string(),
        }
    }

    /// Compiles a Jinja chat template. `source` names it in errors (a path, or e.g.
    /// `GGUF tokenizer.chat_template`). Syntax errors are reported here, not at render time.
    pub fn from_jinja(
        source: impl Into<String>,
        template: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ModelError> {
        let source = source.into();
        let env = hf_environment(template).map_err(|e| template_error(&source, &e))?;
        Ok(Self {
            source,
            engine: Engine::Jinja(Box::new(env)),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Reads the chat template of a Hugging Face model directory from its
    /// `tokenizer_config.json` at `path`.
    ///
    /// The template is taken, like `transformers` does, from a sibling `chat_template.jinja`,
    /// else a sibling `chat_template.json`, else the config's `chat_template` key (a string, or
    /// a list of `{name, template}` of which `default` is used). `bos_token`/`eos_token` may be
    /// strings or `{"content": ...}` objects. `Ok(None)` when there is no template at all.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Option<Self>, ModelError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let config = read_json(path)?;
        let token = |key: &str| match config.get(key) {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Object(o)) => o
                .get("content")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let (bos, eos) = (token("bos_token"), token("eos_token"));

        let dir = path.parent().unwrap_or(Path::new("."));
        let jinja_file = dir.join("chat_template.jinja");
        let json_file = dir.join("chat_template.json");
        let (source, template) = if jinja_file.is_file() {
            let text = std::fs::read_to_string(&jinja_file).map_err(|source| ModelError::Io {
                path: jinja_file.display().to_string(),
                source,
            })?;
            (jinja_file.display().to_string(), Some(text))
        } else if json_file.is_file() {
            let json = read_json(&json_file)?;
            let name = json_file.display().to_string();
            let template = template_field(&name, json.get("chat_template"))?;
            (name, template)
        } else {
            let template = template_field(&file, config.get("chat_template"))?;
            (file, template)
        };
        match template {
            Some(t) => Self::from_jinja(source, &t, bos, eos).map(Some),
            None => Ok(None),
        }
    }

    /// Where the template came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders a conversation with the HF variables `messages`, `add_generation_prompt`,
    /// `bos_token` and `eos_token`. Errors (including `raise_exception` in the template) name
    /// the template's source.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        match &self.engine {
            Engine::Bitnet2b4t => Ok(render_bitnet_2b4t(messages, add_generation_prompt)),
            Engine::Jinja(env) => {
                let messages: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        Value::from_pairs([
                            ("role", Value::from(m.role.as_str())),
                            ("content", Value::from(m.content.as_str())),
                        ])
                    })
                    .collect();
                let ctx = Value::from_pairs([
                    ("messages", Value::from(messages)),
                    ("add_generation_prompt", Value::from(add_generation_prompt)),
                    ("bos_token", Value::from(self.bos_token.as_str())),
                    ("eos_token", Value::from(self.eos_token.as_str())),
                ]);
                env.get_template(TEMPLATE_NAME)
                    .and_then(|t| t.render(ctx))
                    .map_err(|e| template_error(&self.source, &e))
            }
        }
    }
}

fn render_bitnet_2b4t(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        // Python's str.capitalize (what the Jinja filter does): first upper, rest lower.
        let mut chars = m.role.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(&chars.as_str().to_lowercase());
        }
        out.push_str(": ");
        out.push_str(m.content.trim());
        out.push_str("<|eot_id|>");
    }
    if add_generation_prompt {
        out.push_str("Assistant: ");
    }
    out
}

fn read_json(path: &Path) -> Result<Json, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.display().to_string(),
        what: format!("invalid JSON: {e}"),
    })
}

/// Extracts the template from a `chat_template` value: a string, or a list of named
/// templates of which `default` is the one `apply_chat_template` uses without a name.
fn template_field(file: &str, value: Option<&Json>) -> Result<Option<String>, ModelError> {
    let err = |what: String| ModelError::Config {
        file: file.to_string(),
        what,
    };
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named = |want: &str| {
                list.iter().find_map(|entry| {
                    (entry.get("name")?.as_str()? == want)
                        .then(|| entry.get("template")?.as_str().map(str::to_string))?
                })
            };
            named("default").map(Some).ok_or_else(|| {
                let names: Vec<&str> = list
                    .iter()
                    .filter_map(|e| e.get("name").and_then(Json::as_str))
                    .collect();
                err(format!(
                    "chat_template lists templates {names:?} but none named \"default\""
                ))
            })
        }
        Some(other) => Err(err(format!(
            "chat_template must be a string or a list of {{name, template}}, not {other}"
        ))),
    }
}

fn template_error(source: &str, e: &minijinja::Error) -> ModelError {
    // `{:#}` adds minijinja's pointer into the template source.
    ModelError::Config {
        file: source.to_string(),
        what: format!("chat template: {e:#}"),
    }
}

/// A minijinja environment behaving like the one `transformers` renders chat templates in.
fn hf_environment(template: &str) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, template.to_string())?;
    Ok(env)
}

/// Templates call this to reject conversations they cannot format.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// The current UTC time formatted like Python's `strftime` (LLaMA-3.1-style templates put
/// today's date in the system prompt). Supports `%Y %y %m %d %e %H %M %S %j %a %A %b %B %p
/// %I %%`; anything else is copied.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime_utc(&format, secs)
}

fn strftime_utc(format: &str, unix_secs: u64) -> String {
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match spec {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:2}"),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", (hour + 11) % 12 + 1),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'j' => write!(out, "{yday:03}"),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'b' => write!(out, "{}", &month_name[..3]),
            'B' => write!(out, "{month_name}"),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// so `", "`/`": "` separators and no HTML escaping (minijinja's built-in escapes `<`, `>`,
/// `&` and `'`, which would change tool definitions the model was trained on).
fn tojson(
    value: &Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    // Accepted for compatibility; the output is always non-ASCII-preserving and unsorted.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(&mut out, value, indent, 0)?;
    Ok(out)
}

fn write_py_json(
    out: &mut String,
    value: &Value,
    indent: Option<usize>,
    level: usize,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = value.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                let f = f64::try_from(value.clone())?;
                let _ = match (f.is_finite(), f.fract() == 0.0) {
                    // Python prints floats with a fractional part: 1.0, not 1.
                    (true, true) => write!(out, "{f:.1}"),
                    (true, false) => write!(out, "{f}"),
                    (false, _) => write!(
                        out,
                        "{}",
                        if f.is_nan() {
                            "NaN"
                        } else if f > 0.0 {
                            "Infinity"
                        } else {
                            "-Infinity"
                        }
                    ),
                };
            }
        }
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            out.push_str(&serde_json::to_string(s).unwrap_or_default());
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_py_json(out, item, indent, level + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                let name = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => key.to_string(),
                };
                out.push_str(&serde_json::to_string(&name).unwrap_or_default());
                out.push_str(": ");
                write_py_json(out, &value.get_item(key)?, indent, level + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", value.kind()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 00:00:00 UTC, a Friday; 2000-02-29 13:05:09 UTC, a Tuesday.
        assert_eq!(strftime_utc("%d %b %Y", 1_721_952_000), "26 Jul 2024");
        assert_eq!(
            strftime_utc("%A %B %e %H:%M:%S %j %I%p %y %%", 951_829_509),
            "Tuesday February 29 13:05:09 060 01PM 00 %"
        );
        assert_eq!(strftime_utc("%Y-%m-%d %a", 0), "1970-01-01 Thu");
    }

    #[test]
    fn tojson_is_python_style() {
        let env = hf_environment(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'a<b' | tojson }}|{{ 1.5 | tojson }}",
        )
        .unwrap();
        let x = Value::from_pairs([
            ("name", Value::from("f")),
            ("args", Value::from(vec![Value::from(1), Value::from(true)])),
        ]);
        let out = env
            .get_template(TEMPLATE_NAME)
            .unwrap()
            .render(Value::from_pairs([("x", x)]))
            .unwrap();
        assert_eq!(
            out,
            "{\"name\": \"f\", \"args\": [1, true]}|{\n  \"name\": \"f\",\n  \"args\": [\n    1,\n    true\n  ]\n}|\"a<b\"|1.5"
        );
    }
}
