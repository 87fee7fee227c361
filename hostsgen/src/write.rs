//! Writing the block to disk: /etc/hosts in place, the shared copy by temp file + rename.
//!
//! Docker bind-mounts /etc/hosts into the container, so it cannot be replaced by rename (that
//! fails with EBUSY, or would detach the file from Docker's copy); it is truncated and
//! rewritten instead. The shared copy is an ordinary file on a volume that every node reads,
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

/// Puts `block` into the hosts file at `path`, keeping every other line, and writes the file
/// in place (truncate + write) only if its content changes. Returns whether it wrote.
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
    // One write call after the truncate keeps the window in which a reader sees a short
    // file as small as the kernel allows.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(werr)?;
    f.write_all(next.as_bytes()).map_err(werr)?;
    Ok(true)
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
