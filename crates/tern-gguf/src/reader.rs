//! GGUF reader: parses the header from a memory map and hands out zero-copy tensor slices.
//!
//! Every count, length and offset is checked against the bytes that remain before it is used
//! to allocate or slice, so a truncated or hostile file is an [`GgufError`], never a panic, a
//! huge allocation or a hang.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tern_kernels::TernaryMatrix;

use crate::error::GgufError;
use crate::types::{GgmlType, TypeContext};
use crate::value::{GgufArray, GgufValue, ValueType};
use crate::{quants, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};

/// Deepest nesting of arrays of arrays accepted: recursion is bounded so a file of nested
/// array headers cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;

enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One tensor's header entry, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: `dims[0]` (ne0) varies fastest; for a linear layer it is in_features.
    pub dims: Vec<usize>,
    /// Offset from the start of the data section (a multiple of the alignment).
    pub offset: usize,
    /// Byte size from the type's layout.
    pub size: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A tensor's bytes, borrowed from the file (zero-copy from the mmap).
#[derive(Clone, Copy, Debug)]
pub struct TensorData<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub dims: &'a [usize],
    pub bytes: &'a [u8],
    file: &'a str,
}

impl<'a> TensorData<'a> {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Row length (ne0, in_features for a weight).
    pub fn cols(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of all dims but ne0 (out_features for a weight).
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    /// The values as f32. Dense types follow ggml's dequantization exactly; ternary types
    /// decode with each block's own scale, like ggml.
    pub fn to_f32(&self) -> Result<Vec<f32>, GgufError> {
        quants::dequantize(self.ty, self.bytes, self.n_elements()).map_err(|what| {
            GgufError::Tensor {
                file: self.file.to_string(),
                tensor: self.name.to_string(),
                what,
            }
        })
    }

    /// A TQ1_0 / TQ2_0 / I2_S tensor as `rows x cols` ternary values with one scale, via the
    /// type's [`crate::TernaryCodec`] (which rejects TQ tensors whose nonzero blocks disagree
    /// on `d`).
    pub fn to_ternary(&self) -> Result<TernaryMatrix, GgufError> {
        let Some(codec) = &self.ty.traits().ternary else {
            return Err(GgufError::Tensor {
                file: self.file.to_string(),
                tensor: self.name.to_string(),
                what: format!("type {} is not a ternary type", self.ty.name()),
            });
        };
        (codec.to_ternary)(self.bytes, self.rows(), self.cols()).map_err(|source| {
            GgufError::Kernel {
                file: self.file.to_string(),
                tensor: self.name.to_string(),
                source,
            }
        })
    }
}

/// A parsed GGUF file. Metadata is owned; tensor bytes stay in the mmap.
pub struct GgufFile {
    path: PathBuf,
    file_name: String,
    backing: Backing,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, GgufValue)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    type_context: TypeContext,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let file_name = path.display().to_string();
        let io = |op: &'static str| {
            let file_name = file_name.clone();
            move |source| GgufError::Io {
                file: file_name,
                op,
                source,
            }
        };
        let f = File::open(path).map_err(io("open"))?;
        let len = f.metadata().map_err(io("stat"))?.len();
        let backing = if len == 0 {
            // Mapping an empty file fails on some platforms; parse() reports it as truncated.
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. It is undefined
            // behaviour (in practice SIGBUS or changed bytes) only if another process truncates
            // or rewrites the file while it is mapped; tern's own writer never does (it renames a
            // new file over the old path, which leaves this mapping's inode intact). That is the
            // same contract as every mmap-based model loader (llama.cpp, safetensors).
            Backing::Mmap(unsafe { Mmap::map(&f) }.map_err(io("mmap"))?)
        };
        Self::parse(path.to_path_buf(), file_name, backing)
    }

    /// Parses an in-memory file; `name` is used in error messages. For tests and fuzzing.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(PathBuf::from(name), name.to_string(), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, file_name: String, backing: Backing) -> Result<Self, GgufError> {
        let h = parse_header(backing.bytes(), &file_name)?;
        Ok(GgufFile {
            path,
            file_name,
            backing,
            version: h.version,
            alignment: h.alignment,
            data_offset: h.data_offset,
            kv_index: h
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: h.metadata,
            tensor_index: h
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: h.tensors,
            type_context: h.ctx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    pub fn type_context(&self) -> &TypeContext {
        &self.type_context
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(GgufValue::as_str)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Lets the pages of tensor `name` go from this process's memory: a hint for loaders that
    /// copied (repacked) the data, so that the file's pages do not stay resident beside the
    /// copy (the peak RSS of a load would be file + model). The file stays mapped; a later
    /// read faults the pages back in from it. Only whole pages inside the tensor are released.
    pub fn release(&self, name: &str) {
        let (Some(info), Backing::Mmap(m)) = (self.tensor_info(name), &self.backing) else {
            return;
        };
        const PAGE: usize = 4096;
        let start = (self.data_offset + info.offset).next_multiple_of(PAGE);
        let end = (self.data_offset + info.offset + info.size) / PAGE * PAGE;
        if end > start {
            // SAFETY: `m` is a read-only private mapping of a file (`Mmap::map`), never
            // written through: MADV_DONTNEED only discards its pages, and any later read
            // (through a `TensorData` borrowed before or after) faults the same file bytes
            // back in. The range lies inside the mapping (offset + size were checked against
            // the file length). Failure (e.g. another page size) just leaves the pages.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// A tensor's bytes, borrowed from the mapping.
    pub fn tensor(&self, name: &str) -> Result<TensorData<'_>, GgufError> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::NoTensor {
            file: self.file_name.clone(),
            name: name.to_string(),
        })?;
        let start = self.data_offset + info.offset;
        Ok(TensorData {
            name: &info.name,
            ty: info.ty,
            dims: &info.dims,
            // In bounds: parse_header checked offset + size against the file length.
            bytes: &self.backing.bytes()[start..start + info.size],
            file: &self.file_name,
        })
    }
}

struct Header {
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorInfo>,
    ctx: TypeContext,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn err(&self, what: String) -> GgufError {
        GgufError::Format {
            file: self.file.to_string(),
            what,
        }
    }

    /// `n` bytes, or an error naming `field` (a closure so messages cost nothing on success).
    fn take(&mut self, n: usize, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(self.err(format!(
                "truncated: {} needs {n} bytes at offset {} but only {} remain",
                field(),
                self.pos,
                self.left()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr(field)?))
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr(field)?))
    }

    /// A count that must fit in what remains at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, field: &dyn Fn() -> String) -> Result<usize, GgufError> {
        let n = self.u64(field)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|b| b <= self.left());
        if !fits {
            return Err(self.err(format!(
                "{} is {n}, but at least {min_size} bytes each would need more than the {} bytes left",
                field(),
                self.left()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.count(1, &|| format!("length of {}", field()))?;
        let pos = self.pos;
        let s = self.take(len, field)?;
        String::from_utf8(s.to_vec()).map_err(|e| {
            self.err(format!(
                "{} (at offset {pos}) is not valid UTF-8: {e}",
                field()
            ))
        })
    }

    fn value_type(&mut self, field: &dyn Fn() -> String) -> Result<ValueType, GgufError> {
        let pos = self.pos;
        let id = self.u32(field)?;
        ValueType::from_id(id).ok_or_else(|| {
            self.err(format!(
                "{} at offset {pos}: unknown value type {id} (expected 0..=12)",
                field()
            ))
        })
    }

    fn value(
        &mut self,
        t: ValueType,
        depth: usize,
        field: &dyn Fn() -> String,
    ) -> Result<GgufValue, GgufError> {
        Ok(match t {
            ValueType::U8 => GgufValue::U8(self.arr::<1>(field)?[0]),
            ValueType::I8 => GgufValue::I8(self.arr::<1>(field)?[0] as i8),
            ValueType::Bool => GgufValue::Bool(self.arr::<1>(field)?[0] != 0),
            ValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.arr(field)?)),
            ValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.arr(field)?)),
            ValueType::U32 => GgufValue::U32(self.u32(field)?),
            ValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.arr(field)?)),
            ValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.arr(field)?)),
            ValueType::U64 => GgufValue::U64(self.u64(field)?),
            ValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.arr(field)?)),
            ValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.arr(field)?)),
            ValueType::String => GgufValue::String(self.string(field)?),
            ValueType::Array => GgufValue::Array(self.array(depth, field)?),
        })
    }

    /// An array body: element type, count, elements.
    fn array(&mut self, depth: usize, field: &dyn Fn() -> String) -> Result<GgufArray, GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!(
                "{}: arrays nested more than {MAX_ARRAY_DEPTH} deep",
                field()
            )));
        }
        let et = self.value_type(&|| format!("element type of {}", field()))?;
        let n = self.count(et.min_size(), &|| format!("element count of {}", field()))?;
        macro_rules! fixed {
            ($variant:ident, $ty:ty) => {{
                let size = std::mem::size_of::<$ty>();
                let raw = self.take(n * size, field)?;
                GgufArray::$variant(
                    raw.chunks_exact(size)
                        .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match et {
            ValueType::U8 => GgufArray::U8(self.take(n, field)?.to_vec()),
            ValueType::I8 => GgufArray::I8(self.take(n, field)?.iter().map(|&b| b as i8).collect()),
            ValueType::Bool => {
                GgufArray::Bool(self.take(n, field)?.iter().map(|&b| b != 0).collect())
            }
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::String => {
                // n is bounded by bytes left / 8, so this allocation is bounded by the file size.
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&|| format!("string {i} of {}", field()))?);
                }
                GgufArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.array(depth + 1, &|| format!("array {i} of {}", field()))?);
                }
                GgufArray::Array(v)
            }
        })
    }
}

fn parse_header(b: &[u8], file: &str) -> Result<Header, GgufError> {
    let mut c = Cursor { b, pos: 0, file };
    let magic = c.arr::<4>(&|| "magic".to_string())?;
    if &magic != GGUF_MAGIC {
        return Err(c.err(format!(
            "not a GGUF file: magic is {magic:02x?}, expected \"GGUF\" (47 47 55 46)"
        )));
    }
    let version = c.u32(&|| "version".to_string())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.err(
                "GGUF version 1 is not supported (it used 32-bit counts; convert with a current llama.cpp)"
                    .to_string(),
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(c.err(format!(
                "big-endian GGUF (version {}) is not supported",
                v.swap_bytes()
            )))
        }
        v => return Err(c.err(format!("unsupported GGUF version {v} (expected 2 or 3)"))),
    }
    // Minimum encodings: a tensor info is a name length, n_dims, type and offset (24 bytes);
    // a KV is a key length and a value type plus at least one byte of value (13 bytes).
    let n_tensors = c.count(24, &|| "tensor count".to_string())?;
    let n_kv = c.count(13, &|| "metadata KV count".to_string())?;

    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv);
    let mut seen = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata KV {i}"))?;
        let field = || format!("value of metadata KV {i} ('{key}')");
        let t = c.value_type(&|| format!("type of metadata KV {i} ('{key}')"))?;
        let v = c.value(t, 0, &field)?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(c.err(format!("duplicate metadata key '{key}' (KV {i})")));
        }
        metadata.push((key, v));
    }
    let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);

    let alignment = match get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if *a != 0 && a.is_power_of_two() => *a as usize,
        Some(v) => {
            return Err(c.err(format!(
                "metadata 'general.alignment' must be a u32 power of two, found {v:?}"
            )))
        }
    };
    let ctx = TypeContext {
        arch: get("general.architecture")
            .and_then(GgufValue::as_str)
            .map(str::to_string),
        file_type: get("general.file_type").and_then(GgufValue::as_u64),
        alignment,
    };

    struct Raw {
        name: String,
        dims: Vec<usize>,
        type_id: u32,
        offset: u64,
    }
    let mut raw = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        let f = |what: &str| format!("{what} of tensor {i} ('{name}')");
        let n_dims = c.u32(&|| f("n_dims"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.err(format!(
                "{}: {n_dims} dimensions, at most {MAX_DIMS} allowed",
                f("n_dims")
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let v = c.u64(&|| f(&format!("dim {d}")))?;
            // ggml stores dims as int64; anything above i64::MAX is negative there.
            let v = usize::try_from(v)
                .ok()
                .filter(|&v| v as u64 <= i64::MAX as u64)
                .ok_or_else(|| c.err(format!("{} is {v}, too large", f(&format!("dim {d}")))))?;
            dims.push(v);
        }
        let type_id = c.u32(&|| f("type"))?;
        let offset = c.u64(&|| f("data offset"))?;
        if names.insert(name.clone(), i).is_some() {
            return Err(c.err(format!("duplicate tensor name '{name}' (tensor {i})")));
        }
        raw.push(Raw {
            name,
            dims,
            type_id,
            offset,
        });
    }

    // The data section starts at the next multiple of the alignment after the header.
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    let data_len = b.len().saturating_sub(data_offset);
    if n_tensors > 0 && data_offset > b.len() {
        return Err(c.err(format!(
            "truncated: data section should start at offset {data_offset} but the file is {} bytes",
            b.len()
        )));
    }

    // Spans: from each tensor's offset to the next higher offset (or the end of the data),
    // needed to resolve type 36 by size before the sizes are known.
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by_key(|&i| raw[i].offset);
    let mut span = vec![(0usize, true); raw.len()];
    for (k, &i) in order.iter().enumerate() {
        let r = &raw[i];
        if !r.offset.is_multiple_of(alignment as u64) {
            return Err(c.err(format!(
                "tensor '{}': data offset {} is not a multiple of the alignment {alignment}",
                r.name, r.offset
            )));
        }
        if r.offset > data_len as u64 {
            return Err(c.err(format!(
                "tensor '{}': data offset {} is past the end of the {data_len}-byte data section",
                r.name, r.offset
            )));
        }
        let end = order.get(k + 1).map_or(data_len as u64, |&j| raw[j].offset);
        span[i] = ((end - r.offset) as usize, k + 1 == order.len());
    }

    let mut tensors = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let (sp, last) = span[i];
        let ty = ctx
            .resolve(r.type_id, &r.dims, sp, last)
            .map_err(|(name, note)| GgufError::UnsupportedType {
                file: file.to_string(),
                id: r.type_id,
                name,
                tensor: r.name.clone(),
                note,
            })?;
        let size = ty.byte_size(&r.dims).map_err(|e| {
            c.err(format!(
                "tensor '{}' ({} {:?}): {e}",
                r.name,
                ty.name(),
                r.dims
            ))
        })?;
        if size > sp {
            return Err(c.err(format!(
                "tensor '{}' ({} {:?}) needs {size} bytes at data offset {} but only {sp} bytes are available before {}",
                r.name,
                ty.name(),
                r.dims,
                r.offset,
                if last { "the end of the file".to_string() } else { "the next tensor's data".to_string() }
            )));
        }
        tensors.push(TensorInfo {
            name: r.name,
            ty,
            dims: r.dims,
            offset: r.offset as usize,
            size,
        });
    }
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        ctx,
    })
}
