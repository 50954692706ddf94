//! The model tern uses when none is given: a small BitNet b1.58 model trained by tern itself
//! on the bundled State of the Union corpus (docs/model-card.md). It is embedded in the library
//! so that `tern run`, `tern chat` and `tern serve` work on a fresh machine with nothing
//! downloaded, and written once to the cache directory because the loaders memory-map files.

use crate::error::ModelError;
use std::path::PathBuf;

pub const NAME: &str = "tern-sotu-b158";
const BYTES: &[u8] = include_bytes!("../../../models/tern-sotu-b158.gguf");

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("tern")
}

/// Path of the bundled GGUF, written (atomically) on first use. The name carries a hash of
/// the content, so a new tern with a new model never reads an old file.
pub fn path() -> Result<PathBuf, ModelError> {
    let dir = cache_dir();
    let path = dir.join(format!("{NAME}-{:016x}.gguf", fnv1a64(BYTES)));
    if path.metadata().is_ok_and(|m| m.len() == BYTES.len() as u64) {
        return Ok(path);
    }
    let io = |source| ModelError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    tern_io::write_atomic(&path, BYTES).map_err(io)?;
    Ok(path)
}
