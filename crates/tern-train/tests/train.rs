//! Trainer tests on tiny configs (seconds each): fused ops against composed candle ops,
//! STE gradients, quantizers bit-exact with the engine's, loss going down, bit-exact resume,
//! export parity with the inference engine, and clear errors on bad input.

use candle_core::{Device, Tensor, Var, D};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use tern_kernels::rng::Rng;
use tern_testutil::{rel_l2, TempDir};
use tern_train::export::{export_hf, Form};
use tern_train::recipe::{Act, Quant};
use tern_train::trainer::{RunDir, Silent};
use tern_train::transformer::{Model, ProjMode};
use tern_train::{checkpoint, data, ops, quant, Config, Trainer};

fn rand_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.unit_f32() * scale).collect()
}

fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vals(x: &Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (scale {scale})"
        );
    }
}

/// A fused op and its composed candle form agree forward and backward (weighted-sum loss
/// with random weights, so every output element's gradient is exercised).
fn check_fused(
    shape: &[usize],
    fused: impl Fn(&Tensor) -> Tensor,
    composed: impl Fn(&Tensor) -> Tensor,
    what: &str,
) {
    let mut rng = Rng::new(shape.iter().product::<usize>() as u64);
    let n: usize = shape.iter().product();
    let x = Var::from_tensor(&t(rand_vec(&mut rng, n, 2.0), shape)).unwrap();
    let yf = fused(x.as_tensor());
    let yc = composed(x.as_tensor());
    assert_close(&vals(&yf), &vals(&yc), 1e-5, &format!("{what} forward"));
    let r = t(rand_vec(&mut rng, yf.elem_count(), 1.0), yf.dims());
    let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (&yc * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close(
        &vals(gf.get(x.as_tensor()).unwrap()),
        &vals(gc.get(x.as_tensor()).unwrap()),
        1e-4,
        &format!("{what} backward"),
    );
}

#[test]
fn rms_norm_matches_composed_ops() {
    let mut rng = Rng::new(7);
    let w = Var::from_tensor(&t(rand_vec(&mut rng, 24, 1.5), &[24])).unwrap();
    let composed = |x: &Tensor| {
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let inv = (ms + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
        x.broadcast_mul(&inv)
            .unwrap()
            .broadcast_mul(w.as_tensor())
            .unwrap()
    };
    check_fused(
        &[5, 24],
        |x| ops::rms_norm(x, w.as_tensor(), 1e-5).unwrap(),
        composed,
        "rms_norm",
    );
    // The gain's gradient too.
    let x = t(rand_vec(&mut rng, 5 * 24, 2.0), &[5, 24]);
    let gf = ops::rms_norm(&x, w.as_tensor(), 1e-5)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gc = composed(&x).sum_all().unwrap().backward().unwrap();
    assert_close(
        &vals(gf.get(w.as_tensor()).unwrap()),
        &vals(gc.get(w.as_tensor()).unwrap()),
        1e-4,
        "rms_norm dw",
    );
}

#[test]
fn rope_matches_rotate_half() {
    let (b, h, tt, d) = (2, 3, 5, 8);
    let (cos, sin) = ops::rope_tables(16, d, 10_000.0);
    let (c2, s2) = (cos.clone(), sin.clone());
    let composed = move |x: &Tensor| {
        let full = |tab: &[f32]| {
            let v: Vec<f32> = (0..tt)
                .flat_map(|p| {
                    let row = &tab[p * d / 2..(p + 1) * d / 2];
                    row.iter().chain(row.iter()).copied().collect::<Vec<_>>()
                })
                .collect();
            t(v, &[tt, d])
        };
        let (c, s) = (full(&c2), full(&s2));
        let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap()
    };
    check_fused(
        &[b, h, tt, d],
        |x| {
            x.apply_op1(ops::Rope {
                cos: cos.clone(),
                sin: sin.clone(),
                t: tt,
                inverse: false,
            })
            .unwrap()
        },
        composed,
        "rope",
    );
}

#[test]
fn causal_softmax_matches_masked_softmax() {
    let tt = 7;
    let scale = 0.35f32;
    let composed = |x: &Tensor| {
        let mask: Vec<f32> = (0..tt * tt)
            .map(|i| {
                if i % tt > i / tt {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let x = (x * scale as f64)
            .unwrap()
            .broadcast_add(&t(mask, &[tt, tt]))
            .unwrap();
        let max = x.max_keepdim(D::Minus1).unwrap().detach();
        let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
        let s = e.sum_keepdim(D::Minus1).unwrap();
        e.broadcast_div(&s).unwrap()
    };
    check_fused(
        &[2, 3, tt, tt],
        |x| ops::causal_softmax(x, scale).unwrap(),
        composed,
        "softmax",
    );
}

#[test]
fn cross_entropy_matches_log_softmax() {
    let targets: Vec<u32> = vec![3, 0, 9, 4, 4, 1];
    let tg = targets.clone();
    let composed = move |x: &Tensor| {
        let max = x.max_keepdim(D::Minus1).unwrap().detach();
        let sh = x.broadcast_sub(&max).unwrap();
        let lse = sh
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        let idx = Tensor::from_vec(tg.clone(), (6, 1), &Device::Cpu).unwrap();
        let picked = sh.gather(&idx, 1).unwrap();
        (lse - picked).unwrap().mean_all().unwrap()
    };
    check_fused(
        &[6, 10],
        |x| ops::cross_entropy(x, &targets).unwrap(),
        composed,
        "ce",
    );
}

#[test]
fn quantizers_are_bit_exact_with_the_engine() {
    let mut rng = Rng::new(11);
    for k in [1usize, 7, 64, 333] {
        for trial in 0..20 {
            let mut x = rand_vec(&mut rng, k, 3.0);
            if trial % 4 == 0 {
                // Exact ties after scaling: values on a half-integer grid of the row max.
                let amax = 127.0f32;
                for v in x.iter_mut() {
                    *v = ((*v * 40.0).round() + 0.5).clamp(-amax, amax);
                }
                x[0] = amax;
            }
            let mut fake = vec![0f32; k];
            quant::act_quant_row(&x, &mut fake);
            let mut q = vec![0i8; k];
            let (s, _) = tern_kernels::actquant::quantize_row_portable(&x, &mut q);
            for i in 0..k {
                assert_eq!(
                    fake[i].to_bits(),
                    (q[i] as f32 / s).to_bits(),
                    "act k={k} i={i}"
                );
            }
        }
        let rows = 3;
        let w = rand_vec(&mut rng, rows * k, 0.1);
        let mut fake = vec![0f32; rows * k];
        quant::weight_quant_slice(&w, &mut fake);
        let m = tern_kernels::formats::TernaryMatrix::quantize_absmean(rows, k, &w).unwrap();
        for (i, (f, &q)) in fake.iter().zip(&m.values).enumerate() {
            let want = q as f32 * m.gamma;
            assert_eq!(f.to_bits(), want.to_bits(), "weight k={k} i={i}");
        }
    }
}

/// y = actquant(x) @ weightquant(w)^T: the STE passes dL/dy straight through both quantizers,
/// so dL/dw = g^T actquant(x) and dL/dx = g weightquant(w) exactly.
#[test]
fn ste_passes_gradients_through_the_quantizers() {
    let mut rng = Rng::new(3);
    let (n, kin, kout) = (4, 16, 12);
    let x = Var::from_tensor(&t(rand_vec(&mut rng, n * kin, 1.0), &[n, kin])).unwrap();
    let w = Var::from_tensor(&t(rand_vec(&mut rng, kout * kin, 0.05), &[kout, kin])).unwrap();
    let g = t(rand_vec(&mut rng, n * kout, 1.0), &[n, kout]);
    let xq = quant::apply(x.as_tensor(), quant::ActQuant).unwrap();
    let wq = quant::apply(w.as_tensor(), quant::WeightQuant).unwrap();
    let y = xq.matmul(&wq.t().unwrap()).unwrap();
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let want_dw = g.t().unwrap().matmul(&xq.detach()).unwrap();
    let want_dx = g.matmul(&wq.detach()).unwrap();
    assert_close(
        &vals(grads.get(w.as_tensor()).unwrap()),
        &vals(&want_dw),
        1e-6,
        "dw",
    );
    assert_close(
        &vals(grads.get(x.as_tensor()).unwrap()),
        &vals(&want_dx),
        1e-6,
        "dx",
    );
    // And the forward value is the quantized one, not the latent one.
    let dense = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
    assert!(vals(&y)
        .iter()
        .zip(vals(&dense))
        .any(|(a, b)| (a - b).abs() > 1e-4));
}

fn tiny_config(quant: Quant) -> Config {
    let mut c = Config::default();
    c.model.hidden_size = 32;
    c.model.num_layers = 2;
    c.model.num_heads = 4;
    c.model.num_kv_heads = 2;
    c.model.intermediate_size = 48;
    c.model.max_seq_len = 32;
    c.model.quant = quant;
    c.tokenizer.vocab_size = 300;
    c.train.seq_len = 16;
    c.train.batch_size = 4;
    c.train.steps = 6;
    c.train.warmup_steps = 2;
    c.train.eval_every = 3;
    c.train.eval_windows = 4;
    c.train.save_every = 3;
    c.train.log_every = 1;
    c
}

/// A few SOTU speeches written as text files: a small, real corpus for fast runs.
fn small_corpus(dir: &Path) -> Vec<String> {
    let sotu = data::bundled_sotu().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut paths = Vec::new();
    for (i, d) in sotu.train.iter().take(6).enumerate() {
        let p = dir.join(format!("doc{i}.txt"));
        std::fs::write(&p, d).unwrap();
        paths.push(p.display().to_string());
    }
    paths
}

fn new_run(dir: &Path, quant: Quant) -> Trainer {
    let corpus = small_corpus(&dir.join("corpus"));
    let mut c = tiny_config(quant);
    c.data.train = corpus;
    c.data.valid_fraction = 0.2;
    Trainer::create(c, &dir.join("run"), &mut Silent).unwrap()
}

#[test]
fn dense_gradients_match_finite_differences() {
    let dir = TempDir::new("train");
    let tr = new_run(dir.path(), Quant::None);
    let m = &tr.model;
    let (x, y) = data::train_batch(&tr.train, 1, 0, 2, 8);
    let ids = tern_train::transformer::ids_tensor(&x, 2, 8).unwrap();
    let loss_of = |m: &Model| -> f64 {
        let l = m.forward(&ids, ProjMode::Dense).unwrap();
        tern_train::transformer::cross_entropy(&l, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let loss =
        tern_train::transformer::cross_entropy(&m.forward(&ids, ProjMode::Dense).unwrap(), &y)
            .unwrap();
    let grads = loss.backward().unwrap();
    let mut rng = Rng::new(5);
    let mut checked = 0;
    for (pi, (name, var)) in m.params.iter().enumerate() {
        if pi % 3 != 0 {
            continue;
        }
        let g = vals(grads.get(var.as_tensor()).unwrap());
        let orig = vals(var.as_tensor());
        let i = rng.below(orig.len() as u64) as usize;
        let h = 1e-2f32;
        let mut plus = orig.clone();
        plus[i] += h;
        var.set(&t(plus, var.dims())).unwrap();
        let lp = loss_of(m);
        let mut minus = orig.clone();
        minus[i] -= h;
        var.set(&t(minus, var.dims())).unwrap();
        let lm = loss_of(m);
        var.set(&t(orig, var.dims())).unwrap();
        let fd = (lp - lm) / (2.0 * h as f64);
        let tol = 2e-3 + 0.05 * fd.abs().max(g[i].abs() as f64);
        assert!(
            (fd - g[i] as f64).abs() <= tol,
            "{name}[{i}]: autograd {} vs finite difference {fd}",
            g[i]
        );
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn loss_decreases_on_a_fixed_batch() {
    let dir = TempDir::new("train");
    for quant in [Quant::B158, Quant::None] {
        let mut tr = new_run(&dir.path().join(format!("{quant:?}")), quant);
        tr.config.train.schedule = tern_train::recipe::Schedule::Constant;
        tr.config.train.lr = 3e-3;
        tr.config.train.warmup_steps = 0;
        let (x, y) = data::train_batch(&tr.train, 9, 0, 4, 16);
        let ids = tern_train::transformer::ids_tensor(&x, 4, 16).unwrap();
        let mut opt = tern_train::optim::AdamW::new(&tr.model.params, 0.9, 0.95, 1e-8).unwrap();
        let decay = vec![false; tr.model.params.len()];
        let mut losses = Vec::new();
        for _ in 0..40 {
            let l = tern_train::transformer::cross_entropy(
                &tr.model.forward(&ids, quant.into()).unwrap(),
                &y,
            )
            .unwrap();
            losses.push(l.to_scalar::<f32>().unwrap());
            let g = l.backward().unwrap();
            opt.step(&tr.model.params, &g, 3e-3, 0.0, &decay, 1.0)
                .unwrap();
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < first * 0.7, "{quant:?}: loss {first} -> {last}");
    }
}

fn param_bits(tr: &Trainer) -> Vec<(String, Vec<u32>)> {
    tr.model
        .params
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                vals(v.as_tensor()).iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect()
}

#[test]
fn resume_is_bit_exact() {
    let dir = TempDir::new("train");
    let stop = AtomicBool::new(false);
    let mut whole = new_run(&dir.path().join("a"), Quant::B158);
    whole.run(&stop, &mut Silent).unwrap();

    // Interrupted after step 3 the way SIGINT does it: the flag is raised mid-run.
    struct StopAt<'a>(&'a AtomicBool, u64);
    impl tern_train::trainer::Observer for StopAt<'_> {
        fn step(&mut self, info: &tern_train::trainer::StepInfo, _total: u64) {
            if info.step == self.1 {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let interrupt = AtomicBool::new(false);
    let mut part = new_run(&dir.path().join("b"), Quant::B158);
    part.run(&interrupt, &mut StopAt(&interrupt, 3)).unwrap();
    assert_eq!(part.step, 3);
    drop(part);
    let mut resumed = Trainer::resume(&dir.path().join("b/run"), None).unwrap();
    assert_eq!(resumed.step, 3);
    resumed.run(&stop, &mut Silent).unwrap();
    assert_eq!(resumed.step, 6);
    for ((name, a), (_, b)) in param_bits(&whole).iter().zip(param_bits(&resumed).iter()) {
        assert!(
            a == b,
            "{name} differs between the resumed and the uninterrupted run"
        );
    }
    // The metrics log of the resumed run reads as one run: each step logged once.
    let log = std::fs::read_to_string(dir.path().join("b/run/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn bad_checkpoints_and_configs_are_clear_errors() {
    let dir = TempDir::new("train");
    let mut tr = new_run(dir.path(), Quant::B158);
    tr.config.train.steps = 1;
    tr.run(&AtomicBool::new(false), &mut Silent).unwrap();
    let ck = RunDir(dir.path().join("run")).latest_checkpoint().unwrap();
    let bytes = std::fs::read(&ck).unwrap();

    let truncated = dir.path().join("trunc.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&truncated).err().unwrap().to_string();
    assert!(
        e.contains("trunc.safetensors") && e.contains("safetensors"),
        "{e}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let e = checkpoint::load(&garbage).err().unwrap().to_string();
    assert!(e.contains("garbage.safetensors"), "{e}");

    let e = Config::from_toml("[model]\nhiden_size = 3\n", "x.toml")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("x.toml") && e.contains("hiden_size"), "{e}");
    let e = Config::from_toml("[model]\nnum_heads = 3\n", "y.toml")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.num_heads"), "{e}");

    let shard = dir.path().join("run/data/train.tok");
    let sb = std::fs::read(&shard).unwrap();
    let cut = dir.path().join("cut.tok");
    std::fs::write(&cut, &sb[..sb.len() - 3]).unwrap();
    let e = data::Shard::open(&cut).err().unwrap().to_string();
    assert!(e.contains("cut.tok") && e.contains("truncated"), "{e}");

    let jl = dir.path().join("bad.jsonl");
    std::fs::write(&jl, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
    let e = data::read_sources(&[jl.display().to_string()], "text")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad.jsonl line 2") && e.contains("\"text\""),
        "{e}"
    );
}

/// The trainer's logits equal the engine's on the exported model. Packed export: the same
/// ternary values and scales, so the only differences are float summation order (int8 x
/// ternary dot products exact in both; norms, softmax and head in f32).
#[test]
fn export_parity_with_the_engine() {
    let dir = TempDir::new("train");
    for (quant, act, form) in [
        (Quant::B158, Act::Relu2, Form::Packed),
        (Quant::B158, Act::Silu, Form::F32),
        (Quant::None, Act::Relu2, Form::F32),
    ] {
        let sub = dir.path().join(format!("{quant:?}{act:?}{form:?}"));
        let corpus = small_corpus(&sub.join("corpus"));
        let mut c = tiny_config(quant);
        c.model.activation = act;
        c.data.train = corpus;
        c.train.steps = 4;
        let mut tr = Trainer::create(c, &sub.join("run"), &mut Silent).unwrap();
        tr.run(&AtomicBool::new(false), &mut Silent).unwrap();
        let ck = tr.run.latest_checkpoint().unwrap();
        let out = sub.join("hf");
        export_hf(&ck, &tr.run.tokenizer(), &out, form).unwrap();

        let (x, _) = data::train_batch(&tr.valid, 2, 0, 1, 16);
        let ids = tern_train::transformer::ids_tensor(&x, 1, 16).unwrap();
        let want = vals(&tr.model.forward(&ids, tr.mode()).unwrap());

        let loaded = tern_model::load::open(&out, &Default::default()).unwrap();
        let m = loaded.model;
        let pool = tern_kernels::pool::ThreadPool::new(1);
        let mut st = tern_model::forward::State::new(&m.config, 16, 16, 1).unwrap();
        let got = m
            .forward(&x, &mut st, tern_model::forward::Logits::All, &pool)
            .unwrap()
            .to_vec();
        let rel = rel_l2(&got, &want);
        assert!(rel < 1e-4, "{quant:?} {act:?} {form:?}: relative L2 {rel}");
        let tok = loaded.tokenizer.expect("exported tokenizer loads");
        let ids = tok.encode("We the people", true).unwrap();
        assert_eq!(ids[0], 0, "BOS first, once");
        assert_ne!(ids.get(1), Some(&0));
    }
}
