//! Picking the next token from logits: repetition penalty, greedy or top-k / top-p / min-p /
//! temperature sampling, with a seeded PRNG so runs are reproducible.
//!
//! Order of operations, the same as llama.cpp's default chain:
//! **repetition penalty → top-k → top-p → min-p → temperature → draw**.
//! Top-p and min-p therefore judge the temperature-1 distribution, so raising the temperature
//! flattens the choice among the survivors but never lets in tokens those filters removed.

/// Sampling settings. Each filter has a value that switches it off.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Divides the logits of the survivors; `<= 0` means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (at least one); 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off.
    pub min_p: f32,
    /// Penalty for tokens among the last `repeat_last_n`; 1 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at; 0 = off.
    pub repeat_last_n: usize,
    pub seed: u64,
}

/// Seed used by [`SamplerConfig::default`]. Fixed, so that two runs of the same command give the
/// same text; pass a time-based seed for variety.
pub const DEFAULT_SEED: u64 = 42;

impl Default for SamplerConfig {
    /// llama.cpp's defaults (except the fixed seed).
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: DEFAULT_SEED,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token (after the repetition penalty, which stays off).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Rejects values that are not numbers or out of range, naming the field (for CLI errors).
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                "temperature",
                self.temperature,
                self.temperature.is_finite(),
            ),
            ("top_p", self.top_p, (0.0..=1.0).contains(&self.top_p)),
            ("min_p", self.min_p, (0.0..=1.0).contains(&self.min_p)),
            (
                "repeat_penalty",
                self.repeat_penalty,
                self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            ),
        ];
        match checks.iter().find(|(_, _, ok)| !ok) {
            Some((name, value, _)) => Err(format!("{name} = {value} is out of range")),
            None => Ok(()),
        }
    }
}

/// SplitMix64: tiny, fast, good enough statistically for sampling, and stable across
/// platforms and crate versions (which `rand`'s generators do not promise).
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Stateful sampler: its PRNG advances with each draw, and its scratch buffers are reused so
/// that after the first call sampling does not allocate.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    /// (logit, id) of the tokens still in the running.
    candidates: Vec<(f32, u32)>,
    /// Distinct ids of the penalty window.
    penalized: Vec<u32>,
}

/// Higher logit first; equal logits by lower id, so every step is deterministic.
fn by_logit_desc(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = SplitMix64(config.seed);
        Self {
            config,
            rng,
            candidates: Vec::new(),
            penalized: Vec::new(),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Restarts the PRNG as if newly created with `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.config.seed = seed;
        self.rng = SplitMix64(seed);
    }

    /// Picks the next token id. `recent` is the token history (prompt and generated), of which
    /// the last `repeat_last_n` are penalized. `logits` is modified in place (penalty applied).
    ///
    /// NaN logits are never chosen; if no logit is finite, the lowest id of the largest value
    /// (or 0) is returned.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        self.apply_repeat_penalty(logits, recent);
        let c = &self.config;
        if c.temperature <= 0.0 || c.temperature.is_nan() {
            return argmax(logits);
        }

        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (l, i as u32)),
        );
        if cands.is_empty() {
            return argmax(logits);
        }

        // top-k: an unordered partition is enough here; sorting waits until top-p needs it.
        if c.top_k > 0 && c.top_k < cands.len() {
            cands.select_nth_unstable_by(c.top_k - 1, by_logit_desc);
            cands.truncate(c.top_k);
        }

        // Probabilities at temperature 1 over the top-k set, which top-p and min-p judge.
        let max = cands.iter().map(|x| x.0).fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = cands.iter().map(|x| f64::from(x.0 - max).exp()).sum();

        // min-p keeps tokens with p >= min_p * p_max, i.e. logit >= max + ln(min_p). Both it
        // and top-p keep a prefix of the sorted order, so applying min-p first as a cheap
        // unsorted filter, while top-p still normalises by the whole top-k `sum`, gives exactly
        // top-p-then-min-p but sorts far fewer tokens when top-k is off.
        if c.min_p > 0.0 {
            let threshold = max + c.min_p.min(1.0).ln();
            cands.retain(|x| x.0 >= threshold || x.0 == max);
        }

        if c.top_p < 1.0 {
            cands.sort_unstable_by(by_logit_desc);
            let target = f64::from(c.top_p.max(0.0)) * sum;
            let mut cumulative = 0.0;
            let mut keep = cands.len();
            for (i, x) in cands.iter().enumerate() {
                cumulative += f64::from(x.0 - max).exp();
                if cumulative >= target {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }

        // Temperature, then a draw from the renormalised survivors.
        let inv_t = 1.0 / f64::from(c.temperature);
        let weight = |l: f32| (f64::from(l - max) * inv_t).exp();
        let total: f64 = cands.iter().map(|x| weight(x.0)).sum();
        let mut r = self.rng.next_f64() * total;
        for x in cands.iter() {
            r -= weight(x.0);
            if r < 0.0 {
                return x.1;
            }
        }
        // Rounding left r >= 0 after the last weight: the last candidate takes it.
        cands.last().map(|x| x.1).unwrap_or(0)
    }

    /// CTRL-style penalty (as in llama.cpp and HF): each distinct token in the window has a
    /// positive logit divided by the penalty and a negative one multiplied, so it always
    /// becomes less likely for a penalty > 1.
    fn apply_repeat_penalty(&mut self, logits: &mut [f32], recent: &[u32]) {
        let (penalty, n) = (self.config.repeat_penalty, self.config.repeat_last_n);
        if penalty == 1.0 || n == 0 || !(penalty.is_finite() && penalty > 0.0) {
            return;
        }
        let window = &recent[recent.len().saturating_sub(n)..];
        self.penalized.clear();
        self.penalized.extend_from_slice(window);
        self.penalized.sort_unstable();
        self.penalized.dedup();
        for &id in &self.penalized {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Index of the largest logit, the lowest id among ties; NaNs are skipped.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_nan() && (!found || l > best_value) {
            best = i;
            best_value = l;
            found = true;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed,
        }
    }

    /// A fixed pseudo-random logit vector with a unique maximum.
    fn logits(n: usize, salt: u64) -> Vec<f32> {
        let mut rng = SplitMix64(salt);
        (0..n)
            .map(|_| (rng.next_f64() * 8.0 - 4.0) as f32)
            .collect()
    }

    fn draws(config: SamplerConfig, base: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(config);
        (0..n).map(|_| s.sample(&mut base.to_vec(), &[])).collect()
    }

    #[test]
    fn defaults_match_llama_cpp() {
        let d = SamplerConfig::default();
        assert_eq!(
            (d.temperature, d.top_k, d.top_p, d.min_p),
            (0.8, 40, 0.95, 0.05)
        );
        assert_eq!((d.repeat_penalty, d.repeat_last_n), (1.0, 64));
        assert!(d.validate().is_ok());
        assert_eq!(SamplerConfig::greedy().temperature, 0.0);
        let bad = SamplerConfig {
            top_p: 1.5,
            ..SamplerConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        let l = logits(1000, 7);
        let expected = l
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        assert_eq!(s.sample(&mut l.clone(), &[]), expected);
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, f32::NAN, 2.0], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, -1.0, 5.0, 5.0], &[]), 2);
    }

    #[test]
    fn same_seed_same_sequence_different_seed_differs() {
        let l = logits(500, 1);
        let config = |seed| cfg(1.5, 0, 1.0, 0.0, seed);
        let a = draws(config(123), &l, 200);
        assert_eq!(a, draws(config(123), &l, 200));
        assert_ne!(a, draws(config(124), &l, 200));
        // Reseeding restarts the stream.
        let mut s = Sampler::new(config(9));
        s.sample(&mut l.clone(), &[]);
        s.reseed(123);
        let again: Vec<u32> = (0..200).map(|_| s.sample(&mut l.clone(), &[])).collect();
        assert_eq!(a, again);
    }

    #[test]
    fn top_k_1_top_p_tiny_and_tiny_temperature_are_greedy() {
        for salt in 0..20 {
            let l = logits(300, salt);
            let greedy = argmax(&l);
            for seed in 0..5 {
                let one = |c: SamplerConfig| draws(c, &l, 5);
                assert!(one(cfg(1.0, 1, 1.0, 0.0, seed))
                    .iter()
                    .all(|&t| t == greedy));
                assert!(one(cfg(1.0, 0, 1e-6, 0.0, seed))
                    .iter()
                    .all(|&t| t == greedy));
                assert!(one(cfg(1e-6, 0, 1.0, 0.0, seed))
                    .iter()
                    .all(|&t| t == greedy));
            }
        }
    }

    #[test]
    fn top_k_restricts_to_the_k_best() {
        let l = logits(200, 3);
        let mut order: Vec<u32> = (0..200).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let best: Vec<u32> = order[..5].to_vec();
        let seen = draws(cfg(5.0, 5, 1.0, 0.0, 11), &l, 2000);
        assert!(seen.iter().all(|t| best.contains(t)));
        // With a high temperature all five do come up.
        assert!(best.iter().all(|t| seen.contains(t)));
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_prefix() {
        // p = [0.5, 0.3, 0.15, 0.05] (logits are log-probs).
        let l: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let seen = draws(cfg(1.0, 0, 0.79, 0.0, 5), &l, 2000);
        assert!(
            seen.iter().all(|&t| t <= 1),
            "top_p 0.79 keeps 0.5 + 0.3 only"
        );
        assert!(seen.contains(&0) && seen.contains(&1));
        let seen = draws(cfg(1.0, 0, 0.81, 0.0, 5), &l, 2000);
        assert!(seen.contains(&2) && !seen.contains(&3));
    }

    #[test]
    fn min_p_drops_tokens_below_the_fraction_of_the_best() {
        // Relative to the best: 1, 0.5, 0.09, 0.04.
        let l: Vec<f32> = [1.0f32, 0.5, 0.09, 0.04].iter().map(|p| p.ln()).collect();
        let seen = draws(cfg(1.0, 0, 1.0, 0.1, 8), &l, 2000);
        assert!(seen.contains(&0) && seen.contains(&1));
        assert!(!seen.contains(&2) && !seen.contains(&3));
        let seen = draws(cfg(1.0, 0, 1.0, 0.05, 8), &l, 4000);
        assert!(seen.contains(&2) && !seen.contains(&3));
    }

    #[test]
    fn filters_judge_the_temperature_one_distribution() {
        // At T = 1 token 1 has p1/p0 = e^-3 < 0.1 and is cut by min-p; at T = 10 the ratio
        // would be 0.74. Temperature comes last, so token 1 must never appear.
        let l = vec![0.0, -3.0];
        assert!(draws(cfg(10.0, 0, 1.0, 0.1, 1), &l, 1000)
            .iter()
            .all(|&t| t == 0));
        // Same for top-p: p0 = 0.953 at T = 1 already reaches 0.95.
        assert!(draws(cfg(10.0, 0, 0.95, 0.0, 1), &l, 1000)
            .iter()
            .all(|&t| t == 0));
        // Without the filters the hot temperature does pick token 1.
        assert!(draws(cfg(10.0, 0, 1.0, 0.0, 1), &l, 1000).contains(&1));
    }

    #[test]
    fn min_p_prefilter_equals_top_p_then_min_p() {
        // The shortcut (min-p before sorting, top-p normalised by the top-k sum) must keep the
        // same set as applying top-p and then min-p literally.
        for salt in 0..50 {
            let l = logits(64, salt);
            let (top_p, min_p) = (
                0.6 + (salt % 4) as f32 * 0.1,
                0.02 + (salt % 5) as f32 * 0.04,
            );
            let mut sorted: Vec<(f32, u32)> =
                l.iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
            sorted.sort_by(by_logit_desc);
            let max = sorted[0].0;
            let probs: Vec<f64> = sorted.iter().map(|x| f64::from(x.0 - max).exp()).collect();
            let sum: f64 = probs.iter().sum();
            let mut cum = 0.0;
            let mut keep_p = sorted.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p / sum;
                if cum >= f64::from(top_p) {
                    keep_p = i + 1;
                    break;
                }
            }
            let expected: Vec<u32> = sorted[..keep_p]
                .iter()
                .filter(|x| f64::from(x.0 - max).exp() >= f64::from(min_p) * 0.999_999)
                .map(|x| x.1)
                .collect();
            let seen = draws(cfg(3.0, 0, top_p, min_p, salt), &l, 3000);
            assert!(seen.iter().all(|t| expected.contains(t)), "salt {salt}");
            assert!(expected.iter().all(|t| seen.contains(t)), "salt {salt}");
        }
    }

    #[test]
    fn repeat_penalty_lowers_repeated_tokens() {
        let config = SamplerConfig {
            repeat_penalty: 1.5,
            repeat_last_n: 3,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(config);
        // Token 0 leads 2.0 vs 1.5; penalised it drops to 1.33.
        let mut l = vec![2.0, 1.5, -1.0];
        assert_eq!(s.sample(&mut l, &[0]), 1);
        assert_eq!(l, vec![2.0 / 1.5, 1.5, -1.0]);
        // Negative logits are multiplied; repeats in the window count once.
        let mut l = vec![-1.0, -1.2, 0.0];
        s.sample(&mut l, &[0, 0, 0]);
        assert_eq!(l[0], -1.5);
        // Only the last `repeat_last_n` tokens count; out-of-range ids are ignored.
        let mut l = vec![2.0, 1.5, 0.0];
        assert_eq!(s.sample(&mut l, &[0, 2, 2, 99]), 0);
        // Penalty 1 leaves the logits alone.
        let mut s = Sampler::new(SamplerConfig::greedy());
        let mut l = vec![2.0, 1.5];
        assert_eq!(s.sample(&mut l, &[0]), 0);
        assert_eq!(l, vec![2.0, 1.5]);
    }

    #[test]
    fn flat_and_degenerate_logits_give_valid_ids() {
        let flat = vec![0.25f32; 1000];
        for seed in 0..10 {
            let ids = draws(
                SamplerConfig {
                    seed,
                    ..SamplerConfig::default()
                },
                &flat,
                50,
            );
            assert!(ids.iter().all(|&t| t < 1000));
            // top_k 40 keeps the 40 lowest ids among equals, deterministically.
            assert!(ids.iter().all(|&t| t < 40));
        }
        let ids = draws(cfg(1.0, 0, 1.0, 0.0, 3), &flat, 2000);
        assert!(ids.iter().collect::<std::collections::HashSet<_>>().len() > 500);
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 4], &[]), 0);
        assert_eq!(s.sample(&mut [f32::NAN, f32::NAN, 1.0], &[]), 2);
        assert_eq!(
            s.sample(&mut [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], &[]),
            1
        );
        assert_eq!(s.sample(&mut [7.0], &[]), 0);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = [0.6, 0.3, 0.1]; 20k draws land within a few standard deviations.
        let l: Vec<f32> = [0.6f32, 0.3, 0.1].iter().map(|p| p.ln()).collect();
        let ids = draws(cfg(1.0, 0, 1.0, 0.0, 77), &l, 20_000);
        for (t, p) in [(0u32, 0.6), (1, 0.3), (2, 0.1)] {
            let f = ids.iter().filter(|&&x| x == t).count() as f64 / 20_000.0;
            assert!((f - p).abs() < 0.015, "token {t}: {f} vs {p}");
        }
    }

    #[test]
    fn no_allocation_after_first_call() {
        let l = logits(4096, 2);
        let mut s = Sampler::new(SamplerConfig {
            top_k: 0,
            repeat_penalty: 1.1,
            ..SamplerConfig::default()
        });
        let recent: Vec<u32> = (0..64).collect();
        s.sample(&mut l.clone(), &recent);
        let caps = (s.candidates.as_ptr(), s.penalized.as_ptr());
        for _ in 0..20 {
            s.sample(&mut l.clone(), &recent);
        }
        assert_eq!(caps, (s.candidates.as_ptr(), s.penalized.as_ptr()));
    }
}
