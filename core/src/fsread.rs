//! Bounded reads of small files that another node (or a submission) can write.
//!
//! `/shared/hosts` and the proxy's `--follow-file` live on a volume that every node can
//! write: a planted FIFO would block a plain read forever, `/dev/zero` or a huge file would
//! exhaust memory, and a symlink could point a reader at any file of the node. The readers
//! here open without following a final symlink and without blocking, check with `fstat` on
//! the open descriptor (no check-then-open race) that it is a regular file, and read at most
//! one byte past their limit.

use nix::fcntl::OFlag;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The most a hosts file (`/shared/hosts`, a `--follow-file`) may hold: a table for
/// thousands of nodes fits in a small fraction of this.
pub const MAX_HOSTS_FILE_BYTES: u64 = 1024 * 1024;

/// Why a small file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SmallFileError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing {path}: it is a symbolic link")]
    Symlink { path: PathBuf },
    #[error("inspecting {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing {path}: it is a {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("refusing {path}: larger than the limit of {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing {path}: not UTF-8 text ({source})")]
    NotUtf8 {
        path: PathBuf,
        #[source]
        source: std::string::FromUtf8Error,
    },
}

impl SmallFileError {
    /// Whether the file simply does not exist (the usual state before it is first written).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SmallFileError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// Whether the file exists but was refused for what it is (a symlink, not a regular
    /// file, too large, not UTF-8) rather than for an I/O failure.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            SmallFileError::Symlink { .. }
                | SmallFileError::NotRegular { .. }
                | SmallFileError::TooLarge { .. }
                | SmallFileError::NotUtf8 { .. }
        )
    }
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// The bytes of the regular file at `path`, if it holds at most `max_bytes`. A symlink, a
/// FIFO, a device or a directory is refused without blocking; a larger file is refused after
/// reading `max_bytes + 1` bytes at most.
pub fn read_small_bytes(path: &Path, max_bytes: u64) -> Result<Vec<u8>, SmallFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                SmallFileError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                SmallFileError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let meta = file.metadata().map_err(|source| SmallFileError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(SmallFileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(meta.file_type()),
        });
    }
    if meta.len() > max_bytes {
        return Err(SmallFileError::TooLarge {
            path: path.to_path_buf(),
            limit: max_bytes,
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| SmallFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    // The file may have grown between fstat and the read.
    if data.len() as u64 > max_bytes {
        return Err(SmallFileError::TooLarge {
            path: path.to_path_buf(),
            limit: max_bytes,
        });
    }
    Ok(data)
}

/// The UTF-8 text of the regular file at `path`, if it holds at most `max_bytes`; refused
/// as [`read_small_bytes`] refuses, and when the bytes are not UTF-8.
pub fn read_small_file(path: &Path, max_bytes: u64) -> Result<String, SmallFileError> {
    let bytes = read_small_bytes(path, max_bytes)?;
    String::from_utf8(bytes).map_err(|source| SmallFileError::NotUtf8 {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_normal_file_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        std::fs::write(&p, "10.0.0.1 host0 node0\n").unwrap();
        assert_eq!(read_small_file(&p, 100).unwrap(), "10.0.0.1 host0 node0\n");
        // Exactly at the limit is still fine.
        assert_eq!(read_small_file(&p, 21).unwrap().len(), 21);
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let start = Instant::now();
        let e = read_small_file(&p, MAX_HOSTS_FILE_BYTES).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "blocked on the FIFO"
        );
        assert!(
            matches!(e, SmallFileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
        assert!(e.is_refused() && !e.is_not_found());
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn dev_zero_is_refused() {
        let e = read_small_file(Path::new("/dev/zero"), MAX_HOSTS_FILE_BYTES).unwrap_err();
        assert!(
            matches!(
                e,
                SmallFileError::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = read_small_file(d.path(), 100).unwrap_err();
        assert!(
            matches!(
                e,
                SmallFileError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn an_oversized_file_is_refused_with_path_and_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        std::fs::write(&p, vec![b'x'; 101]).unwrap();
        let e = read_small_file(&p, 100).unwrap_err();
        assert!(
            matches!(e, SmallFileError::TooLarge { limit: 100, .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("100"),
            "{msg}"
        );
        // A sparse file far beyond the limit is refused without being read.
        let big = d.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(64 * MAX_HOSTS_FILE_BYTES)
            .unwrap();
        assert!(matches!(
            read_small_file(&big, MAX_HOSTS_FILE_BYTES),
            Err(SmallFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("secret");
        std::fs::write(&target, "precious").unwrap();
        let p = d.path().join("hosts");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = read_small_file(&p, 100).unwrap_err();
        assert!(matches!(e, SmallFileError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn non_utf8_is_refused_and_a_missing_file_says_so() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        std::fs::write(&p, b"10.0.0.1 \xff\xfe\n").unwrap();
        let e = read_small_file(&p, 100).unwrap_err();
        assert!(matches!(e, SmallFileError::NotUtf8 { .. }), "{e}");
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        assert_eq!(read_small_bytes(&p, 100).unwrap(), b"10.0.0.1 \xff\xfe\n");
        let e = read_small_file(&d.path().join("none"), 100).unwrap_err();
        assert!(e.is_not_found() && !e.is_refused(), "{e}");
    }
}
