//! How tern puts a file or a directory on disk so that a crash, a kill or a full disk never
//! leaves a half-written one under the final name: write a temporary next to the target (same
//! directory, hence same file system), fsync it, rename it over the target, fsync the
//! directory so the rename itself survives a power loss. Every writer in the workspace (GGUF
//! files, checkpoints, token shards, logits, exported and converted model directories, the
//! bundled model's cache) goes through here.
//!
//! The target's parent directory must exist; creating it is the caller's decision.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically and durably (see the crate docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.file().write_all(bytes)?;
    f.commit()
}

/// A file being written under a temporary name next to its target; [`AtomicFile::commit`]
/// puts it in place. Dropped without a commit (an error, a panic), the temporary is removed.
pub struct AtomicFile {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file for `target` (`.{name}.tmp.{pid}.{n}` in its directory).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let tmp = temp_sibling(target)?;
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
            file: Some(file),
        })
    }

    /// The temporary file, to write into (wrap it in a `BufWriter` for many small writes and
    /// flush that before [`AtomicFile::commit`]).
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// Fsyncs the file, renames it over the target and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("open until committed");
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.target)?;
        // Renamed: nothing left to clean up, whatever the directory sync says.
        self.tmp = PathBuf::new();
        sync_dir(parent_dir(&self.target));
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A scratch file next to `target` (same file system), opened for reading and writing and
/// already unlinked: it has no name to leave behind, and its space is freed when the handle
/// closes, whatever ends the process.
pub fn scratch_file_near(target: &Path) -> io::Result<File> {
    let path = temp_sibling(target)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(file)
}

/// A directory being filled under a temporary name next to its target; [`AtomicDir::commit`]
/// fsyncs what was written into it and renames it into place. Dropped without a commit, the
/// temporary directory and everything in it is removed.
pub struct AtomicDir {
    tmp: PathBuf,
    target: PathBuf,
}

impl AtomicDir {
    /// Creates the empty temporary directory for `target`.
    pub fn create(target: &Path) -> io::Result<AtomicDir> {
        let tmp = temp_sibling(target)?;
        fs::create_dir(&tmp)?;
        Ok(AtomicDir {
            tmp,
            target: target.to_path_buf(),
        })
    }

    /// Where to write the directory's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Fsyncs every file in the directory and the directory itself, renames it over the
    /// target (which must not exist or be an empty directory) and fsyncs the parent.
    pub fn commit(mut self) -> io::Result<()> {
        for entry in fs::read_dir(&self.tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                File::open(entry.path())?.sync_all()?;
            }
        }
        sync_dir(&self.tmp);
        if self.target.is_dir() {
            // Only an empty directory can be replaced; `remove_dir` refuses anything else.
            fs::remove_dir(&self.target)?;
        }
        fs::rename(&self.tmp, &self.target)?;
        self.tmp = PathBuf::new();
        sync_dir(parent_dir(&self.target));
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or creation in `dir` durable. Best effort: not every platform or file
/// system can fsync a directory, and by the time this runs the new name is already in place.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A fresh name next to `target`, unique within this process and across processes.
fn temp_sibling(target: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    Ok(parent_dir(target).join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_testutil::TempDir;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_and_replaces_leaving_no_temporary() {
        let s = TempDir::new("file");
        let p = s.join("a.bin");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(names(&s), ["a.bin"]);
    }

    #[test]
    fn an_uncommitted_file_leaves_the_old_one_and_no_temporary() {
        let s = TempDir::new("drop");
        let p = s.join("a.bin");
        write_atomic(&p, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.file().write_all(b"half of the new").unwrap();
            // Dropped here, as on an error or a panic mid-write.
        }
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(names(&s), ["a.bin"]);
    }

    #[test]
    fn a_missing_parent_is_an_error_not_created() {
        let s = TempDir::new("parent");
        let p = s.join("no/such/dir/a.bin");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!s.join("no").exists());
        assert!(
            write_atomic(&s, b"x").is_err(),
            "a directory is not replaced"
        );
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("x.gguf")), Path::new("."));
        assert_eq!(parent_dir(Path::new("d/x.gguf")), Path::new("d"));
    }

    #[test]
    fn atomic_dir_appears_whole_or_not_at_all() {
        let s = TempDir::new("dir");
        let out = s.join("model");
        {
            let d = AtomicDir::create(&out).unwrap();
            fs::write(d.path().join("config.json"), b"{}").unwrap();
            // Not committed.
        }
        assert!(names(&s).is_empty(), "{:?}", names(&s));
        let d = AtomicDir::create(&out).unwrap();
        fs::write(d.path().join("config.json"), b"{}").unwrap();
        fs::write(d.path().join("model.safetensors"), b"..").unwrap();
        d.commit().unwrap();
        assert_eq!(names(&s), ["model"]);
        assert_eq!(names(&out), ["config.json", "model.safetensors"]);
        // An existing empty directory is replaced; a non-empty one is not.
        let empty = s.join("empty");
        fs::create_dir(&empty).unwrap();
        let d = AtomicDir::create(&empty).unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        d.commit().unwrap();
        assert_eq!(names(&empty), ["a"]);
        let d = AtomicDir::create(&out).unwrap();
        assert!(d.commit().is_err());
        assert_eq!(names(&out), ["config.json", "model.safetensors"]);
        assert_eq!(names(&s), ["empty", "model"]);
    }
}
