//! Small file-system helpers: atomic writes with an exact mode and owner, and directory setup.
//!
//! Every file sshkeys writes, local or shared, goes through [`write_atomic`]: a temp file in
//! the same directory under a fresh random name, created exclusively and never through a
//! symlink (`O_EXCL | O_NOFOLLOW`: nothing planted at a guessed name is followed, truncated or
//! reused), given its mode and owner through its descriptor, synced, then renamed over the
//! target. Readers see either the old or the new file, never a half-written one, and rename
//! replaces a symlink at the target rather than writing through it. [`ensure_dir`] changes a
//! directory's mode and owner through a descriptor opened with `O_NOFOLLOW | O_DIRECTORY`,
//! never by path after a separate check, so a link swapped in meanwhile is not followed.

use nix::fcntl::OFlag;
use std::io::{Read, Write};
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
/// Opened without following a link and without blocking on a FIFO; judged on the open file.
fn already_current(path: &Path, bytes: &[u8], mode: u32, owner: Option<Owner>) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
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
    let mut old = Vec::with_capacity(bytes.len());
    file.take(bytes.len() as u64 + 1)
        .read_to_end(&mut old)
        .is_ok_and(|_| old == bytes)
}

/// How many fresh temp names [`write_atomic`] tries: each is random, so a clash means
/// something planted files under guessed names.
const TEMP_NAME_TRIES: usize = 8;

/// Creates `.<file_name>.<random>.tmp` in `dir` exclusively, never through a symlink.
fn create_temp(
    dir: &Path,
    file_name: &str,
    mode: u32,
    mut suffix: impl FnMut() -> u64,
) -> Result<(PathBuf, std::fs::File), FsError> {
    let mut last = None;
    for _ in 0..TEMP_NAME_TRIES {
        let tmp = dir.join(format!(".{file_name}.{:016x}.tmp", suffix()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::warn!(path = %tmp.display(), "a file already exists at a fresh temp name; trying another");
                last = Some((tmp, e));
            }
            Err(e) => return Err(FsError::new("creating", &tmp, e)),
        }
    }
    let (tmp, e) = last.expect("at least one try");
    Err(FsError::new("creating", &tmp, e))
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
    write_atomic_with(
        path,
        dir,
        &file_name,
        bytes,
        mode,
        owner,
        rand::random::<u64>,
    )
}

/// [`write_atomic`] with the random part of each tried temp name drawn from `suffix`.
fn write_atomic_with(
    path: &Path,
    dir: &Path,
    file_name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
    suffix: impl FnMut() -> u64,
) -> Result<bool, FsError> {
    let (tmp, mut f) = create_temp(dir, file_name, mode, suffix)?;
    let result = (|| {
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

/// Creates `dir` (and parents) and sets its mode and owner. A symlink or anything but a
/// directory in its place is an error. The mode and owner are set through a descriptor
/// opened with `O_NOFOLLOW | O_DIRECTORY`, so they apply to the directory that was checked.
pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<Owner>) -> Result<(), FsError> {
    std::fs::create_dir_all(dir).map_err(|e| FsError::new("creating directory", dir, e))?;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY).bits())
        .open(dir)
        .map_err(|e| {
            let not_dir = matches!(
                e.raw_os_error().map(nix::errno::Errno::from_raw),
                Some(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR)
            );
            if not_dir {
                FsError::new(
                    "using",
                    dir,
                    std::io::Error::other("not a directory (symlinks are not followed)"),
                )
            } else {
                FsError::new("opening", dir, e)
            }
        })?;
    let meta = d
        .metadata()
        .map_err(|e| FsError::new("inspecting", dir, e))?;
    if meta.permissions().mode() & 0o7777 != mode {
        d.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::new("setting mode of", dir, e))?;
    }
    if let Some(o) = owner {
        if meta.uid() != o.uid || meta.gid() != o.gid {
            std::os::unix::fs::fchown(&d, Some(o.uid), Some(o.gid))
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

    #[test]
    fn a_planted_symlink_or_file_at_the_temp_name_is_never_followed_or_reused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("node1.pub");
        // The first two names tried are taken: a symlink to the victim, and a plain file.
        std::os::unix::fs::symlink(&victim, dir.path().join(".node1.pub.0000000000000001.tmp"))
            .unwrap();
        std::fs::write(
            dir.path().join(".node1.pub.0000000000000002.tmp"),
            b"planted",
        )
        .unwrap();
        let mut n = 0;
        let wrote = write_atomic_with(&p, dir.path(), "node1.pub", b"key\n", 0o644, None, || {
            n += 1;
            n
        })
        .unwrap();
        assert!(wrote);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&p).unwrap(), b"key\n");
        assert_eq!(
            std::fs::read(dir.path().join(".node1.pub.0000000000000002.tmp")).unwrap(),
            b"planted"
        );
        // Every name taken: an error naming the temp file, nothing written.
        let err = write_atomic_with(&p, dir.path(), "node1.pub", b"other\n", 0o644, None, || 1)
            .unwrap_err();
        assert!(
            err.to_string().contains(".node1.pub.0000000000000001.tmp"),
            "{err}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"key\n");
    }

    #[test]
    fn a_fifo_at_the_target_neither_blocks_nor_counts_as_current() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(write_atomic(&p, b"x\n", 0o644, None).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"x\n");
    }

    #[test]
    fn ensure_dir_changes_the_directory_itself_and_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        ensure_dir(&d, 0o755, None).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        let f = dir.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert!(ensure_dir(&f, 0o700, None).is_err());
        // A link to a directory: refused, and the directory's mode is left alone.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let err = ensure_dir(&link, 0o700, None).unwrap_err();
        assert!(
            err.to_string().contains("symlinks are not followed"),
            "{err}"
        );
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }
}
