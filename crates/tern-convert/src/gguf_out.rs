//! Writing a GGUF model file that upstream llama.cpp (arch `bitnet` / `llama`), bitnet.cpp
//! (`bitnet-b1.58` for I2_S) and tern's own loader read.
//!
//! How a ternary projection (values q, scale gamma) is stored:
//! - **I2_S**: the codes and gamma as the tensor's own f32 scale (exact);
//! - **TQ1_0 / TQ2_0**: every block's f16 `d` is `f16(gamma)`, so a reader that only knows the
//!   blocks dequantizes to within f16 rounding of the real weights; the rest of gamma goes into
//!   a one-value F32 tensor `blk.N.<proj>.scale` = r with `f16(gamma) * r == gamma` in f32.
//!   llama.cpp's bitnet graph multiplies the matmul output by that optional tensor and tern's
//!   loader folds it into gamma, so both get gamma exactly. When gamma is an f16 value (e.g.
//!   bf16 `weight_scale`s), r = 1 and no scale tensor is written;
//! - **F16** (asked for, or the fallback when a row length is not a multiple of 256 for TQ or
//!   of 128 for I2_S, whose bitnet.cpp kernels need whole 128-blocks per row; llama.cpp's
//!   converter falls back to F16 the same way): the fake-quantized values `q * f16(gamma)` plus the same `.scale` tensor. tern's loader
//!   recovers q and gamma exactly from them.

use crate::error::ConvertError;
use crate::{vocab, HeadType, Progress, WeightType};
use half::f16;
use std::path::Path;
use tern_gguf::{quants, GgmlType, GgufValue, GgufWriter};
use tern_kernels::TernaryMatrix;
use tern_model::gguf::keys;
use tern_model::source::{
    permute_rows, permute_tensor, FloatData, FloatTensor, ModelInfo, Proj, Source, PROJ_NAMES,
};
use tern_model::Activation;

/// llama.cpp's `llama_ftype` values for `general.file_type`.
fn file_type(ty: WeightType, ternary: bool) -> u32 {
    match (ty, ternary) {
        (_, false) | (WeightType::F16 | WeightType::BF16, _) => 1, // MOSTLY_F16
        (WeightType::TQ1_0, true) => 36,
        (WeightType::TQ2_0, true) => 37,
        (WeightType::I2S, true) => 40, // bitnet.cpp's MOSTLY_I2_S
    }
}

/// The architecture written for a model (see docs/formats.md, "Conversions").
pub fn arch_for(info: &ModelInfo, ty: WeightType) -> &'static str {
    let c = &info.config;
    if info.ternary && c.sub_norms {
        if ty == WeightType::I2S && c.activation == Activation::Relu2 {
            "bitnet-b1.58"
        } else {
            "bitnet"
        }
    } else {
        "llama"
    }
}

/// f16 block scale `d` and f32 correction `r` with `d as f32 * r == gamma` exactly.
///
/// `d` is gamma rounded *up* to f16, so r lies in (0.5, 1]: there f32 steps of r are 2^-24,
/// and `d * step` is at most one ulp of gamma (d <= the power of two above gamma), so some r
/// hits gamma exactly; the closest f32 to gamma / d and its neighbours are tried.
pub fn split_scale(gamma: f32) -> (f16, f32) {
    let mut d = f16::from_f32(gamma);
    if d.is_finite() && d.to_f32() < gamma {
        d = f16::from_bits(d.to_bits() + 1);
    }
    if !(d.is_normal() && d.is_finite() && d.to_f32() > 0.0) {
        return (f16::ONE, gamma);
    }
    let df = d.to_f32();
    let r0 = gamma / df;
    let mut r = r0;
    for _ in 0..8 {
        if df * r == gamma {
            return (d, r);
        }
        r = if df * r < gamma {
            next_up(r)
        } else {
            next_down(r)
        };
    }
    (d, r0)
}

fn next_up(x: f32) -> f32 {
    f32::from_bits(if x >= 0.0 {
        x.to_bits() + 1
    } else {
        x.to_bits() - 1
    })
}

fn next_down(x: f32) -> f32 {
    f32::from_bits(if x > 0.0 {
        x.to_bits() - 1
    } else {
        x.to_bits() + 1
    })
}

/// Notes a conversion makes (fallbacks, caveats), for the caller to print.
pub type Notes = Vec<String>;

pub fn write(
    src: &dyn Source,
    out: &Path,
    ty: WeightType,
    head: HeadType,
    progress: &Progress,
) -> Result<Notes, ConvertError> {
    let info = src.info();
    let c = &info.config;
    let arch = arch_for(info, ty);
    let mut notes = Vec::new();
    let vocab = src.vocab(&mut notes)?;
    // Tensors go to a scratch file as they are made: a conversion holds one block in memory,
    // whatever the model's size.
    let mut w = GgufWriter::new().spill_near(out)?;
    let k = |s: &str| keys::arch(arch, s);
    let u32v = |x: usize, key: &str| -> Result<GgufValue, ConvertError> {
        u32::try_from(x)
            .map(GgufValue::U32)
            .map_err(|_| ConvertError::Other(format!("{key} = {x} does not fit in u32")))
    };

    w.add_kv(keys::ARCHITECTURE, GgufValue::String(arch.into()))?;
    w.add_kv(keys::NAME, GgufValue::String(info.name.clone()))?;
    w.add_kv(keys::FILE_TYPE, GgufValue::U32(file_type(ty, info.ternary)))?;
    w.add_kv(keys::QUANTIZATION_VERSION, GgufValue::U32(2))?;
    for (key, v) in [
        (keys::VOCAB_SIZE, c.vocab_size),
        (keys::CONTEXT_LENGTH, c.max_seq_len),
        (keys::EMBEDDING_LENGTH, c.hidden_size),
        (keys::BLOCK_COUNT, c.num_layers),
        (keys::FEED_FORWARD_LENGTH, c.intermediate_size),
        (keys::HEAD_COUNT, c.num_heads),
        (keys::HEAD_COUNT_KV, c.num_kv_heads),
        (keys::ROPE_DIMENSION_COUNT, c.head_dim),
    ] {
        w.add_kv(k(key), u32v(v, &k(key))?)?;
    }
    w.add_kv(k(keys::RMS_EPS), GgufValue::F32(c.rms_norm_eps))?;
    w.add_kv(k(keys::ROPE_FREQ_BASE), GgufValue::F32(c.rope_theta))?;
    // bitnet-b1.58 implies relu2; for `bitnet` and `llama` the key says it (upstream reads
    // `<arch>.hidden_activation` where it has the fix; tern always does).
    if c.activation == Activation::Relu2 && arch != "bitnet-b1.58" {
        w.add_kv(
            k(keys::HIDDEN_ACTIVATION),
            GgufValue::String("relu2".into()),
        )?;
        if arch == "bitnet" {
            notes.push(
                "arch bitnet with bitnet.hidden_activation = relu2: llama.cpp builds without \
                 the hidden-activation fix run this model with SiLU (wrong logits)"
                    .into(),
            );
        }
    }
    if !info.ternary && ty != WeightType::F16 {
        notes.push(format!(
            "dense model (no ternary projections): projections are written as F16, not {}",
            ty.name()
        ));
    }
    if arch == "bitnet" && !c.tie_word_embeddings {
        notes.push(
            "untied LM head under arch bitnet: llama.cpp's bitnet graph uses token_embd as \
             the output matrix and ignores output.weight; tern uses output.weight"
                .into(),
        );
    }
    match &vocab {
        Some(v) => {
            if v.tokens.len() != c.vocab_size {
                return Err(ConvertError::Other(format!(
                    "the tokenizer has {} tokens but the model's vocab_size is {}",
                    v.tokens.len(),
                    c.vocab_size
                )));
            }
            vocab::write_gguf(&mut w, v)?;
        }
        None => {
            notes.push(
                "no tokenizer (no tokenizer.json / tokenizer.ggml.*): the file needs token-id \
                 prompts and llama.cpp will not load it"
                    .into(),
            );
            // The special ids are model config too (tern reads its stop tokens from them).
            let ids = [
                (keys::BOS_ID, c.bos_token_id),
                (keys::EOS_ID, c.eos_token_ids.first().copied()),
                (keys::EOT_ID, c.eos_token_ids.get(1).copied()),
            ];
            for (key, id) in ids {
                if let Some(id) = id {
                    w.add_kv(key, GgufValue::U32(id))?;
                }
            }
        }
    }

    progress.set_message("embeddings");
    let embed = src.embed()?;
    add_float(&mut w, keys::TOKEN_EMBD, &embed, head)?;
    drop(embed);
    w.add_f32(
        keys::OUTPUT_NORM,
        GgmlType::F32,
        &[c.hidden_size],
        &src.final_norm()?,
    )?;
    if let Some(h) = src.head()? {
        add_float(&mut w, keys::OUTPUT, &h, head)?;
    }
    progress.inc(1);

    let permute = arch == "llama";
    let mut fallbacks = 0usize;
    for i in 0..c.num_layers {
        progress.set_message(format!("block {i}"));
        let l = src.layer(i)?;
        let p = |s: &str| format!("blk.{i}.{s}");
        w.add_f32(
            p(keys::ATTN_NORM),
            GgmlType::F32,
            &[c.hidden_size],
            &l.attn_norm,
        )?;
        w.add_f32(
            p(keys::FFN_NORM),
            GgmlType::F32,
            &[c.hidden_size],
            &l.ffn_norm,
        )?;
        if let Some(n) = &l.attn_sub_norm {
            w.add_f32(p(keys::ATTN_SUB_NORM), GgmlType::F32, &[n.len()], n)?;
        }
        if let Some(n) = &l.ffn_sub_norm {
            w.add_f32(p(keys::FFN_SUB_NORM), GgmlType::F32, &[n.len()], n)?;
        }
        for (k, (proj, (_, base))) in l.projs.iter().zip(PROJ_NAMES).enumerate() {
            let heads = match (permute, k) {
                (true, 0) => c.num_heads,
                (true, 1) => c.num_kv_heads,
                _ => 0,
            };
            let base = p(base);
            match proj {
                Proj::Dense(t) => {
                    let t = if heads > 0 {
                        permute_tensor(t, heads, true)?
                    } else {
                        t.clone()
                    };
                    let v = t.to_f16()?;
                    w.add_tensor(
                        format!("{base}.weight"),
                        GgmlType::F16,
                        &[t.cols, t.rows],
                        f16_bytes(&v),
                    )?;
                }
                Proj::Ternary(m) => {
                    let permuted;
                    let m = if heads > 0 {
                        permuted = TernaryMatrix {
                            values: permute_rows(&m.values, m.rows, m.cols, heads),
                            ..m.clone()
                        };
                        &permuted
                    } else {
                        m
                    };
                    if add_ternary(&mut w, &base, m, ty, arch)? {
                        fallbacks += 1;
                    }
                }
            }
        }
        progress.inc(1);
    }
    if fallbacks > 0 {
        notes.push(format!(
            "{fallbacks} projection(s) stored as F16 (q * scale): their shape does not fit \
             {} blocks (TQ1_0/TQ2_0 need rows of a multiple of 256 values, I2_S of 128)",
            ty.name()
        ));
    }
    progress.set_message("writing");
    w.write(out)?;
    progress.inc(1);
    Ok(notes)
}

fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The embedding table or LM head as `head` says.
fn add_float(
    w: &mut GgufWriter,
    name: &str,
    t: &FloatTensor,
    head: HeadType,
) -> Result<(), ConvertError> {
    let dims = [t.cols, t.rows];
    match (head, &t.data) {
        (HeadType::Auto, FloatData::F32(v)) | (HeadType::F32, FloatData::F32(v)) => {
            w.add_f32(name, GgmlType::F32, &dims, v)?
        }
        (HeadType::Auto, FloatData::Gguf { ty, bytes }) => {
            w.add_tensor(name, *ty, &dims, bytes.clone())?
        }
        (HeadType::Auto | HeadType::F16, _) => {
            w.add_tensor(name, GgmlType::F16, &dims, f16_bytes(&t.to_f16()?))?
        }
        (HeadType::F32, _) => w.add_f32(name, GgmlType::F32, &dims, &t.to_f32()?)?,
        (HeadType::Q8_0 | HeadType::Q6K, _) => {
            let ty = if head == HeadType::Q8_0 {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6_K
            };
            let block = ty.traits().block_size;
            if !t.cols.is_multiple_of(block) {
                return Err(ConvertError::tensor(
                    name,
                    format!(
                        "{} needs rows of a multiple of {block} values, this one has {}",
                        ty.name(),
                        t.cols
                    ),
                ));
            }
            let bytes =
                quants::quantize(ty, &t.to_f32()?).map_err(|e| ConvertError::tensor(name, e))?;
            w.add_tensor(name, ty, &dims, bytes)?
        }
    }
    Ok(())
}

/// Adds `<base>.weight` (and `<base>.scale` when needed). Returns whether it fell back to F16.
fn add_ternary(
    w: &mut GgufWriter,
    base: &str,
    m: &TernaryMatrix,
    ty: WeightType,
    arch: &str,
) -> Result<bool, ConvertError> {
    let name = format!("{base}.weight");
    if !(m.gamma.is_finite() && m.gamma >= 0.0) {
        return Err(ConvertError::tensor(
            &name,
            format!("scale {} is not a finite non-negative number", m.gamma),
        ));
    }
    let fits = match ty {
        WeightType::TQ1_0 | WeightType::TQ2_0 => m.cols.is_multiple_of(256),
        // bitnet.cpp's I2_S kernels walk each row in blocks of 128: a row length that is not a
        // multiple of 128 gives garbage there (measured), though the bytes would be valid.
        WeightType::I2S => m.cols.is_multiple_of(128),
        WeightType::F16 | WeightType::BF16 => true,
    };
    let fallback = !fits;
    if ty == WeightType::I2S && fits {
        w.add_ternary(name, GgmlType::I2_S, m)?;
        return Ok(false);
    }
    if fallback && arch == "llama" {
        return Err(ConvertError::tensor(
            &name,
            format!(
                "{}x{} does not fit {} blocks, and arch llama (a ternary model without \
                 sub-norms) cannot hold F16 ternary weights with a scale; use --type {}",
                m.rows,
                m.cols,
                ty.name(),
                if ty == WeightType::I2S {
                    "tq2_0"
                } else {
                    "i2_s"
                }
            ),
        ));
    }
    let (d, r) = split_scale(m.gamma);
    let scaled = TernaryMatrix {
        gamma: d.to_f32(),
        ..m.clone()
    };
    match (ty, fallback) {
        (WeightType::TQ1_0, false) => w.add_ternary(name, GgmlType::TQ1_0, &scaled)?,
        (WeightType::TQ2_0, false) => w.add_ternary(name, GgmlType::TQ2_0, &scaled)?,
        _ => {
            let v: Vec<f16> = m
                .values
                .iter()
                .map(|&q| match q {
                    0 => f16::ZERO,
                    1 => d,
                    _ => -d,
                })
                .collect();
            w.add_tensor(name, GgmlType::F16, &[m.cols, m.rows], f16_bytes(&v))?;
        }
    }
    if r != 1.0 {
        w.add_f32(format!("{base}.scale"), GgmlType::F32, &[1], &[r])?;
    }
    Ok(fallback)
}

#[cfg(test)]
mod tests {
    use super::split_scale;

    #[test]
    fn split_scale_is_exact() {
        let mut x = 0x1234_5678u32;
        let mut misses = 0;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let g = f32::from_bits(0x3000_0000 + x % 0x1000_0000);
            let (d, r) = split_scale(g);
            if d.to_f32() * r != g {
                misses += 1;
            }
        }
        assert_eq!(misses, 0, "of 100000");
    }
}
