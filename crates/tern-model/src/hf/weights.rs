//! Memory-mapped safetensors files (one `model.safetensors` or the shards of
//! `model.safetensors.index.json`) and checked conversions of their tensors.
//!
//! Nothing here panics on a bad file: headers are validated by the `safetensors` crate
//! (offsets contiguous, sizes equal to shape x dtype, data ending exactly at the end of the
//! file), and every tensor is checked for dtype, shape and finite values before use.

use super::config_json::read_json;
use super::{WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::error::ModelError;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensorError};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Component, Path};

/// One mapped safetensors file with its parsed header.
struct Shard {
    path: String,
    map: Mmap,
    /// Offset of the tensor data (8-byte length prefix + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of a model directory, looked up by name.
pub struct Weights {
    shards: Vec<Shard>,
    /// Sharded checkpoints: the index file and its `weight_map` (tensor -> shard number).
    index: Option<(String, HashMap<String, usize>)>,
}

/// A tensor borrowed from a mapped file, with the names its errors need.
pub struct Tensor<'a> {
    pub name: &'a str,
    pub file: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl Weights {
    /// Maps `model.safetensors`, or else every shard named by `model.safetensors.index.json`
    /// (the order transformers tries them in).
    pub fn open(dir: &Path) -> Result<Weights, ModelError> {
        let single = dir.join(WEIGHTS_FILE);
        if single.is_file() {
            return Ok(Weights {
                shards: vec![Shard::open(&single)?],
                index: None,
            });
        }
        let index_path = dir.join(WEIGHTS_INDEX_FILE);
        if !index_path.is_file() {
            let bin = dir.join("pytorch_model.bin").is_file()
                || dir.join("pytorch_model.bin.index.json").is_file();
            return Err(ModelError::Config {
                file: dir.display().to_string(),
                what: format!(
                    "no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}{}",
                    if bin {
                        " (PyTorch .bin checkpoints are not supported; convert them to \
                         safetensors)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let index_file = index_path.display().to_string();
        let json = read_json(&index_path)?;
        let bad = |what: String| ModelError::Config {
            file: index_file.clone(),
            what,
        };
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("field weight_map: missing or not an object".into()))?;
        // Shards in name order, each mapped once however many tensors it holds.
        let mut shard_names: BTreeMap<&str, usize> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                bad(format!(
                    "field weight_map.{tensor}: expected a file name, got {shard}"
                ))
            })?;
            // Shards live next to the index; a path elsewhere is a corrupt or hostile index.
            let mut parts = Path::new(shard).components();
            if !matches!(
                (parts.next(), parts.next()),
                (Some(Component::Normal(_)), None)
            ) {
                return Err(bad(format!(
                    "field weight_map.{tensor}: {shard:?} is not a plain file name"
                )));
            }
            shard_names.insert(shard, 0);
        }
        let mut shards = Vec::with_capacity(shard_names.len());
        for (name, number) in shard_names.iter_mut() {
            *number = shards.len();
            shards.push(Shard::open(&dir.join(name))?);
        }
        let weight_map = map
            .iter()
            .map(|(tensor, shard)| {
                let shard = shard.as_str().unwrap_or_default();
                (tensor.clone(), shard_names[shard])
            })
            .collect();
        Ok(Weights {
            shards,
            index: Some((index_file, weight_map)),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.index {
            Some((_, map)) => map.contains_key(name),
            None => self.shards[0].metadata.info(name).is_some(),
        }
    }

    /// The tensor `name`, or an error naming the file that should have held it.
    pub fn get<'a>(&'a self, name: &'a str) -> Result<Tensor<'a>, ModelError> {
        let shard = match &self.index {
            Some((index_file, map)) => match map.get(name) {
                Some(&n) => &self.shards[n],
                None => {
                    return Err(ModelError::Tensor {
                        file: index_file.clone(),
                        tensor: name.to_string(),
                        what: "missing (not in weight_map)".into(),
                    })
                }
            },
            None => &self.shards[0],
        };
        let err = |what: String| ModelError::Tensor {
            file: shard.path.clone(),
            tensor: name.to_string(),
            what,
        };
        let info = shard.metadata.info(name).ok_or_else(|| {
            err(if self.index.is_some() {
                "missing (weight_map lists it in this file)".into()
            } else {
                "missing".into()
            })
        })?;
        let (start, end) = info.data_offsets;
        // read_metadata checked these against the file length; `get` keeps it panic-free.
        let data = shard
            .map
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| err(format!("data offsets {start}..{end} are outside the file")))?;
        Ok(Tensor {
            name,
            file: &shard.path,
            dtype: info.dtype,
            shape: &info.shape,
            data,
        })
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Shard, ModelError> {
        let display = path.display().to_string();
        let io = |source| ModelError::Io {
            path: display.clone(),
            source,
        };
        let bad = |what: String| ModelError::Config {
            file: display.clone(),
            what,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(bad(format!(
                "truncated: {len} bytes, too short for a safetensors header"
            )));
        }
        // SAFETY: the map is only read, and only during `load_model`: every weight is copied
        // or converted into owned buffers before the map is dropped. Like every mmap-based
        // loader (safetensors, candle, llama.cpp), this assumes the file is not truncated or
        // rewritten by another process while the model loads; if it were, reads could see
        // changed bytes or fault (SIGBUS). Model files are written once and then only read.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| match e {
            SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidHeaderLength => {
                bad(size_mismatch(&map))
            }
            e => bad(format!("not a valid safetensors file: {e}")),
        })?;
        Ok(Shard {
            path: display,
            map,
            data_start: 8 + header_len,
            metadata,
        })
    }
}

/// Explains a file whose length disagrees with its header (cut short by an interrupted
/// download, or with bytes appended).
fn size_mismatch(buf: &[u8]) -> String {
    let len = buf.len();
    let header_len = u64::from_le_bytes(buf[..8].try_into().expect("checked len >= 8"));
    let Some(header) = usize::try_from(header_len)
        .ok()
        .and_then(|n| buf.get(8..8usize.checked_add(n)?))
    else {
        return format!(
            "truncated: the header is {header_len} bytes long but the file has only {len} bytes"
        );
    };
    let data_len = serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|h| {
            h.as_object()?
                .iter()
                .filter(|(k, _)| *k != "__metadata__")
                .map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
                .try_fold(0u64, |m, end| Some(m.max(end?)))
        });
    match data_len {
        Some(data_len) => {
            let expected = (8 + header_len).saturating_add(data_len);
            if (len as u64) < expected {
                format!(
                    "truncated: the header describes {expected} bytes but the file has only {len}"
                )
            } else {
                format!(
                    "the header describes {expected} bytes but the file has {len} (trailing data)"
                )
            }
        }
        None => format!("tensor data does not match the header ({len} bytes in the file)"),
    }
}

impl Tensor<'_> {
    pub fn err(&self, what: impl Into<String>) -> ModelError {
        ModelError::Tensor {
            file: self.file.to_string(),
            tensor: self.name.to_string(),
            what: what.into(),
        }
    }

    pub fn expect_shape(&self, shape: &[usize], why: &str) -> Result<(), ModelError> {
        if self.shape == shape {
            Ok(())
        } else {
            Err(self.err(format!(
                "shape {:?}, expected {shape:?} ({why})",
                self.shape
            )))
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        )
    }

    /// Whether the values need f32 to be kept exactly (f32 and f64 files).
    pub fn is_f32_or_wider(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::F64)
    }

    fn expect_float(&self) -> Result<(), ModelError> {
        if self.is_float() {
            Ok(())
        } else {
            Err(self.err(format!(
                "dtype {:?}, expected a float type (F32, F16, BF16)",
                self.dtype
            )))
        }
    }

    /// Decodes every element to f32 (exact for f16 and bf16) and maps it through `conv`, one
    /// pass and no f32 copy of the tensor (the 2B4T embedding alone is 328M values).
    fn convert<T>(&self, conv: impl Fn(f32) -> T) -> Result<Vec<T>, ModelError> {
        self.expect_float()?;
        let d = self.data;
        Ok(match self.dtype {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| conv(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| conv(f16::from_le_bytes([b[0], b[1]]).to_f32()))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| conv(bf16::from_le_bytes([b[0], b[1]]).to_f32()))
                .collect(),
            _ => d
                .chunks_exact(8)
                .map(|b| conv(f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32))
                .collect(),
        })
    }

    /// The values as f32, rejecting NaN and infinities: a checkpoint with them is corrupt, and
    /// they would silently poison absmean scales and logits.
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let values = self.convert(|x| x)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.err(format!("non-finite value {} at element {i}", values[i])));
        }
        Ok(values)
    }

    /// The values as f16 (rounded to nearest from bf16 and f32). A value outside f16's range
    /// (|x| > 65504, possible in bf16 and f32) is an error rather than an infinity.
    pub fn to_f16(&self) -> Result<Vec<f16>, ModelError> {
        let values = self.convert(f16::from_f32)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let source = self.convert(|x| x)?[i];
            return Err(self.err(if source.is_finite() {
                format!("value {source} at element {i} overflows f16 (|x| > 65504)")
            } else {
                format!("non-finite value {source} at element {i}")
            }));
        }
        Ok(values)
    }

    /// A one-element float tensor (`weight_scale`: shape `[1]`, or `[]` as a scalar).
    pub fn scalar(&self) -> Result<f32, ModelError> {
        if self.shape.iter().product::<usize>() != 1 || self.shape.len() > 1 {
            return Err(self.err(format!(
                "shape {:?}, expected [1] (one scale per tensor)",
                self.shape
            )));
        }
        Ok(self.to_f32()?[0])
    }
}
