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

/// Writes `block` as the whole content of `path` through a temp file in the same directory
/// and a rename, only if the content changes. `tag` makes the temp name unique per writer
/// (the node name), so two nodes that both believe they lead never share a temp file.
/// Returns whether it wrote.
pub fn write_shared(path: &Path, block: &str, tag: &str) -> Result<bool, WriteError> {
    if read_or_empty(path)? == block {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hosts".into());
    let tmp = dir.join(format!(".{file_name}.{tag}.{}.tmp", std::process::id()));
    let werr = |source| WriteError::Write {
        path: tmp.clone(),
        source,
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(werr)?;
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
    fn a_concurrent_reader_never_finds_the_file_empty_or_cut_short() {
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
                    if !text.starts_with("127.0.0.1\tlocalhost\n") || !text.ends_with('\n') {
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
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hosts"]);
    }

    #[test]
    fn errors_name_the_file() {
        let e = write_shared(Path::new("/nonexistent-dir/hosts"), B1, "n").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
    }
}
