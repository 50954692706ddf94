//! Batch invariance of [`Model::forward_batch`]: a sequence's logits at every step are
//! bit-identical (`==` on f32) to running it alone through [`Model::forward`], whatever else is
//! in the step: sequences of different prompt lengths join and leave at different steps, prompt
//! chunks of one sequence run in the same step as decodes of others, for 1 and 2 threads, on
//! the HF fixtures (f32 and f16 tied heads), an int8 head, and the bundled GGUF model.

use std::collections::HashMap;
use tern_kernels::{Layout, ThreadPool};
use tern_model::forward::Logits;
use tern_model::model::{SyntheticHead, SyntheticWeights};
use tern_model::{
    Activation, BatchScratch, HeadKind, KvCache, KvType, LoadOptions, Model, ModelConfig, SeqInput,
    State,
};

/// One request of the schedule: joins at step `join`, prefills `prompt` in chunks of at most
/// `chunk` tokens, then decodes greedily `gen` tokens and leaves.
struct Req {
    join: usize,
    prompt: Vec<u32>,
    chunk: usize,
    gen: usize,
}

fn requests(vocab: usize) -> Vec<Req> {
    let prompt = |len: usize, seed: usize| -> Vec<u32> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11 + 3) % vocab) as u32)
            .collect()
    };
    vec![
        Req {
            join: 0,
            prompt: prompt(9, 1),
            chunk: 4,
            gen: 6,
        },
        Req {
            join: 0,
            prompt: prompt(1, 2),
            chunk: 4,
            gen: 9,
        },
        Req {
            join: 2,
            prompt: prompt(13, 3),
            chunk: 5,
            gen: 4,
        },
        Req {
            join: 3,
            prompt: prompt(3, 4),
            chunk: 8,
            gen: 7,
        },
        Req {
            join: 7,
            prompt: prompt(6, 5),
            chunk: 6,
            gen: 3,
        },
    ]
}

/// Logits a request got, each with the tokens its cache held after that step.
type Steps = Vec<(usize, Vec<f32>)>;

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Runs the schedule through `forward_batch`; returns, per request, the tokens it ran (prompt
/// then generated) and the logits it got after each step, keyed by the tokens in its cache.
fn run_batched(
    m: &Model,
    reqs: &[Req],
    ctx: usize,
    kv: KvType,
    pool: &ThreadPool,
) -> Vec<(Vec<u32>, Steps)> {
    let mut scratch = BatchScratch::new(&m.config, ctx, 32, pool.threads()).unwrap();
    let mut caches: Vec<KvCache> = reqs
        .iter()
        .map(|_| KvCache::with_type(&m.config, ctx, kv).unwrap())
        .collect();
    let mut toks: Vec<Vec<u32>> = reqs.iter().map(|r| r.prompt.clone()).collect();
    let mut got: Vec<Steps> = reqs.iter().map(|_| Vec::new()).collect();
    let mut done = vec![false; reqs.len()];
    let mut step = 0;
    let mut saw_mixed = false;
    while done.iter().any(|d| !d) {
        // Who runs this step, and which tokens.
        let mut ids = Vec::new();
        let mut inputs: Vec<Vec<u32>> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            if done[i] || step < r.join {
                continue;
            }
            let pos = caches[i].pos();
            let t = if pos < r.prompt.len() {
                r.prompt[pos..(pos + r.chunk).min(r.prompt.len())].to_vec()
            } else {
                vec![*toks[i].last().unwrap()]
            };
            ids.push(i);
            inputs.push(t);
        }
        saw_mixed |= inputs.iter().any(|t| t.len() > 1) && inputs.iter().any(|t| t.len() == 1);
        {
            // Disjoint &mut borrows of the caches of the sequences in this step.
            let mut refs: Vec<Option<&mut KvCache>> = caches.iter_mut().map(Some).collect();
            let mut seqs: Vec<SeqInput> = ids
                .iter()
                .zip(&inputs)
                .map(|(&i, t)| SeqInput {
                    cache: refs[i].take().unwrap(),
                    tokens: t,
                    logits: Logits::Last,
                })
                .collect();
            let out = m.forward_batch(&mut seqs, &mut scratch, pool).unwrap();
            assert_eq!(out.len(), ids.len());
            for (j, &i) in ids.iter().enumerate() {
                let l = out.get(j);
                assert_eq!(l.len(), m.config.vocab_size);
                let pos = seqs[j].cache.pos();
                got[i].push((pos, l.to_vec()));
            }
        }
        for &i in &ids {
            let r = &reqs[i];
            let pos = caches[i].pos();
            if pos >= r.prompt.len() {
                let last = &got[i].last().unwrap().1;
                if toks[i].len() < r.prompt.len() + r.gen {
                    toks[i].push(argmax(last));
                } else {
                    done[i] = true;
                }
            }
        }
        step += 1;
    }
    assert!(saw_mixed, "the schedule never mixed prefill and decode");
    toks.into_iter().zip(got).collect()
}

/// The logits of `tokens[..pos]` run alone: the prompt part in one `forward` call (chunked
/// by `State`'s own `max_batch`), then one token at a time, as `Session::generate` does.
fn alone(
    m: &Model,
    tokens: &[u32],
    prompt: usize,
    ctx: usize,
    kv: KvType,
    pool: &ThreadPool,
) -> HashMap<usize, Vec<f32>> {
    let mut out = HashMap::new();
    // Every prefix of the prompt, each in a fresh state (chunk 3: another chunking than the
    // batch's).
    for p in 1..=prompt {
        let mut s = State::with_kv_type(&m.config, ctx, 3, pool.threads(), kv).unwrap();
        out.insert(
            p,
            m.forward(&tokens[..p], &mut s, Logits::Last, pool)
                .unwrap()
                .to_vec(),
        );
    }
    let mut s = State::with_kv_type(&m.config, ctx, 16, pool.threads(), kv).unwrap();
    let first = m
        .forward(&tokens[..prompt], &mut s, Logits::Last, pool)
        .unwrap()
        .to_vec();
    assert!(
        first == out[&prompt],
        "prompt logits depend on the prompt chunking"
    );
    for (i, &t) in tokens[prompt..].iter().enumerate() {
        out.insert(
            prompt + i + 1,
            m.forward(&[t], &mut s, Logits::Last, pool)
                .unwrap()
                .to_vec(),
        );
    }
    out
}

fn check_invariance(m: &Model, what: &str) {
    let ctx = 40.min(m.config.max_seq_len);
    let reqs = requests(m.config.vocab_size);
    // q8_0 takes heads of whole 32-value blocks only.
    let kvs: Vec<KvType> = KvType::ALL
        .into_iter()
        .filter(|&kv| kv != KvType::Q8 || m.config.head_dim.is_multiple_of(32))
        .collect();
    for kv in kvs {
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads);
            let runs = run_batched(m, &reqs, ctx, kv, &pool);
            for (i, ((toks, got), r)) in runs.iter().zip(&reqs).enumerate() {
                assert_eq!(toks.len(), r.prompt.len() + r.gen);
                let want = alone(
                    m,
                    toks,
                    r.prompt.len(),
                    ctx,
                    kv,
                    &ThreadPool::new(3 - threads),
                );
                for (pos, l) in got {
                    assert!(
                        *l == want[pos],
                        "{what}, KV {}, {threads} threads: request {i} at position {pos}: \
                         batched logits differ from the sequence run alone",
                        kv.name()
                    );
                }
            }
        }
    }
}

fn fixture(name: &str, head: HeadKind) -> Model {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let opts = LoadOptions {
        head,
        threads: 1,
        ..LoadOptions::default()
    };
    tern_model::load::open(&dir, &opts).unwrap().model
}

#[test]
fn fixtures_are_batch_invariant() {
    for name in ["bitnet_1bitllm_f32", "bitnet_online_bf16", "bitnet_packed"] {
        for head in [HeadKind::F16, HeadKind::Int8] {
            let m = fixture(name, head);
            check_invariance(&m, &format!("{name} head {}", m.head_type()));
        }
    }
}

#[test]
fn bundled_model_is_batch_invariant() {
    let path = tern_model::bundled::path().unwrap();
    let m = tern_model::load::open(
        &path,
        &LoadOptions {
            threads: 1,
            ..LoadOptions::default()
        },
    )
    .unwrap()
    .model;
    check_invariance(&m, "bundled");
}

#[test]
fn synthetic_shapes_with_gqa_and_silu_are_batch_invariant() {
    // Rows of the projections and of the head above one GEMM tile, several threads' tasks.
    let c = ModelConfig {
        vocab_size: 300,
        hidden_size: 96,
        intermediate_size: 160,
        num_layers: 2,
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 32,
        max_seq_len: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        activation: Activation::Silu,
        sub_norms: true,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    for layout in Layout::ALL {
        for head in [SyntheticHead::Tied, SyntheticHead::Int8] {
            let m = Model::synthetic(c.clone(), SyntheticWeights::Ternary(layout), head, 7);
            check_invariance(&m, &format!("synthetic {layout:?} {head:?}"));
        }
    }
}

#[test]
fn bad_steps_are_errors_and_change_nothing() {
    let m = fixture("bitnet_packed", HeadKind::F16);
    let pool = ThreadPool::new(1);
    let mut scratch = BatchScratch::new(&m.config, 16, 4, 1).unwrap();
    let mut a = KvCache::new(&m.config, 16).unwrap();
    let mut big = KvCache::new(&m.config, 32).unwrap();
    // Too many rows for the scratch.
    let five = [1u32; 5];
    let r = m.forward_batch(
        &mut [SeqInput {
            cache: &mut a,
            tokens: &five,
            logits: Logits::Last,
        }],
        &mut scratch,
        &pool,
    );
    assert!(r.is_err());
    // A cache longer than the scratch's RoPE table.
    let r = m.forward_batch(
        &mut [SeqInput {
            cache: &mut big,
            tokens: &[1],
            logits: Logits::Last,
        }],
        &mut scratch,
        &pool,
    );
    assert!(r.is_err());
    // A token outside the vocabulary in the second sequence: the first is not run either.
    let mut b = KvCache::new(&m.config, 16).unwrap();
    let bad = [m.config.vocab_size as u32];
    let r = m.forward_batch(
        &mut [
            SeqInput {
                cache: &mut a,
                tokens: &[1, 2],
                logits: Logits::Last,
            },
            SeqInput {
                cache: &mut b,
                tokens: &bad,
                logits: Logits::Last,
            },
        ],
        &mut scratch,
        &pool,
    );
    assert!(r.is_err());
    assert_eq!((a.pos(), b.pos()), (0, 0));
    // Sequences with no tokens sit the step out with empty logits; All gives every row.
    let toks = [5u32, 6, 7];
    let out = m
        .forward_batch(
            &mut [
                SeqInput {
                    cache: &mut a,
                    tokens: &[],
                    logits: Logits::Last,
                },
                SeqInput {
                    cache: &mut b,
                    tokens: &toks,
                    logits: Logits::All,
                },
            ],
            &mut scratch,
            &pool,
        )
        .unwrap();
    assert!(out.get(0).is_empty());
    assert_eq!(out.get(1).len(), 3 * m.config.vocab_size);
    let all = out.get(1).to_vec();
    assert_eq!((a.pos(), b.pos()), (0, 3));
    // Each row of All is the Last logits of that prefix alone.
    for p in 1..=3 {
        let mut s = State::new(&m.config, 16, 16, 1).unwrap();
        let want = m.forward(&toks[..p], &mut s, Logits::Last, &pool).unwrap();
        let v = m.config.vocab_size;
        assert!(&all[(p - 1) * v..p * v] == want, "row {p} of All");
    }
}

#[test]
fn session_generate_equals_a_batched_greedy_run() {
    use tern_model::sample::SamplerConfig;
    use tern_model::{GenParams, ModelPath, Options, Session};
    let opts = Options {
        threads: 2,
        ctx: 48,
        max_batch: 7,
        ..Options::default()
    };
    let mut session = Session::open(&ModelPath::Bundled, &opts).unwrap();
    let prompts: Vec<Vec<u32>> = ["Once upon a time", "The cat sat on the mat and", "Hi"]
        .iter()
        .map(|t| session.encode(t).unwrap())
        .collect();
    let params = GenParams {
        max_new: 10,
        sampling: SamplerConfig::greedy(),
        ignore_eos: true,
    };
    let mut alone = Vec::new();
    for p in &prompts {
        session.state.reset();
        let mut out = Vec::new();
        session
            .generate(p, &params, |t| {
                out.push(t);
                true
            })
            .unwrap();
        alone.push(out);
    }
    // All three at once: prompts whole in the first step, then one decode row each.
    let m = &session.loaded.model;
    let mut scratch = session.new_batch_scratch(48, 64).unwrap();
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|_| session.new_kv_cache(48).unwrap())
        .collect();
    let mut next: Vec<Vec<u32>> = prompts.clone();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    for _ in 0..params.max_new {
        let mut seqs: Vec<SeqInput> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, t)| SeqInput {
                cache,
                tokens: t,
                logits: Logits::Last,
            })
            .collect();
        let l = m
            .forward_batch(&mut seqs, &mut scratch, &session.pool)
            .unwrap();
        for (i, o) in out.iter_mut().enumerate() {
            o.push(argmax(l.get(i)));
        }
        for (n, o) in next.iter_mut().zip(&out) {
            *n = vec![*o.last().unwrap()];
        }
    }
    assert_eq!(out, alone);
}

#[test]
fn compressed_kv_caches_are_close_to_f32_and_steps_take_one_kv_type() {
    let path = tern_model::bundled::path().unwrap();
    let opts = LoadOptions {
        threads: 1,
        ..LoadOptions::default()
    };
    let m = tern_model::load::open(&path, &opts).unwrap().model;
    let pool = ThreadPool::new(2);
    let toks: Vec<u32> = (0..30u32).map(|i| (i * 31 + 7) % 200).collect();
    let v = m.config.vocab_size;
    let run = |kv: KvType| {
        let mut s = State::with_kv_type(&m.config, 32, 8, 2, kv).unwrap();
        m.forward(&toks, &mut s, Logits::All, &pool)
            .unwrap()
            .to_vec()
    };
    let a = run(KvType::F32);
    let wide: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
    for (kv, tol) in [(KvType::F16, 1e-2), (KvType::Q8, 5e-2)] {
        let b = run(kv);
        assert!(a != b, "a {} cache rounds keys and values", kv.name());
        let e = tern_testutil::rel_l2(&b, &wide);
        assert!(
            e < tol,
            "{} KV cache: relative L2 {e} against f32",
            kv.name()
        );
        assert_eq!(b.len(), toks.len() * v);
    }
    // Half the bytes; q8_0 34 per 32 values.
    let c32 = KvCache::with_type(&m.config, 32, KvType::F32).unwrap();
    let c16 = KvCache::with_type(&m.config, 32, KvType::F16).unwrap();
    let c8 = KvCache::with_type(&m.config, 32, KvType::Q8).unwrap();
    assert_eq!(c32.bytes(), 2 * c16.bytes());
    assert_eq!(c16.bytes(), KvCache::bytes_for(&m.config, 32, KvType::F16));
    assert_eq!(c8.bytes() * 64, c16.bytes() * 34);
    assert_eq!(c8.bytes(), KvCache::bytes_for(&m.config, 32, KvType::Q8));
    // Mixed types in one step are an error.
    let (mut c32, mut c16) = (c32, c16);
    let mut scratch = BatchScratch::new(&m.config, 32, 4, 2).unwrap();
    let r = m.forward_batch(
        &mut [
            SeqInput {
                cache: &mut c32,
                tokens: &[1],
                logits: Logits::Last,
            },
            SeqInput {
                cache: &mut c16,
                tokens: &[1],
                logits: Logits::Last,
            },
        ],
        &mut scratch,
        &pool,
    );
    assert!(r.is_err());
}

/// A decode step of many sequences holds more rows than one sequence's cache has positions.
#[test]
fn a_step_may_hold_more_rows_than_a_cache_has_positions() {
    let m = fixture("bitnet_packed", HeadKind::F16);
    let pool = ThreadPool::new(2);
    let mut scratch = BatchScratch::new(&m.config, 4, 12, 2).unwrap();
    let mut caches: Vec<KvCache> = (0..12)
        .map(|_| KvCache::new(&m.config, 4).unwrap())
        .collect();
    let toks: Vec<u32> = (0..12).collect();
    let mut seqs: Vec<SeqInput> = caches
        .iter_mut()
        .zip(&toks)
        .map(|(cache, t)| SeqInput {
            cache,
            tokens: std::slice::from_ref(t),
            logits: Logits::Last,
        })
        .collect();
    let out = m.forward_batch(&mut seqs, &mut scratch, &pool).unwrap();
    assert_eq!(out.len(), 12);
    // Each row as its sequence alone.
    for (i, &t) in toks.iter().enumerate() {
        let mut s = State::new(&m.config, 4, 1, 2).unwrap();
        let want = m
            .forward(&[t], &mut s, Logits::Last, &pool)
            .unwrap()
            .to_vec();
        assert!(out.get(i) == want.as_slice(), "row {i}");
    }
}
