//! Counters and gauges for `GET /metrics`, in Prometheus' text format. Plain atomics (and one
//! small map for the status codes): no metrics crate for a dozen series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token buckets: a CPU server's first token
/// takes from milliseconds (small model, short prompt) to tens of seconds (queued behind others).
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds (seconds) of the inter-token latency buckets: one decode step of one sequence,
/// plus the steps of the others it is interleaved with.
const ITL_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A Prometheus histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, &bound) in self.buckets.iter().zip(self.bounds) {
            if s <= bound {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} histogram\n");
        for (b, bound) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{bound}\"}} {}", b.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(o, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(o, "{name}_count {count}");
    }
}

pub struct Metrics {
    /// (endpoint, status) -> requests answered.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Requests accepted into a queue and not yet taken by their engine.
    pub queue_depth: AtomicI64,
    /// Sequences an engine is running (each holds a KV-cache state).
    pub active_sequences: AtomicI64,
    /// Bytes of KV cache the active sequences hold, and the engines' budgets (all models).
    pub kv_used_bytes: AtomicI64,
    pub kv_budget_bytes: AtomicI64,
    /// Sequences the engine dropped because their receiver went away: the client left, or a
    /// stop string ended the text (the server stops listening, the engine notices next token).
    pub cancelled: AtomicU64,
    /// From request arrival (queueing included) to the first token.
    pub ttft: Histogram,
    /// Between two tokens of one sequence.
    pub itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            active_sequences: AtomicI64::new(0),
            kv_used_bytes: AtomicI64::new(0),
            kv_budget_bytes: AtomicI64::new(0),
            cancelled: AtomicU64::new(0),
            ttft: Histogram::new(&TTFT_BUCKETS),
            itl: Histogram::new(&ITL_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn record_request(&self, endpoint: &'static str, status: u16) {
        // A poisoned lock only means another thread panicked while counting: keep counting.
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint, status)).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        o += "# HELP tern_requests_total HTTP requests answered, by endpoint and status.\n";
        o += "# TYPE tern_requests_total counter\n";
        for ((ep, st), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "tern_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
            );
        }
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            let _ = write!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        one(
            "tern_prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted requests.",
            self.prompt_tokens.load(Relaxed).to_string(),
        );
        one(
            "tern_completion_tokens_total",
            "counter",
            "Tokens generated.",
            self.completion_tokens.load(Relaxed).to_string(),
        );
        one(
            "tern_queue_depth",
            "gauge",
            "Requests waiting for an engine.",
            self.queue_depth.load(Relaxed).to_string(),
        );
        one(
            "tern_active_sequences",
            "gauge",
            "Sequences being generated (KV states in use).",
            self.active_sequences.load(Relaxed).to_string(),
        );
        one(
            "tern_kv_used_bytes",
            "gauge",
            "KV cache held by the active sequences (each reserves prompt + max_tokens).",
            self.kv_used_bytes.load(Relaxed).to_string(),
        );
        one(
            "tern_kv_budget_bytes",
            "gauge",
            "KV cache the engines may hold (--kv-budget, summed over the models).",
            self.kv_budget_bytes.load(Relaxed).to_string(),
        );
        one(
            "tern_cancelled_total",
            "counter",
            "Sequences dropped because nobody listened any more (client gone, or a stop string matched).",
            self.cancelled.load(Relaxed).to_string(),
        );
        self.ttft.render(
            &mut o,
            "tern_time_to_first_token_seconds",
            "From request arrival (queueing included) to the first generated token.",
        );
        self.itl.render(
            &mut o,
            "tern_inter_token_latency_seconds",
            "Between two consecutive tokens of one sequence.",
        );
        o
    }
}
