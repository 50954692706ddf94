//! ggml tensor types tern reads, and how ids that mean different things in upstream llama.cpp
//! and in bitnet.cpp's fork are told apart.

/// Tensor types tern supports. The discriminant is the GGUF type id; variants keep ggml's
/// names so they match llama.cpp logs and docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 8,
    Q4_K = 12,
    Q6_K = 14,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    /// bitnet.cpp fork only; upstream 36 is a retired slot (IQ4_NL_4_4).
    I2_S = 36,
}

impl GgmlType {
    pub const ALL: [GgmlType; 10] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::I2_S,
    ];

    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name, from the codec table.
    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// Values per block and bytes per block (ggml's `blck_size` / `type_size`), from the codec
    /// table. I2_S is not a block type (its size is `n/4 + 32` for the whole tensor): it
    /// reports (4, 1) for the codes and [`GgmlType::byte_size`] adds the tail.
    pub fn block(self) -> (usize, usize) {
        let t = self.traits();
        (t.block_size, t.type_size)
    }

    /// Byte size of a tensor with `dims` (ne0 first), or an error saying why the shape does not
    /// fit the type: ggml needs every row (`ne0`) to be whole blocks; sizes must not overflow.
    pub fn byte_size(self, dims: &[usize]) -> Result<usize, String> {
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("element count of dims {dims:?} overflows"))?;
        let t = self.traits();
        let (bs, bb) = (t.block_size, t.type_size);
        if let Some(tail) = t.tensor_tail {
            // bitnet.cpp's ggml_nbytes special case for I2_S: codes for all n values, then the
            // tail; rows need not be whole blocks.
            return (n / bs)
                .checked_mul(bb)
                .and_then(|b| b.checked_add(tail))
                .ok_or_else(|| format!("byte size of dims {dims:?} overflows"));
        }
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(bs) {
            return Err(format!(
                "row length ne0 = {ne0} is not a multiple of the {} block size {bs}",
                t.name
            ));
        }
        (n / bs)
            .checked_mul(bb)
            .ok_or_else(|| format!("byte size of dims {dims:?} overflows"))
    }

    /// TQ1_0, TQ2_0 and I2_S: the types with an exact [`TernaryMatrix`] codec.
    ///
    /// [`TernaryMatrix`]: tern_kernels::TernaryMatrix
    pub fn is_ternary(self) -> bool {
        self.traits().ternary.is_some()
    }
}

/// What an id means in upstream llama.cpp (`ggml.h` / gguf-py `GGMLQuantizationType`), for
/// error messages. Removed ids keep the name they had.
pub fn upstream_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2 (removed)",
        5 => "Q4_3 (removed)",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        31 => "Q4_0_4_4 (removed)",
        32 => "Q4_0_4_8 (removed)",
        33 => "Q4_0_8_8 (removed)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36 => "IQ4_NL_4_4 (removed)",
        37 => "IQ4_NL_4_8 (removed)",
        38 => "IQ4_NL_8_8 (removed)",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        _ => return None,
    })
}

/// What an id means in bitnet.cpp's llama.cpp fork (Eddie-Wang1120/llama.cpp merge-dev
/// `ggml.h`) where it differs from upstream. TL ids are fork-version specific.
pub fn fork_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        36 => "I2_S",
        37 => "I8_S",
        38 => "TL1",
        39 => "TL2",
        _ => return None,
    })
}

/// File-level facts used to resolve ids whose meaning depends on who wrote the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeContext {
    /// `general.architecture`.
    pub arch: Option<String>,
    /// `general.file_type` (bitnet.cpp writes 40 = `LLAMA_FTYPE_MOSTLY_I2_S`).
    pub file_type: Option<u64>,
    /// `general.alignment` in effect.
    pub alignment: usize,
}

impl TypeContext {
    /// True when the metadata says bitnet.cpp's fork wrote the file: its own architectures
    /// (`bitnet-b1.58`, `bitnet-25`) or the I2_S file type. Plain `bitnet` exists in both.
    pub fn fork_likely(&self) -> bool {
        matches!(self.arch.as_deref(), Some("bitnet-b1.58" | "bitnet-25"))
            || self.file_type == Some(40)
    }

    /// Resolves type `id` of a tensor with `dims`, given `span`: the bytes from the tensor's
    /// offset to the next tensor's offset (`last` = no next tensor: to the end of the data).
    ///
    /// Id 36 is accepted as I2_S only when the span holds exactly `n/4 + 32` bytes (plus the
    /// alignment padding); upstream's retired 36 had another size, so a size mismatch is an
    /// error, not a misread. Other ids the fork and upstream disagree on (37..=39) are not
    /// supported; the error says what each side means and which the metadata suggests.
    pub fn resolve(
        &self,
        id: u32,
        dims: &[usize],
        span: usize,
        last: bool,
    ) -> Result<GgmlType, (String, String)> {
        let name_of = |id: u32| -> String {
            match (upstream_type_name(id), fork_type_name(id)) {
                (Some(u), Some(f)) => format!("{f} in the bitnet.cpp fork, {u} upstream"),
                (Some(u), None) => u.to_string(),
                (None, Some(f)) => format!("{f} in the bitnet.cpp fork"),
                (None, None) => "unknown id".to_string(),
            }
        };
        if let Some(t) = GgmlType::ALL.iter().copied().find(|t| t.id() == id) {
            if t != GgmlType::I2_S {
                return Ok(t);
            }
            let need = t
                .byte_size(dims)
                .map_err(|e| (name_of(id), format!(": {e}")))?;
            // The last tensor has no upper bound on its span, and a short span there is a
            // truncated file, which the caller's size check reports as such.
            if last || (span >= need && span - need < self.alignment.max(1)) {
                return Ok(t);
            }
            return Err((
                name_of(id),
                format!(
                    ": as I2_S it needs n/4 + 32 = {need} bytes (padded to the alignment {}) but its data span up to the next tensor is {span} bytes",
                    self.alignment
                ),
            ));
        }
        let note = if fork_type_name(id).is_some() {
            format!(
                "; the metadata (arch {:?}, file_type {:?}) suggests {}",
                self.arch.as_deref().unwrap_or("none"),
                self.file_type,
                if self.fork_likely() {
                    "the bitnet.cpp fork"
                } else {
                    "upstream llama.cpp"
                }
            )
        } else {
            String::new()
        };
        Err((name_of(id), note))
    }
}
