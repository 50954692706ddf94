//! `logprobs` in OpenAI's two shapes: chat (`{"content": [{token, logprob, bytes,
//! top_logprobs}]}`) and completions (`{tokens, token_logprobs, top_logprobs, text_offset}`).
//! Entries are collected as tokens arrive and taken by whichever response or chunk goes out
//! next, so a streamed chunk carries the entries of the tokens since the previous chunk.

use crate::api::Kind;
use crate::engine::TokenLogprob;
use serde_json::{json, Map, Value};
use tern_model::tokenizer::Tokenizer;

pub struct Logprobs<'a> {
    kind: Kind,
    tok: &'a Tokenizer,
    /// Whether the request asked for them (else every take is `null`).
    wanted: bool,
    /// (token text, its log-probability and alternatives) not yet taken.
    pending: Vec<(String, TokenLogprob)>,
    /// Characters of completion text before the next token (completions' `text_offset`).
    offset: usize,
}

impl<'a> Logprobs<'a> {
    pub fn new(kind: Kind, tok: &'a Tokenizer, wanted: bool) -> Self {
        Logprobs {
            kind,
            tok,
            wanted,
            pending: Vec::new(),
            offset: 0,
        }
    }

    pub fn push(&mut self, id: u32, lp: Option<TokenLogprob>) {
        if let Some(lp) = lp {
            self.pending.push((self.text(id), lp));
        }
    }

    /// A token's text as the tokenizer spells it alone (special tokens included; a token
    /// that is part of a character decodes to U+FFFD, so its `bytes` are those of U+FFFD).
    fn text(&self, id: u32) -> String {
        self.tok.decode_raw(&[id])
    }

    /// The entries since the last take, in the endpoint's shape; `null` if none were asked.
    pub fn take(&mut self) -> Value {
        if !self.wanted {
            return Value::Null;
        }
        let entries = std::mem::take(&mut self.pending);
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = entries
                    .iter()
                    .map(|(t, lp)| {
                        let top: Vec<Value> = lp
                            .top
                            .iter()
                            .map(|&(id, l)| {
                                let s = self.text(id);
                                json!({"token": s, "logprob": l, "bytes": s.as_bytes()})
                            })
                            .collect();
                        json!({"token": t, "logprob": lp.logprob, "bytes": t.as_bytes(),
                               "top_logprobs": top})
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Completion => {
                let mut tokens = Vec::new();
                let mut lps = Vec::new();
                let mut tops = Vec::new();
                let mut offsets = Vec::new();
                for (t, lp) in &entries {
                    offsets.push(self.offset);
                    self.offset += t.chars().count();
                    tokens.push(t.clone());
                    lps.push(lp.logprob);
                    let mut m = Map::new();
                    for &(id, l) in &lp.top {
                        m.insert(self.text(id), l.into());
                    }
                    tops.push(Value::Object(m));
                }
                json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                       "text_offset": offsets})
            }
        }
    }
}
