//! The forward pass against an obviously-correct f64 reference, and its invariants: cached
//! decode equals a full forward, chunked prefill equals one batch, layouts and thread counts
//! agree bit for bit, bad input is an error.

use tern_kernels::actquant::quantize_row_portable;
use tern_kernels::{Layout, ThreadPool};
use tern_model::forward::Logits;
use tern_model::model::{SyntheticHead, SyntheticWeights};
use tern_model::{Activation, Head, Linear, Model, ModelConfig, State};
use tern_testutil::rel_l2;

fn tiny(act: Activation, sub_norms: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 97,
        hidden_size: 48,
        intermediate_size: 70,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 12,
        max_seq_len: 40,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        activation: act,
        sub_norms,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

fn model(act: Activation, w: SyntheticWeights) -> Model {
    let mut m = Model::synthetic(tiny(act, true), w, SyntheticHead::Tied, 5);
    // Non-trivial norms so a mix-up of norm vectors shows.
    for (i, l) in m.layers.iter_mut().enumerate() {
        for (j, v) in l.attn_norm.iter_mut().enumerate() {
            *v = 0.5 + ((i * 7 + j) % 5) as f32 * 0.25;
        }
        for (j, v) in l.ffn_norm.iter_mut().enumerate() {
            *v = 1.5 - ((i + j) % 3) as f32 * 0.25;
        }
    }
    m
}

// ---- reference: f64, one token at a time, no cache tricks --------------------------------

/// Unpacked weights of a projection, f64, plus whether it quantizes its input.
fn weights(l: &Linear) -> (Vec<f64>, usize, usize, bool) {
    match l {
        Linear::Ternary(p) => {
            let t = p.unpack();
            (
                t.values
                    .iter()
                    .map(|&v| v as f64 * t.gamma as f64)
                    .collect(),
                t.rows,
                t.cols,
                true,
            )
        }
        Linear::F16 { w, rows, cols } => {
            (w.iter().map(|v| v.to_f64()).collect(), *rows, *cols, false)
        }
        Linear::F32 { w, rows, cols } => {
            (w.iter().map(|&v| v as f64).collect(), *rows, *cols, false)
        }
    }
}

fn project(l: &Linear, x: &[f64]) -> Vec<f64> {
    let (w, rows, cols, quant) = weights(l);
    let x: Vec<f64> = if quant {
        // BitNet: the input is int8-quantized per token (reference formula, f32 as the model).
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut q = vec![0i8; cols];
        let (s, _) = quantize_row_portable(&xf, &mut q);
        q.iter().map(|&v| v as f64 / s as f64).collect()
    } else {
        x.to_vec()
    };
    (0..rows)
        .map(|o| (0..cols).map(|k| w[o * cols + k] * x[k]).sum())
        .collect()
}

fn norm(x: &[f64], w: &[f32], eps: f32) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    x.iter().zip(w).map(|(v, &g)| v * inv * g as f64).collect()
}

fn rope(x: &mut [f64], pos: usize, theta: f32) {
    let d = x.len();
    for i in 0..d / 2 {
        let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / d as f64);
        let (c, s) = ((pos as f64 * f).cos(), (pos as f64 * f).sin());
        let (a, b) = (x[i], x[i + d / 2]);
        x[i] = a * c - b * s;
        x[i + d / 2] = b * c + a * s;
    }
}

/// Logits of every position of `tokens`, recomputing everything from scratch.
fn reference(m: &Model, tokens: &[u32]) -> Vec<Vec<f64>> {
    let c = &m.config;
    let hd = c.head_dim;
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            (0..c.hidden_size)
                .map(|i| m.embed.get(t as usize * c.hidden_size + i) as f64)
                .collect()
        })
        .collect();
    for l in &m.layers {
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let a = norm(x, &l.attn_norm, c.rms_norm_eps);
            let (mut q, mut k, v) = (project(&l.q, &a), project(&l.k, &a), project(&l.v, &a));
            for h in 0..c.num_heads {
                rope(&mut q[h * hd..(h + 1) * hd], p, c.rope_theta);
            }
            for h in 0..c.num_kv_heads {
                rope(&mut k[h * hd..(h + 1) * hd], p, c.rope_theta);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for (p, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0.0; c.q_dim()];
            for h in 0..c.num_heads {
                let kvh = h / (c.num_heads / c.num_kv_heads);
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        (0..hd)
                            .map(|i| qs[p][h * hd + i] * ks[j][kvh * hd + i])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..=p {
                    for i in 0..hd {
                        att[h * hd + i] += e[j] / z * vs[j][kvh * hd + i];
                    }
                }
            }
            let att = match &l.attn_sub_norm {
                Some(w) => norm(&att, w, c.rms_norm_eps),
                None => att,
            };
            let o = project(&l.o, &att);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let z = norm(x, &l.ffn_norm, c.rms_norm_eps);
            let (g, u) = (project(&l.gate, &z), project(&l.up, &z));
            let h: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| match c.activation {
                    Activation::Relu2 => g.max(0.0).powi(2) * u,
                    Activation::Silu => g / (1.0 + (-g).exp()) * u,
                })
                .collect();
            let h = match &l.ffn_sub_norm {
                Some(w) => norm(&h, w, c.rms_norm_eps),
                None => h,
            };
            let d = project(&l.down, &h);
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
    }
    assert!(matches!(m.head, Head::Tied));
    xs.iter()
        .map(|x| {
            let xn = norm(x, &m.norm, c.rms_norm_eps);
            (0..c.vocab_size)
                .map(|v| {
                    (0..c.hidden_size)
                        .map(|i| m.embed.get(v * c.hidden_size + i) as f64 * xn[i])
                        .sum()
                })
                .collect()
        })
        .collect()
}

const PROMPT: [u32; 9] = [1, 17, 42, 5, 96, 3, 3, 60, 11];

#[test]
fn matches_the_f64_reference() {
    let pool = ThreadPool::new(2);
    for act in [Activation::Relu2, Activation::Silu] {
        for w in [
            SyntheticWeights::Ternary(Layout::Tern2),
            SyntheticWeights::F32,
        ] {
            let m = model(act, w);
            let want = reference(&m, &PROMPT);
            let mut s = State::new(&m.config, 32, 16, 2).unwrap();
            let got = m
                .forward(&PROMPT, &mut s, Logits::All, &pool)
                .unwrap()
                .to_vec();
            for (t, want) in want.iter().enumerate() {
                let got = &got[t * m.config.vocab_size..(t + 1) * m.config.vocab_size];
                // Ternary: the int8 activation rounding of f32 vs f64 inputs can flip a code
                // now and then; the error stays at the level of the quantization step.
                let tol = if matches!(w, SyntheticWeights::F32) {
                    1e-5
                } else {
                    2e-2
                };
                let e = rel_l2(got, want);
                assert!(e < tol, "{act:?} {w:?} token {t}: relative L2 {e}");
            }
        }
    }
}

#[test]
fn cached_decode_equals_full_forward_and_chunking_does_not_matter() {
    let pool = ThreadPool::new(2);
    let m = model(Activation::Relu2, SyntheticWeights::Ternary(Layout::Tern2));
    let v = m.config.vocab_size;
    let mut full = State::new(&m.config, 32, 32, 2).unwrap();
    let all = m
        .forward(&PROMPT, &mut full, Logits::All, &pool)
        .unwrap()
        .to_vec();
    // One token at a time through the cache.
    let mut s = State::new(&m.config, 32, 32, 2).unwrap();
    for (t, &tok) in PROMPT.iter().enumerate() {
        let step = m.forward(&[tok], &mut s, Logits::Last, &pool).unwrap();
        let e = rel_l2(
            step,
            &all[t * v..(t + 1) * v]
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>(),
        );
        assert!(e < 1e-5, "token {t}: {e}");
    }
    // Prefill in chunks of 4 gives the same hidden states as one batch.
    let mut chunked = State::new(&m.config, 32, 4, 2).unwrap();
    let c = m
        .forward(&PROMPT, &mut chunked, Logits::All, &pool)
        .unwrap()
        .to_vec();
    assert!(rel_l2(&c, &all.iter().map(|&x| x as f64).collect::<Vec<_>>()) < 1e-5);
    assert_eq!(chunked.pos(), PROMPT.len());
}

#[test]
fn layouts_and_thread_counts_agree_bit_for_bit() {
    let a = model(Activation::Silu, SyntheticWeights::Ternary(Layout::Tern2));
    let mut b = a.clone();
    for l in &mut b.layers {
        for p in [
            &mut l.q,
            &mut l.k,
            &mut l.v,
            &mut l.o,
            &mut l.gate,
            &mut l.up,
            &mut l.down,
        ] {
            if let Linear::Ternary(t) = p {
                *t = tern_kernels::PackedTernary::pack(&t.unpack(), Layout::Tern3);
            }
        }
    }
    let mut outs = Vec::new();
    for (m, threads) in [(&a, 1), (&a, 3), (&b, 2)] {
        let pool = ThreadPool::new(threads);
        let mut s = State::new(&m.config, 32, 32, threads).unwrap();
        outs.push(
            m.forward(&PROMPT, &mut s, Logits::All, &pool)
                .unwrap()
                .to_vec(),
        );
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0], outs[2]);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let pool = ThreadPool::new(1);
    let m = model(Activation::Relu2, SyntheticWeights::Ternary(Layout::Tern2));
    let mut s = State::new(&m.config, 8, 8, 1).unwrap();
    let long = [5u32; 9];
    let e = m.forward(&long, &mut s, Logits::Last, &pool).unwrap_err();
    assert!(
        e.to_string().contains("exceeds the context of 8 tokens"),
        "{e}"
    );
    let e = m.forward(&[97], &mut s, Logits::Last, &pool).unwrap_err();
    assert!(e.to_string().contains("token id 97"), "{e}");
    assert!(
        State::new(&m.config, 41, 8, 1).is_err(),
        "beyond max_position_embeddings"
    );
    // The state is still usable after the errors.
    assert_eq!(
        m.forward(&[5, 6], &mut s, Logits::Last, &pool)
            .unwrap()
            .len(),
        97
    );
}
