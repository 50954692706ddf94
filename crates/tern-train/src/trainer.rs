//! The training loop and its run directory:
//!
//! ```text
//! RUN_DIR/config.toml         the configuration (as resolved)
//! RUN_DIR/tokenizer.json      trained (or copied) tokenizer
//! RUN_DIR/data/{train,valid}.tok   token shards
//! RUN_DIR/checkpoints/step-NNNNNNNN.safetensors
//! RUN_DIR/metrics.jsonl       one line per logged step / evaluation
//! ```

use crate::checkpoint;
use crate::data::{self, Shard};
use crate::error::{Result, TrainError};
use crate::optim::{grad_norm, AdamW};
use crate::recipe::Config;
use crate::schedule;
use crate::transformer::{self, cross_entropy, ids_tensor, Model, ProjMode};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.0.join("tokenizer.json")
    }
    pub fn train_shard(&self) -> PathBuf {
        self.0.join("data").join("train.tok")
    }
    pub fn valid_shard(&self) -> PathBuf {
        self.0.join("data").join("valid.tok")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    /// The newest checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        checkpoint::list(&self.checkpoints()).pop().map(|(_, p)| p)
    }
}

/// What the loop reports after each step.
#[derive(Clone, Debug)]
pub struct StepInfo {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub grad_norm: f64,
    pub tokens_seen: u64,
    pub tokens_per_s: f64,
}

#[derive(Clone, Debug)]
pub struct EvalInfo {
    pub step: u64,
    pub loss: f64,
    pub ppl: f64,
    /// Bits per UTF-8 byte of validation text (tokenizer-independent).
    pub bpb: f64,
    pub tokens: usize,
}

/// Receives progress; the CLI draws a bar, tests ignore it.
pub trait Observer {
    fn message(&mut self, _msg: &str) {}
    fn step(&mut self, _info: &StepInfo, _total: u64) {}
    fn eval(&mut self, _info: &EvalInfo) {}
}

pub struct Silent;
impl Observer for Silent {}

pub struct Trainer {
    pub config: Config,
    pub run: RunDir,
    pub model: Model,
    pub opt: AdamW,
    pub step: u64,
    pub tokens_seen: u64,
    pub train: Shard,
    pub valid: Shard,
    decay: Vec<bool>,
}

impl Trainer {
    /// A new run in `dir` (which must not hold checkpoints): tokenizer and shards are built
    /// from the configured data.
    pub fn create(config: Config, dir: &Path, obs: &mut dyn Observer) -> Result<Trainer> {
        config.validate("config")?;
        let run = RunDir(dir.to_path_buf());
        if run.latest_checkpoint().is_some() {
            return Err(TrainError::Config {
                file: run.0.display().to_string(),
                what: "this run directory already holds checkpoints: resume it with --resume \
                       or choose another directory"
                    .into(),
            });
        }
        std::fs::create_dir_all(&run.0).map_err(|e| TrainError::io(&run.0, e))?;
        data::write_file(&run.config(), config.to_toml().as_bytes())?;

        let t0 = Instant::now();
        let corpus = if config.data.train.is_empty() {
            data::bundled_sotu()?
        } else {
            let mut train = data::read_sources(&config.data.train, &config.data.text_field)?;
            let valid = if config.data.valid.is_empty() {
                let n = ((train.len() as f64) * config.data.valid_fraction).ceil() as usize;
                let n = n.clamp(1, train.len().saturating_sub(1).max(1));
                train.split_off(train.len() - n)
            } else {
                data::read_sources(&config.data.valid, &config.data.text_field)?
            };
            data::Corpus {
                train,
                valid,
                description: format!("{:?}", config.data.train),
            }
        };
        if corpus.train.is_empty() || corpus.valid.is_empty() {
            return Err(TrainError::Data(
                "need at least one training and one validation document".into(),
            ));
        }
        obs.message(&format!(
            "data: {} ({} train / {} validation documents)",
            corpus.description,
            corpus.train.len(),
            corpus.valid.len()
        ));
        let tok = match &config.tokenizer.path {
            Some(p) => tokenizers::Tokenizer::from_file(p)
                .map_err(|e| TrainError::Tokenizer(format!("{p}: {e}")))?,
            None => data::train_tokenizer(&corpus.train, config.tokenizer.vocab_size)?,
        };
        tok.save(run.tokenizer(), false)
            .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", run.tokenizer().display())))?;
        let vocab = tok.get_vocab_size(true);
        data::write_docs_shard(&tok, &corpus.train, &run.train_shard())?;
        data::write_docs_shard(&tok, &corpus.valid, &run.valid_shard())?;
        obs.message(&format!(
            "tokenizer: {vocab} entries; shards written in {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        let model = Model::init(&config, vocab)?;
        let opt = AdamW::new(
            &model.params,
            config.train.beta1,
            config.train.beta2,
            config.train.eps,
        )?;
        Trainer::assemble(config, run, model, opt, 0, 0)
    }

    /// Continues the newest checkpoint in `dir`. `steps` may extend the run.
    pub fn resume(dir: &Path, steps: Option<u64>) -> Result<Trainer> {
        let run = RunDir(dir.to_path_buf());
        let Some(path) = run.latest_checkpoint() else {
            return Err(TrainError::Config {
                file: dir.display().to_string(),
                what: "no checkpoint to resume from (checkpoints/ is empty)".into(),
            });
        };
        let ck = checkpoint::load(&path)?;
        let mut config = ck.config;
        if let Some(s) = steps {
            config.train.steps = s;
        }
        let model = Model::from_params(&config, ck.vocab, ck.params)?;
        let opt = AdamW {
            beta1: config.train.beta1,
            beta2: config.train.beta2,
            eps: config.train.eps,
            t: ck.step,
            m: ck.adam_m,
            v: ck.adam_v,
        };
        truncate_metrics(&run.metrics(), ck.step)?;
        Trainer::assemble(config, run, model, opt, ck.step, ck.tokens_seen)
    }

    fn assemble(
        config: Config,
        run: RunDir,
        model: Model,
        opt: AdamW,
        step: u64,
        tokens_seen: u64,
    ) -> Result<Trainer> {
        let train = Shard::open(&run.train_shard())?;
        let valid = Shard::open(&run.valid_shard())?;
        let t = config.train.seq_len;
        for (s, name) in [(&train, "train"), (&valid, "valid")] {
            if s.len < t + 1 {
                return Err(TrainError::Data(format!(
                    "{name} shard has {} tokens, fewer than seq_len + 1 = {}",
                    s.len,
                    t + 1
                )));
            }
            if s.vocab != model.vocab {
                return Err(TrainError::Data(format!(
                    "{name} shard vocabulary {} differs from the model's {}",
                    s.vocab, model.vocab
                )));
            }
        }
        let decay = model
            .params
            .iter()
            .map(|(n, _)| transformer::decays(n))
            .collect();
        Ok(Trainer {
            config,
            run,
            model,
            opt,
            step,
            tokens_seen,
            train,
            valid,
            decay,
        })
    }

    pub fn mode(&self) -> ProjMode {
        self.config.model.quant.into()
    }

    /// One optimizer step on the batch of the current step.
    pub fn train_step(&mut self) -> Result<StepInfo> {
        let t0 = Instant::now();
        let c = &self.config.train;
        let (b, t) = (c.batch_size, c.seq_len);
        let (x, y) = data::train_batch(&self.train, c.seed, self.step, b, t);
        let logits = self.model.forward(&ids_tensor(&x, b, t)?, self.mode())?;
        let loss = cross_entropy(&logits, &y)?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        if !loss_v.is_finite() {
            return Err(TrainError::Data(format!(
                "loss became {loss_v} at step {}; lower train.lr or raise train.warmup_steps",
                self.step
            )));
        }
        let grads = loss.backward()?;
        let gnorm = grad_norm(&self.model.params, &grads)?;
        let scale = if c.grad_clip > 0.0 && gnorm > c.grad_clip {
            c.grad_clip / gnorm
        } else {
            1.0
        };
        let (lr, wd) = schedule::at(c, self.step);
        self.opt
            .step(&self.model.params, &grads, lr, wd, &self.decay, scale)?;
        self.step += 1;
        self.tokens_seen += (b * t) as u64;
        Ok(StepInfo {
            step: self.step,
            loss: loss_v,
            lr,
            weight_decay: wd,
            grad_norm: gnorm,
            tokens_seen: self.tokens_seen,
            tokens_per_s: (b * t) as f64 / t0.elapsed().as_secs_f64(),
        })
    }

    /// Validation loss over the configured windows, with `mode` (normally the training mode;
    /// PTQ comparisons evaluate an FP model as ternary or 4-bit).
    pub fn evaluate(&self, mode: ProjMode) -> Result<EvalInfo> {
        evaluate(
            &self.model,
            &self.valid,
            mode,
            self.config.train.seq_len,
            self.config.train.batch_size,
            self.config.train.eval_windows,
            self.step,
        )
    }

    pub fn save(&self) -> Result<PathBuf> {
        let path = checkpoint::path_for(&self.run.checkpoints(), self.step);
        checkpoint::save(
            &path,
            &self.config,
            self.model.vocab,
            self.step,
            self.tokens_seen,
            &self.model.params,
            &self.opt,
        )?;
        checkpoint::prune(&self.run.checkpoints(), self.config.train.keep_checkpoints);
        Ok(path)
    }

    /// Trains to `train.steps`, evaluating, logging and checkpointing on the way. `stop`
    /// (SIGINT) ends it early after a checkpoint.
    pub fn run(&mut self, stop: &AtomicBool, obs: &mut dyn Observer) -> Result<()> {
        let total = self.config.train.steps;
        let c = self.config.train.clone();
        while self.step < total {
            let info = self.train_step()?;
            obs.step(&info, total);
            if c.log_every > 0 && (info.step % c.log_every == 0 || info.step == total) {
                append_metrics(
                    &self.run.metrics(),
                    &serde_json::json!({
                        "step": info.step, "loss": info.loss, "lr": info.lr,
                        "weight_decay": info.weight_decay, "grad_norm": info.grad_norm,
                        "tokens": info.tokens_seen, "tokens_per_s": info.tokens_per_s,
                    }),
                )?;
            }
            let done = self.step == total;
            if (c.eval_every > 0 && self.step.is_multiple_of(c.eval_every)) || done {
                let e = self.evaluate(self.mode())?;
                obs.eval(&e);
                append_metrics(
                    &self.run.metrics(),
                    &serde_json::json!({
                        "step": e.step, "val_loss": e.loss, "val_ppl": e.ppl,
                        "val_bpb": e.bpb, "tokens": self.tokens_seen,
                    }),
                )?;
            }
            let interrupted = stop.load(Ordering::Relaxed);
            if (c.save_every > 0 && self.step.is_multiple_of(c.save_every)) || done || interrupted {
                let p = self.save()?;
                obs.message(&format!("saved {}", p.display()));
            }
            if interrupted {
                obs.message("interrupted: checkpoint saved; continue with --resume");
                break;
            }
        }
        Ok(())
    }
}

/// Mean next-token loss of `model` over non-overlapping validation windows.
pub fn evaluate(
    model: &Model,
    valid: &Shard,
    mode: ProjMode,
    t: usize,
    batch: usize,
    max_windows: usize,
    step: u64,
) -> Result<EvalInfo> {
    let windows = data::valid_windows(valid, t, max_windows);
    let mut total = 0f64;
    let mut count = 0usize;
    for chunk in windows.chunks(batch.max(1)) {
        let mut x = Vec::with_capacity(chunk.len() * t);
        let mut y = Vec::with_capacity(chunk.len() * t);
        for &s in chunk {
            let w = valid.slice(s, t + 1);
            x.extend_from_slice(&w[..t]);
            y.extend_from_slice(&w[1..]);
        }
        let logits = model
            .forward(&ids_tensor(&x, chunk.len(), t)?, mode)?
            .detach();
        let n = y.len();
        let loss = cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        total += loss * n as f64;
        count += n;
    }
    let loss = total / count.max(1) as f64;
    let bytes_per_token = valid.text_bytes as f64 / valid.len.max(1) as f64;
    Ok(EvalInfo {
        step,
        loss,
        ppl: loss.exp(),
        bpb: loss / std::f64::consts::LN_2 / bytes_per_token,
        tokens: count,
    })
}

fn append_metrics(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| TrainError::io(path, e))
}

/// Drops metric lines past `step` (logged after the checkpoint a resume starts from), so the
/// resumed run's log reads as one uninterrupted run.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    data::write_file(path, kept.as_bytes())
}

/// Tokenizes other text with the run's tokenizer into a shard next to the run's own (for
/// evaluating on out-of-domain text such as LAMBADA passages).
pub fn external_shard(tr: &Trainer, sources: &[String], text_field: &str) -> Result<Shard> {
    let docs = data::read_sources(sources, text_field)?;
    if docs.is_empty() {
        return Err(TrainError::Data(format!("{sources:?}: no documents")));
    }
    let tok = tokenizers::Tokenizer::from_file(tr.run.tokenizer())
        .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", tr.run.tokenizer().display())))?;
    let path = tr.run.0.join("data").join("external-eval.tok");
    data::write_docs_shard(&tok, &docs, &path)?;
    let shard = Shard::open(&path)?;
    if shard.len < tr.config.train.seq_len + 1 {
        return Err(TrainError::Data(format!(
            "{sources:?}: {} tokens, fewer than seq_len + 1",
            shard.len
        )));
    }
    Ok(shard)
}
