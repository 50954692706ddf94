//! Generated tokens to the text a client sees: incremental UTF-8-safe decoding (the
//! tokenizer's [`StreamDecoder`]) and stop strings, which cut the text where they begin and
//! are not themselves returned. While the text ends in what could be the start of a stop
//! string, that tail is held back, so a streamed client never sees text a later token would
//! turn into a stop.

use tern_model::tokenizer::{StreamDecoder, Tokenizer};

pub struct TextOut<'a> {
    dec: StreamDecoder<'a>,
    stops: &'a [String],
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    /// Whether a stop string was found (the text ends before it).
    pub stopped: bool,
}

impl<'a> TextOut<'a> {
    pub fn new(tok: &'a Tokenizer, stops: &'a [String]) -> Self {
        TextOut {
            dec: tok.stream_decoder(),
            stops,
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds a token; returns the text now safe to send (maybe empty).
    pub fn push(&mut self, id: u32) -> String {
        let piece = self.dec.step(id);
        self.add(piece, false)
    }

    /// Ends the stream: whatever is held back (unless a stop string cut it).
    pub fn finish(&mut self) -> String {
        let piece = self.dec.flush();
        self.add(piece, true)
    }

    /// The whole text so far (after a stop string: up to it).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn add(&mut self, piece: Option<String>, end: bool) -> String {
        if self.stopped {
            return String::new();
        }
        if let Some(p) = piece {
            self.text.push_str(&p);
        }
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        let safe = if let Some(at) = first_stop {
            self.stopped = true;
            self.text.truncate(at.max(self.sent));
            self.text.len()
        } else if end {
            self.text.len()
        } else {
            (self.text.len() - self.held()).max(self.sent)
        };
        let out = self.text[self.sent..safe].to_string();
        self.sent = safe;
        out
    }

    /// Bytes at the end of the text that begin some stop string.
    fn held(&self) -> usize {
        let mut hold = 0;
        for s in self.stops {
            for k in (hold + 1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        hold
    }
}
