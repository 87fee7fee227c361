//! Small file-system helpers: atomic writes with an exact mode and owner, and directory setup.
//!
//! Every file sshkeys writes, local or shared, goes through [`write_atomic`]: a temp file in
//! the same directory, created exclusively (`O_EXCL`, so a planted symlink at the temp name is
//! never followed), given its mode and owner, synced, then renamed over the target. Readers see
//! either the old or the new file, never a half-written one, and rename replaces a symlink at
//! the target rather than writing through it.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Owner of a written file, as numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A failed file-system operation, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct FsError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    pub fn new(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        FsError {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// True when `path` is a regular file (not a symlink) with exactly these bytes, mode and owner.
fn already_current(path: &Path, bytes: &[u8], mode: u32, owner: Option<Owner>) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.file_type().is_file()
        || meta.permissions().mode() & 0o7777 != mode
        || meta.len() != bytes.len() as u64
    {
        return false;
    }
    if let Some(o) = owner {
        if meta.uid() != o.uid || meta.gid() != o.gid {
            return false;
        }
    }
    std::fs::read(path).is_ok_and(|old| old == bytes)
}

/// Writes `bytes` to `path` atomically with `mode` (and `owner` when given). Returns false
/// without touching anything when the file is already exactly so.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<bool, FsError> {
    if already_current(path, bytes, mode, owner) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    // A stale temp from a crashed run of this same pid, or something planted there.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| FsError::new("creating", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| FsError::new("writing", &tmp, e))?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::new("setting mode of", &tmp, e))?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))
                .map_err(|e| FsError::new("changing owner of", &tmp, e))?;
        }
        f.sync_all().map_err(|e| FsError::new("syncing", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| FsError::new("renaming into place", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Creates `dir` (and parents) and sets its mode and owner. A symlink in its place is an error.
pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<Owner>) -> Result<(), FsError> {
    std::fs::create_dir_all(dir).map_err(|e| FsError::new("creating directory", dir, e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| FsError::new("inspecting", dir, e))?;
    if !meta.file_type().is_dir() {
        return Err(FsError::new(
            "using",
            dir,
            std::io::Error::other("not a directory (symlinks are not followed)"),
        ));
    }
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::new("setting mode of", dir, e))?;
    }
    if let Some(o) = owner {
        if meta.uid() != o.uid || meta.gid() != o.gid {
            std::os::unix::fs::lchown(dir, Some(o.uid), Some(o.gid))
                .map_err(|e| FsError::new("changing owner of", dir, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_exact_mode_and_skips_identical_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_atomic(&p, b"one\n", 0o600, None).unwrap());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(!write_atomic(&p, b"one\n", 0o600, None).unwrap());
        // A mode change alone is a change.
        assert!(write_atomic(&p, b"one\n", 0o644, None).unwrap());
        assert!(write_atomic(&p, b"two\n", 0o644, None).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
        // No temp files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("node1.pub");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        assert!(write_atomic(&p, b"key\n", 0o644, None).unwrap());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
    }

    #[test]
    fn ensure_dir_sets_mode_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        ensure_dir(&d, 0o700, None).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_dir(&link, 0o700, None).is_err());
    }
}
