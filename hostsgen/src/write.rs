//! Writing the block to disk: /etc/hosts in place, the shared copy by temp file + rename.
//!
//! Docker bind-mounts /etc/hosts into the container, so it cannot be replaced by rename (that
//! fails with EBUSY, or would detach the file from Docker's copy); it is rewritten in place
//! instead, never truncated first: a shorter table is written padded with a comment to the old
//! length and only then cut to size, so a reader never finds the file empty or cut short. The shared copy is an ordinary file on a volume that every node reads,
//! so it is replaced atomically and readers never see half a table.

use crate::render::replace_block;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    ReadShared(clusterlab_core::fsread::SmallFileError),
    #[error("renaming {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

fn read_or_empty(path: &Path) -> Result<String, WriteError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(WriteError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Puts `block` into the hosts file at `path`, keeping every other line, and rewrites the file
/// in place only if its content changes. Returns whether it wrote.
pub fn update_hosts_file(path: &Path, block: &str) -> Result<bool, WriteError> {
    let current = read_or_empty(path)?;
    let next = replace_block(&current, block);
    if next == current {
        return Ok(false);
    }
    let werr = |source| WriteError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(werr)?;
    let old_len = f.metadata().map_err(werr)?.len() as usize;
    // Over the old content from the start, in one write call; then off with the padding.
    f.write_all(&padded(&next, old_len)).map_err(werr)?;
    f.set_len(next.len() as u64).map_err(werr)?;
    Ok(true)
}

/// `text` made at least `len` bytes long by a trailing comment line (or an empty line), so
/// that what a reader sees while the padding is still there is a whole, valid hosts file.
fn padded(text: &str, len: usize) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    match len.saturating_sub(out.len()) {
        0 => {}
        1 => out.push(b'\n'),
        n => {
            out.push(b'#');
            out.resize(out.len() + n - 2, b' ');
            out.push(b'\n');
        }
    }
    out
}

/// How many temp names [`write_shared`] tries before giving up: each is random, so a
/// clash means something planted files under guessed names.
const TEMP_NAME_TRIES: usize = 8;

/// Creates a fresh temp file next to `path`, named `.<file>.<tag>.<random>.tmp`. The name is
/// unpredictable and the file is opened with `O_EXCL | O_NOFOLLOW`: a file or symlink
/// planted at that name is never followed, truncated or reused; a few other names are tried.
fn create_temp(path: &Path, tag: &str) -> Result<(PathBuf, std::fs::File), WriteError> {
    create_temp_named(path, tag, rand::random::<u64>)
}

/// [`create_temp`] with the random part of each tried name drawn from `suffix`.
fn create_temp_named(
    path: &Path,
    tag: &str,
    mut suffix: impl FnMut() -> u64,
) -> Result<(PathBuf, std::fs::File), WriteError> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hosts".into());
    let mut last = None;
    for _ in 0..TEMP_NAME_TRIES {
        let tmp = dir.join(format!(".{file_name}.{tag}.{:016x}.tmp", suffix()));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp);
        match opened {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::warn!(path = %tmp.display(), "a file already exists at a fresh temp name; trying another");
                last = Some((tmp, e));
            }
            Err(source) => return Err(WriteError::Write { path: tmp, source }),
        }
    }
    let (path, source) = last.expect("at least one try");
    Err(WriteError::Write { path, source })
}

/// Whether the shared copy at `path` holds exactly `block`. A missing file does not, and
/// neither does anything no hostsgen wrote (a symlink, FIFO, device, an oversized or
/// non-UTF-8 file): it is refused unread or read only up to the limit, and the rename
/// replaces the entry without opening it.
pub fn shared_holds(path: &Path, block: &str) -> Result<bool, WriteError> {
    use clusterlab_core::fsread::{read_small_file, MAX_HOSTS_FILE_BYTES};
    match read_small_file(path, MAX_HOSTS_FILE_BYTES) {
        Ok(text) => Ok(text == block),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) if e.is_refused() => {
            tracing::warn!(error = %e, "replacing the shared hosts file");
            Ok(false)
        }
        Err(source) => Err(WriteError::ReadShared(source)),
    }
}

/// Writes `block` as the whole content of `path` through a temp file in the same directory
/// and a rename, only if the content changes. The temp file gets a fresh random name
/// (prefixed with `tag`, the node name, to tell writers apart) and is created exclusively,
/// never through a symlink: the directory is writable by every node.
/// Returns whether it wrote.
pub fn write_shared(path: &Path, block: &str, tag: &str) -> Result<bool, WriteError> {
    if shared_holds(path, block)? {
        return Ok(false);
    }
    let (tmp, mut f) = create_temp(path, tag)?;
    let werr = |source| WriteError::Write {
        path: tmp.clone(),
        source,
    };
    let result = (|| {
        f.write_all(block.as_bytes()).map_err(werr)?;
        // Other nodes read the file as soon as the rename lands; the data must be there.
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(|source| WriteError::Rename {
            from: tmp.clone(),
            to: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in a directory (temp files left behind would show here).
    fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }
    use std::os::unix::fs::MetadataExt;

    const B1: &str = "# BEGIN clusterlab\n10.0.0.1 host0 a\n# END clusterlab\n";
    const B2: &str = "# BEGIN clusterlab\n10.0.0.2 host0 b\n# END clusterlab\n";

    #[test]
    fn hosts_file_is_rewritten_in_place_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1\tlocalhost\n").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();

        assert!(update_hosts_file(&path, B1).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("127.0.0.1\tlocalhost\n{B1}")
        );
        assert!(!update_hosts_file(&path, B1).unwrap(), "unchanged content");
        assert!(update_hosts_file(&path, B2).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("127.0.0.1\tlocalhost\n{B2}")
        );
        // Same inode: a bind mount would still point at it.
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    }

    #[test]
    fn a_shorter_table_leaves_no_padding_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let long = "# BEGIN clusterlab\n10.0.0.1 host0 a\n10.0.0.2 host1 b\n10.0.0.3 host2 c\n# END clusterlab\n";
        std::fs::write(&path, format!("127.0.0.1\tlocalhost\n{long}")).unwrap();
        assert!(update_hosts_file(&path, B1).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("127.0.0.1\tlocalhost\n{B1}")
        );
    }

    #[test]
    fn a_concurrent_reader_never_finds_the_file_empty_or_cut_before_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let long = "# BEGIN clusterlab\n10.0.0.1 host0 a\n10.0.0.2 host1 b\n10.0.0.3 host2 c\n# END clusterlab\n";
        std::fs::write(&path, "127.0.0.1\tlocalhost\n").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = std::fs::read_to_string(&path).unwrap();
                    reads += 1;
                    // What the in-place writer guarantees: the file is never empty or cut
                    // before the lines that do not change. A buffered read racing the write
                    // call itself may see a torn tail (Linux does not order a page-cache
                    // read against a concurrent write), so the tail is not checked here;
                    // the old truncate-then-write fails this at the first read ("").
                    if !text.starts_with("127.0.0.1\tlocalhost\n") {
                        return Err(format!("read {reads} saw {text:?}"));
                    }
                }
                Ok(reads)
            })
        };
        for i in 0..2000 {
            update_hosts_file(&path, if i % 2 == 0 { long } else { B1 }).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().unwrap().unwrap();
        assert!(reads > 0);
    }

    #[test]
    fn padding_keeps_the_text_whole_and_reaches_the_length() {
        let t = "127.0.0.1 localhost\n";
        assert_eq!(padded(t, 0), t.as_bytes());
        assert_eq!(padded(t, t.len()), t.as_bytes());
        assert_eq!(padded(t, t.len() + 1), format!("{t}\n").as_bytes());
        assert_eq!(padded(t, t.len() + 2), format!("{t}#\n").as_bytes());
        let p = padded(t, t.len() + 10);
        assert_eq!(p.len(), t.len() + 10);
        assert_eq!(p, format!("{t}#        \n").as_bytes());
        // Text without a final newline gets one before the padding.
        assert_eq!(padded("a b", 6), b"a b\n#\n");
    }

    #[test]
    fn shared_file_is_replaced_by_rename_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        assert!(write_shared(&path, B1, "node0").unwrap());
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert!(!write_shared(&path, B1, "node0").unwrap());
        assert!(write_shared(&path, B2, "node0").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), B2);
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(entries(dir.path()), ["hosts"]);
    }

    #[test]
    fn planted_symlinks_at_temp_names_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let path = shared.join("hosts");
        // Victims outside the shared folder, one per planted link.
        let victim_old = dir.path().join("etcd-db");
        let victim_new = dir.path().join("other");
        std::fs::write(&victim_old, "precious").unwrap();
        std::fs::write(&victim_new, "precious too").unwrap();
        // The old predictable name, and a name in the new pattern.
        let old_name = shared.join(format!(".hosts.node0.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim_old, &old_name).unwrap();
        let new_name = shared.join(format!(".hosts.node0.{:016x}.tmp", 7u64));
        std::os::unix::fs::symlink(&victim_new, &new_name).unwrap();

        assert!(write_shared(&path, B1, "node0").unwrap());
        assert!(write_shared(&path, B2, "node0").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), B2);
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&victim_old).unwrap(), "precious");
        assert_eq!(
            std::fs::read_to_string(&victim_new).unwrap(),
            "precious too"
        );
        // The planted links are still there, untouched; no temp file of ours is left.
        let mut names: Vec<_> = std::fs::read_dir(&shared)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![
            "hosts".to_string(),
            old_name.file_name().unwrap().to_string_lossy().into_owned(),
            new_name.file_name().unwrap().to_string_lossy().into_owned(),
        ];
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn temp_names_are_fresh_and_a_taken_name_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let (a, _fa) = create_temp(&path, "node0").unwrap();
        let (b, _fb) = create_temp(&path, "node0").unwrap();
        assert_ne!(a, b);
        let a_name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            a_name.starts_with(".hosts.node0.") && a_name.ends_with(".tmp"),
            "{a_name}"
        );
        // A symlink planted at the first name drawn: the next name is used, the link kept.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.path().join(format!(".hosts.node1.{:016x}.tmp", 1u64));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut draws = [1u64, 2].into_iter();
        let (c, _fc) = create_temp_named(&path, "node1", || draws.next().unwrap()).unwrap();
        assert_eq!(
            c,
            dir.path().join(format!(".hosts.node1.{:016x}.tmp", 2u64))
        );
        assert!(std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // Every name taken: an error naming the last one, nothing truncated.
        let e = create_temp_named(&path, "node1", || 1).unwrap_err();
        assert!(
            e.to_string().contains(&planted.display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory at the shared path: the rename onto it fails.
        let path = dir.path().join("hosts");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "x").unwrap();
        let e = write_shared(&path, B1, "node0").unwrap_err();
        assert!(matches!(e, WriteError::Rename { .. }), "{e}");
        assert_eq!(entries(dir.path()), ["hosts"]);
    }

    #[test]
    fn a_planted_fifo_symlink_or_huge_file_at_the_shared_path_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, B1).unwrap();
        // A symlink to a file holding the very block: still replaced, victim untouched.
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert!(write_shared(&path, B1, "node0").unwrap());
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), B1);
        // A FIFO does not block the writer.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(write_shared(&path, B2, "node0").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), B2);
        // An oversized file is replaced without being read whole.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 * 1024 * 1024)
            .unwrap();
        assert!(write_shared(&path, B1, "node0").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), B1);
    }

    #[test]
    fn errors_name_the_file() {
        let e = write_shared(Path::new("/nonexistent-dir/hosts"), B1, "n").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
    }
}
