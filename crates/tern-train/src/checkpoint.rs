//! Checkpoints: one safetensors file holding the f32 latent weights (`param.<name>`), the
//! AdamW moments (`adam_m.<name>`, `adam_v.<name>`) and, in its metadata, the step, the
//! config and the data position. The batch of step `s` depends only on (seed, s), so step and
//! seed are the whole RNG and data state. Written atomically; the last N are kept.

use crate::data::write_file;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::recipe::Config;
use crate::transformer::param_specs;
use candle_core::{Device, Tensor, Var};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "tern-train-checkpoint/1";

pub struct Checkpoint {
    pub config: Config,
    pub vocab: usize,
    /// Optimizer steps completed.
    pub step: u64,
    pub tokens_seen: u64,
    pub params: Vec<(String, Var)>,
    pub adam_m: Vec<Tensor>,
    pub adam_v: Vec<Tensor>,
}

fn f32_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Serializes a checkpoint to `path` atomically.
pub fn save(
    path: &Path,
    config: &Config,
    vocab: usize,
    step: u64,
    tokens_seen: u64,
    params: &[(String, Var)],
    opt: &AdamW,
) -> Result<()> {
    let mut blobs: Vec<Blob> = Vec::new();
    for (i, (name, var)) in params.iter().enumerate() {
        let shape = var.dims().to_vec();
        for (prefix, t) in [
            ("param", var.as_tensor()),
            ("adam_m", &opt.m[i]),
            ("adam_v", &opt.v[i]),
        ] {
            blobs.push((
                format!("{prefix}.{name}"),
                Dtype::F32,
                shape.clone(),
                f32_bytes(t)?,
            ));
        }
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), step.to_string()),
        ("adam_t".to_string(), opt.t.to_string()),
        ("tokens_seen".to_string(), tokens_seen.to_string()),
        ("vocab_size".to_string(), vocab.to_string()),
        ("config".to_string(), config.to_toml()),
    ]);
    write_safetensors(path, &blobs, meta)
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub(crate) type Blob = (String, Dtype, Vec<usize>, Vec<u8>);

/// Serializes tensors to a safetensors file, atomically; errors name the file and tensor.
pub(crate) fn write_safetensors(
    path: &Path,
    blobs: &[Blob],
    meta: HashMap<String, String>,
) -> Result<()> {
    let err = |what: String| TrainError::Checkpoint {
        file: path.display().to_string(),
        what,
    };
    let views = blobs
        .iter()
        .map(|(n, dt, s, b)| {
            TensorView::new(*dt, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| err(format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))?;
    write_file(path, &bytes)
}

/// Reads a checkpoint, checking every tensor's presence, dtype and shape against its config.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let file = path.display().to_string();
    let err = |what: String| TrainError::Checkpoint {
        file: file.clone(),
        what,
    };
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(format!("not a readable safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| err(format!("not a readable safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| err(format!("metadata field {k} is missing")))
    };
    if get("format")? != FORMAT {
        return Err(err(format!(
            "metadata field format is {:?}, expected {FORMAT:?}",
            get("format")?
        )));
    }
    let num = |k: &str| -> Result<u64> {
        get(k)?
            .parse::<u64>()
            .map_err(|_| err(format!("metadata field {k} is not a number")))
    };
    let step = num("step")?;
    let adam_t = num("adam_t")?;
    let tokens_seen = num("tokens_seen")?;
    let vocab = num("vocab_size")? as usize;
    let config = Config::from_toml(&get("config")?, &format!("{file} (metadata field config)"))?;
    let tensor = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let view = st
            .tensor(name)
            .map_err(|_| err(format!("tensor {name} is missing")))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(err(format!(
                "tensor {name} is {:?} {:?}, expected F32 {shape:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(err(format!(
                "tensor {name} holds a non-finite value at {i}"
            )));
        }
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    };
    let mut params = Vec::new();
    let (mut adam_m, mut adam_v) = (Vec::new(), Vec::new());
    for (name, shape) in param_specs(&config, vocab) {
        params.push((
            name.clone(),
            Var::from_tensor(&tensor(&format!("param.{name}"), &shape)?)?,
        ));
        adam_m.push(tensor(&format!("adam_m.{name}"), &shape)?);
        adam_v.push(tensor(&format!("adam_v.{name}"), &shape)?);
    }
    if adam_t != step {
        return Err(err(format!(
            "metadata adam_t {adam_t} disagrees with step {step}"
        )));
    }
    Ok(Checkpoint {
        config,
        vocab,
        step,
        tokens_seen,
        params,
        adam_m,
        adam_v,
    })
}

pub fn path_for(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}.safetensors"))
}

/// Checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let step = name
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes all but the newest `keep` checkpoints (keep 0 means keep all).
pub fn prune(dir: &Path, keep: usize) {
    if keep == 0 {
        return;
    }
    let all = list(dir);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_file(p);
    }
}
