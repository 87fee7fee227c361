//! Reading a folder of published keys (`users/` or `hosts/`) without trusting it.
//!
//! Symlinks are refused from `lstat` and the open uses `O_NOFOLLOW`, so a link swapped in
//! between the two checks fails the open instead of being followed; `O_NONBLOCK` keeps a FIFO
//! swapped in from blocking the reader; the size is checked on the open file and the read is
//! capped, so a file that grows meanwhile is still bounded. Names starting with a dot are
//! skipped silently: they are the temp files of a publish in progress.

use crate::pubkey::{self, Refusal, MAX_FILE_BYTES};
use russh::keys::PublicKey;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One accepted key, under the node name its file stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub name: String,
    pub key: PublicKey,
}

/// One refused directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub file: PathBuf,
    pub reason: Refusal,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.file.display(), self.reason)
    }
}

/// What a folder holds: accepted keys sorted by name, and the refused entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    pub keys: Vec<Published>,
    pub refused: Vec<Refused>,
}

impl Scan {
    /// Keeps only the keys of `peers`; every other well-formed key is moved to the refused
    /// entries as [`Refusal::NotAPeer`]. A file that is refused for what it holds keeps that
    /// reason: only keys that would otherwise be trusted are judged by their name.
    pub fn keep_peers(mut self, peers: &[clusterlab_core::schema::Peer], dir: &Path) -> Scan {
        let (keep, strangers): (Vec<_>, Vec<_>) = std::mem::take(&mut self.keys)
            .into_iter()
            .partition(|p| peers.iter().any(|peer| peer.name == p.name));
        self.keys = keep;
        self.refused.extend(strangers.into_iter().map(|p| Refused {
            file: dir.join(format!("{}.pub", p.name)),
            reason: Refusal::NotAPeer,
        }));
        self.refused.sort_by(|a, b| a.file.cmp(&b.file));
        self
    }

    /// The accepted key published under `name`.
    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|p| p.name == name).map(|p| &p.key)
    }
}

/// Reads every entry of `dir`. A missing folder is an empty scan; an unreadable folder is an
/// error (the caller keeps its previous trust files rather than emptying them).
pub fn scan_dir(dir: &Path) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(e),
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for os_name in names {
        let path = dir.join(&os_name);
        let name = os_name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let refuse = |reason| Refused {
            file: path.clone(),
            reason,
        };
        let Some(node) = os_name.to_str().and_then(pubkey::node_name_of_file) else {
            scan.refused.push(refuse(Refusal::BadFileName));
            continue;
        };
        match read_key_file(&path) {
            Ok(key) => scan.keys.push(Published {
                name: node.to_string(),
                key,
            }),
            Err(reason) => scan.refused.push(refuse(reason)),
        }
    }
    Ok(scan)
}

/// Reads and validates one published file.
pub fn read_key_file(path: &Path) -> Result<PublicKey, Refusal> {
    let meta = std::fs::symlink_metadata(path).map_err(unreadable)?;
    check_type(&meta.file_type())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Refusal::TooLarge { bytes: meta.len() });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                Refusal::Symlink
            } else {
                unreadable(e)
            }
        })?;
    let meta = file.metadata().map_err(unreadable)?;
    check_type(&meta.file_type())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Refusal::TooLarge { bytes: meta.len() });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    pubkey::parse_key_file(&bytes)
}

fn check_type(t: &std::fs::FileType) -> Result<(), Refusal> {
    let kind = if t.is_symlink() {
        return Err(Refusal::Symlink);
    } else if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    };
    Err(Refusal::NotRegular { kind })
}

fn unreadable(e: std::io::Error) -> Refusal {
    Refusal::Unreadable {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn reason_of<'a>(scan: &'a Scan, file: &str) -> &'a Refusal {
        &scan
            .refused
            .iter()
            .find(|r| r.file.file_name().unwrap() == file)
            .unwrap_or_else(|| panic!("{file} not refused: {scan:?}"))
            .reason
    }

    #[test]
    fn hostile_entries_are_refused_and_good_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("node0.pub"), format!("{ED} admin@node0\n")).unwrap();
        std::fs::write(d.join("node2.pub"), format!("{ED}\n")).unwrap();
        std::fs::write(d.join("garbage.pub"), b"\x00\x01 not a key at all").unwrap();
        std::fs::write(d.join("cmd.pub"), format!("command=\"/bin/sh\" {ED}\n")).unwrap();
        std::fs::write(d.join("big.pub"), vec![b'A'; 1024 * 1024]).unwrap();
        std::fs::write(d.join("notes.txt"), ED).unwrap();
        std::fs::write(d.join(".node9.pub.tmp"), ED).unwrap();
        symlink("/etc/shadow", d.join("shadow.pub")).unwrap();
        symlink(d.join("node0.pub"), d.join("alias.pub")).unwrap();
        std::fs::create_dir(d.join("dir.pub")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo.pub"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let scan = scan_dir(d).unwrap();
        let names: Vec<_> = scan.keys.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node0", "node2"]);
        assert!(matches!(
            reason_of(&scan, "garbage.pub"),
            Refusal::ControlCharacters
        ));
        assert!(matches!(
            reason_of(&scan, "cmd.pub"),
            Refusal::Options { .. }
        ));
        assert_eq!(
            reason_of(&scan, "big.pub"),
            &Refusal::TooLarge { bytes: 1024 * 1024 }
        );
        assert_eq!(reason_of(&scan, "notes.txt"), &Refusal::BadFileName);
        assert_eq!(reason_of(&scan, "shadow.pub"), &Refusal::Symlink);
        assert_eq!(reason_of(&scan, "alias.pub"), &Refusal::Symlink);
        assert!(matches!(
            reason_of(&scan, "dir.pub"),
            Refusal::NotRegular { kind: "directory" }
        ));
        assert!(matches!(
            reason_of(&scan, "fifo.pub"),
            Refusal::NotRegular { kind: "FIFO" }
        ));
        assert_eq!(scan.refused.len(), 8, "{:?}", scan.refused);
        // The message names the file.
        let msg = scan.refused[0].to_string();
        assert!(msg.contains(d.to_str().unwrap()), "{msg}");
    }

    #[test]
    fn missing_folder_is_empty() {
        let scan = scan_dir(Path::new("/nonexistent/clusterlab/users")).unwrap();
        assert!(scan.keys.is_empty() && scan.refused.is_empty());
    }

    #[test]
    fn reading_a_symlink_directly_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.pub");
        std::fs::write(&target, ED).unwrap();
        let link = dir.path().join("link.pub");
        symlink(&target, &link).unwrap();
        assert_eq!(read_key_file(&link), Err(Refusal::Symlink));
        assert!(read_key_file(&target).is_ok());
    }

    #[test]
    fn keys_of_strangers_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("node0.pub"), format!("{ED}\n")).unwrap();
        std::fs::write(d.join("mallory.pub"), format!("{ED}\n")).unwrap();
        std::fs::write(d.join("evil.pub"), format!("command=\"x\" {ED}\n")).unwrap();
        let peers = clusterlab_core::schema::parse_peers("node0=10.0.0.1,node1=10.0.0.2").unwrap();
        let scan = scan_dir(d).unwrap().keep_peers(&peers, d);
        let names: Vec<_> = scan.keys.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node0"]);
        assert_eq!(reason_of(&scan, "mallory.pub"), &Refusal::NotAPeer);
        assert!(matches!(
            reason_of(&scan, "evil.pub"),
            Refusal::Options { .. }
        ));
        assert_eq!(scan.refused.len(), 2);
    }
}
