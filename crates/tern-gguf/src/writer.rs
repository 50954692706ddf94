//! GGUF v3 writer: metadata and tensors, each tensor padded to the alignment, written
//! atomically (temp file in the target directory, fsync, rename).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use tern_io::AtomicFile;
use tern_kernels::TernaryMatrix;

use crate::error::GgufError;
use crate::types::GgmlType;
use crate::value::{GgufArray, GgufValue};
use crate::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};

/// llama.cpp's `GGML_MAX_NAME`: its loader rejects longer tensor names (63 bytes + NUL).
pub const MAX_TENSOR_NAME: usize = 63;

const WRITER: &str = "gguf writer";

struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    dims: Vec<usize>,
    /// The bytes, or nothing when the writer spills them to its scratch file.
    data: Cow<'a, [u8]>,
    len: usize,
}

/// Builds a GGUF v3 file. Tensor bytes may be borrowed (e.g. from another file's mmap during
/// conversion), so a writer holds at most the tensors the caller had to repack; a spilling
/// writer ([`GgufWriter::spill_near`]) holds none.
pub struct GgufWriter<'a> {
    alignment: usize,
    metadata: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    spill: Option<Spill>,
}

/// The data section of a spilling writer, as it will be in the file (each tensor padded to
/// the alignment), in an unlinked scratch file next to the target.
struct Spill {
    file: File,
    target: String,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

fn err(what: String) -> GgufError {
    GgufError::Format {
        file: WRITER.to_string(),
        what,
    }
}

impl<'a> GgufWriter<'a> {
    /// A writer with the default alignment (32), which is then not written as a key.
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            spill: None,
        }
    }

    /// Keeps no tensor bytes in memory: each tensor is appended to an unlinked scratch file
    /// in `target`'s directory as it is added, and [`GgufWriter::write`] copies that behind
    /// the header (in the kernel: `copy_file_range`). The header's offsets depend on every
    /// tensor, so the data cannot go straight to the file; this is how a model larger than
    /// memory (a 70B TQ2_0 file is 18 GB) is written, at the cost of its size in free disk
    /// space while writing. Call before adding tensors.
    pub fn spill_near(mut self, target: &Path) -> Result<Self, GgufError> {
        let file = target.display().to_string();
        if !self.tensors.is_empty() {
            return Err(err("spill_near must come before the first tensor".into()));
        }
        let scratch = tern_io::scratch_file_near(target).map_err(|source| GgufError::Io {
            file: file.clone(),
            op: "create scratch file",
            source,
        })?;
        self.spill = Some(Spill {
            file: scratch,
            target: file,
        });
        Ok(self)
    }

    /// A writer with a custom alignment (a power of two), recorded as `general.alignment`
    /// like gguf-py's `add_custom_alignment`.
    pub fn with_alignment(alignment: u32) -> Result<Self, GgufError> {
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(err(format!(
                "alignment {alignment} is not a non-zero power of two"
            )));
        }
        let mut w = Self::new();
        w.alignment = alignment as usize;
        if alignment as usize != DEFAULT_ALIGNMENT {
            w.push_kv("general.alignment".into(), GgufValue::U32(alignment))?;
        }
        Ok(w)
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Adds one metadata key. Keys are unique (llama.cpp rejects duplicates);
    /// `general.alignment` is set through [`GgufWriter::with_alignment`] so that the key and
    /// the actual padding cannot disagree.
    pub fn add_kv(&mut self, key: impl Into<String>, value: GgufValue) -> Result<(), GgufError> {
        let key = key.into();
        if key == "general.alignment" {
            return Err(err(
                "set general.alignment with GgufWriter::with_alignment".to_string()
            ));
        }
        self.push_kv(key, value)
    }

    fn push_kv(&mut self, key: String, value: GgufValue) -> Result<(), GgufError> {
        if !self.keys.insert(key.clone()) {
            return Err(err(format!("duplicate metadata key '{key}'")));
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Adds a tensor of type `ty` with ggml dims (ne0 first) and its raw bytes, whose length
    /// must be exactly the type's size for those dims.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[usize],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let data = data.into();
        let terr = |what: String| GgufError::Tensor {
            file: WRITER.to_string(),
            tensor: name.clone(),
            what,
        };
        if name.len() > MAX_TENSOR_NAME {
            return Err(terr(format!(
                "name is {} bytes, llama.cpp allows at most {MAX_TENSOR_NAME}",
                name.len()
            )));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(terr(format!(
                "{} dims, expected 1..={MAX_DIMS}",
                dims.len()
            )));
        }
        let need = ty.byte_size(dims).map_err(terr)?;
        if data.len() != need {
            return Err(terr(format!(
                "{} {dims:?} needs {need} bytes, got {}",
                ty.name(),
                data.len()
            )));
        }
        if !self.names.insert(name.clone()) {
            return Err(terr("duplicate tensor name".to_string()));
        }
        let len = data.len();
        let data = match &mut self.spill {
            None => data,
            Some(sp) => {
                let pad = len.div_ceil(self.alignment) * self.alignment - len;
                let io = |source| GgufError::Io {
                    file: sp.target.clone(),
                    op: "write scratch file",
                    source,
                };
                sp.file.write_all(&data).map_err(io)?;
                sp.file.write_all(&vec![0u8; pad]).map_err(io)?;
                Cow::Borrowed(&[][..])
            }
        };
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims: dims.to_vec(),
            data,
            len,
        });
        Ok(())
    }

    /// Adds f32 values stored as `ty`, quantized by the type's `from_float` in the codec table
    /// (F32, F16, BF16, Q8_0, Q6_K, and ggml's per-block TQ1_0 / TQ2_0; [`Self::add_ternary`]
    /// keeps a ternary weight's one scale exactly).
    pub fn add_f32(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[usize],
        values: &[f32],
    ) -> Result<(), GgufError> {
        let name = name.into();
        let Some(from_float) = ty.traits().from_float else {
            return Err(GgufError::Tensor {
                file: WRITER.to_string(),
                tensor: name,
                what: format!("writing f32 values as {} is not supported", ty.name()),
            });
        };
        let bytes = from_float(values).map_err(|what| GgufError::Tensor {
            file: WRITER.to_string(),
            tensor: name.clone(),
            what,
        })?;
        self.add_tensor(name, ty, dims, bytes)
    }

    /// Adds a ternary weight as TQ1_0, TQ2_0 or I2_S, with dims `[cols, rows]` (ggml order).
    pub fn add_ternary(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        m: &TernaryMatrix,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let Some(codec) = &ty.traits().ternary else {
            return Err(GgufError::Tensor {
                file: WRITER.to_string(),
                tensor: name,
                what: format!("{} is not a ternary type", ty.name()),
            });
        };
        let packed = (codec.from_ternary)(m).map_err(|source| GgufError::Kernel {
            file: WRITER.to_string(),
            tensor: name.clone(),
            source,
        })?;
        self.add_tensor(name, ty, &[m.cols, m.rows], packed)
    }

    /// Serializes to any writer (the whole file, data section included).
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.header())?;
        if let Some(sp) = &self.spill {
            let mut data = &sp.file;
            data.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut data, out)?;
            return Ok(());
        }
        let zeros = vec![0u8; self.alignment];
        for t in &self.tensors {
            out.write_all(&t.data)?;
            let pad = t.len.div_ceil(self.alignment) * self.alignment - t.len;
            out.write_all(&zeros[..pad])?;
        }
        Ok(())
    }

    /// Magic, counts, metadata and tensor infos, padded to the alignment.
    fn header(&self) -> Vec<u8> {
        let align = self.alignment;
        let mut header = Vec::new();
        header.extend_from_slice(GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut header, k);
            header.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut header, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                header.extend_from_slice(&(d as u64).to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += t.len.div_ceil(align) * align;
        }
        header.resize(header.len().div_ceil(align) * align, 0);
        header
    }

    /// The whole file in memory (tests, small files).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Writes `path` atomically with [`tern_io::AtomicFile`]: a temp file next to it is
    /// written, fsynced and renamed over `path` (then the directory is fsynced), so a crash or
    /// kill never leaves a half-written model under the final name. On error the temp file is
    /// removed.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let io = |op: &'static str| {
            let file = file.clone();
            move |source| GgufError::Io { file, op, source }
        };
        let mut tmp = AtomicFile::create(path).map_err(io("create temp file"))?;
        match &self.spill {
            None => {
                let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
                self.write_to(&mut w).map_err(io("write"))?;
                w.flush().map_err(io("write"))?;
            }
            Some(sp) => {
                tmp.file().write_all(&self.header()).map_err(io("write"))?;
                let mut data = &sp.file;
                data.seek(SeekFrom::Start(0))
                    .map_err(io("read scratch file"))?;
                std::io::copy(&mut data, tmp.file()).map_err(io("copy scratch file"))?;
            }
        }
        tmp.commit().map_err(io("fsync and rename"))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|a| put_array(out, a)),
    }
}
