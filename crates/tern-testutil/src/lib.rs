//! What the workspace's tests share (a dev-dependency of each crate, never a dependency of
//! the code): where the fixtures are, fresh temporary directories, the two comparisons the
//! engine is judged by (relative L2 error, greedy argmax), and how a test that needs an
//! optional outside tool (gguf-py, llama.cpp's reference vocabularies) reports that it could
//! not run.
//!
//! Skipping is never silent: [`skip`] prints `SKIPPED: ...`, appends the test and the reason to
//! the file named by `TERN_SKIP_LOG` (`scripts/test.sh` lists them after the run), and under
//! `CI=true` fails the test instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crates/tern-model/tests/fixtures/<name>`: the tiny models (and their expected logits from
/// transformers) that every crate's tests use.
pub fn model_fixture(name: &str) -> PathBuf {
    repo_root()
        .join("crates/tern-model/tests/fixtures")
        .join(name)
}

/// `||a - b|| / ||b||`, summed in f64 (`b` is the reference).
pub fn rel_l2<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_l2 of slices of different lengths");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x.into() - y.into()).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| y.into().powi(2)).sum();
    (num / den).sqrt()
}

/// Index of the largest value, the first one on ties (what greedy decoding picks).
pub fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

/// A fresh empty directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `tern-test-<tag>-<pid>-<n>`: unique per process and per call, so tests running in
    /// parallel (and runs of different crates) never share one.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "tern-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// A `TempDir` is used as its path (`dir.join("m.gguf")`, `read_dir(&dir)`).
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this is a CI run (`CI=true` or `CI=1`): there, a test that cannot run fails.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports that the calling test cannot run (a missing outside tool or file, said in `why`):
/// fails under CI; otherwise prints `SKIPPED: why` and records it in `TERN_SKIP_LOG`. The test
/// then returns without checking anything.
#[track_caller]
pub fn skip(why: &str) {
    assert!(!in_ci(), "CI=true, so this test may not skip: {why}");
    eprintln!("SKIPPED: {why}");
    if let Some(log) = std::env::var_os("TERN_SKIP_LOG") {
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// A Python interpreter with gguf-py and numpy (`TERN_PYTHON`, else `python3`), or `None`
/// after [`skip`]ping: the GGUF interop tests compare tern with gguf-py 0.19.0.
#[track_caller]
pub fn gguf_py() -> Option<String> {
    let py = std::env::var("TERN_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .output()
    {
        Ok(o) if o.status.success() => Some(py),
        _ => {
            skip(&format!(
                "`{py} -c \"import gguf, numpy\"` failed; scripts/test.sh installs them \
                 (pip install gguf==0.19.0 numpy), or set TERN_PYTHON"
            ));
            None
        }
    }
}

/// llama.cpp's `models/` directory with the reference vocabularies (`TERN_VOCAB_DIR`, which
/// `scripts/test.sh` fetches), if set.
pub fn vocab_dir() -> Option<PathBuf> {
    std::env::var_os("TERN_VOCAB_DIR").map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_l2_and_argmax() {
        assert_eq!(rel_l2(&[3.0f32, 4.0], &[3.0f64, 4.0]), 0.0);
        assert!((rel_l2(&[0.0f32, 0.0], &[3.0f32, 4.0]) - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&[1.0, 5.0, 5.0, -2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn temp_dirs_are_fresh_and_removed() {
        let (a, b) = (TempDir::new("t"), TempDir::new("t"));
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
        assert!(model_fixture("bitnet_packed").join("config.json").is_file());
    }
}
