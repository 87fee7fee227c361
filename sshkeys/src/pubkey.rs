//! Validation of published public key files: what a file in the shared folder must look like
//! before any node trusts it.
//!
//! The shared folder is writable by every node, so its contents are treated as hostile input.
//! A file is accepted only when its name is `<hostname label>.pub` and its text is exactly one
//! key line `<type> <base64> [comment]` of a known plain key type, whose base64 blob decodes to
//! a key of that same type. Everything else is refused with a reason that names what was wrong;
//! in particular any line with options (`command=`, `from=`, `environment=`, `restrict`, …),
//! certificates and known_hosts markers. The accepted key is re-encoded from its decoded form,
//! so nothing of the original text (comment, spacing) ever reaches authorized_keys or
//! known_hosts.

use russh::keys::ssh_key::public::KeyData;
use russh::keys::{HashAlg, PublicKey};
use std::fmt;

/// Largest file accepted, in bytes (16 KiB). An ed25519 line is under 100 bytes.
pub const MAX_FILE_BYTES: u64 = 16 * 1024;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// Plain public key types accepted in the shared folder (no certificates, no DSA).
pub const KNOWN_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Option keywords of authorized_keys that may start a line without an `=`.
const BARE_OPTIONS: &[&str] = &[
    "agent-forwarding",
    "cert-authority",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
    "port-forwarding",
    "pty",
    "restrict",
    "user-rc",
    "x11-forwarding",
    "no-touch-required",
    "verify-required",
];

/// Why a published file is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The directory entry is a symbolic link (never followed).
    Symlink,
    /// The entry is a directory, FIFO, socket or device.
    NotRegular { kind: &'static str },
    /// The file is larger than [`MAX_FILE_BYTES`].
    TooLarge { bytes: u64 },
    /// The file could not be opened or read.
    Unreadable { reason: String },
    /// The file name is not `<hostname label>.pub`.
    BadFileName,
    /// The text is not UTF-8.
    NotUtf8,
    /// The file holds no key line.
    Empty,
    /// The file holds more than one non-blank line.
    MultipleLines { lines: usize },
    /// The line contains control characters (other than the trailing newline).
    ControlCharacters,
    /// The line starts with authorized_keys options or a known_hosts marker.
    Options { found: String },
    /// The key type is not one of [`KNOWN_TYPES`].
    UnknownType { found: String },
    /// The key blob does not decode, or decodes to a different type.
    Malformed { reason: String },
    /// An RSA key below [`MIN_RSA_BITS`].
    WeakKey { bits: u32 },
    /// A well-formed key published under a name that is not one of the configured peers.
    NotAPeer,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Symlink => write!(f, "is a symbolic link"),
            Refusal::NotRegular { kind } => write!(f, "is not a regular file but a {kind}"),
            Refusal::TooLarge { bytes } => {
                write!(f, "is {bytes} bytes, over the {MAX_FILE_BYTES}-byte limit")
            }
            Refusal::Unreadable { reason } => write!(f, "cannot be read: {reason}"),
            Refusal::BadFileName => write!(f, "is not named <hostname label>.pub"),
            Refusal::NotUtf8 => write!(f, "is not UTF-8 text"),
            Refusal::Empty => write!(f, "holds no key line"),
            Refusal::MultipleLines { lines } => {
                write!(f, "holds {lines} lines; exactly one key line is allowed")
            }
            Refusal::ControlCharacters => write!(f, "contains control characters"),
            Refusal::Options { found } => {
                write!(
                    f,
                    "has options before the key ({found:?}); options are never accepted"
                )
            }
            Refusal::UnknownType { found } => write!(f, "has an unknown key type {found:?}"),
            Refusal::Malformed { reason } => write!(f, "holds a malformed key: {reason}"),
            Refusal::WeakKey { bits } => {
                write!(f, "holds a {bits}-bit RSA key, below {MIN_RSA_BITS} bits")
            }
            Refusal::NotAPeer => write!(f, "is not named after one of the configured peers"),
        }
    }
}

impl Refusal {
    /// A short stable name for the kind of refusal (sizes and texts left out), so a file that
    /// is still being written is not reported again for every new size.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Symlink => "symlink",
            Refusal::NotRegular { .. } => "not-regular",
            Refusal::TooLarge { .. } => "too-large",
            Refusal::Unreadable { .. } => "unreadable",
            Refusal::BadFileName => "bad-file-name",
            Refusal::NotUtf8 => "not-utf8",
            Refusal::Empty => "empty",
            Refusal::MultipleLines { .. } => "multiple-lines",
            Refusal::ControlCharacters => "control-characters",
            Refusal::Options { .. } => "options",
            Refusal::UnknownType { .. } => "unknown-type",
            Refusal::Malformed { .. } => "malformed",
            Refusal::WeakKey { .. } => "weak-key",
            Refusal::NotAPeer => "not-a-peer",
        }
    }
}

/// The node name a published file stands for: `node1.pub` → `node1`. `None` when the name is
/// not a valid hostname label followed by `.pub`.
pub fn node_name_of_file(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".pub")?;
    clusterlab_core::schema::is_valid_label(stem).then_some(stem)
}

/// Parses the contents of one published file into the key it holds.
pub fn parse_key_file(bytes: &[u8]) -> Result<PublicKey, Refusal> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Refusal::TooLarge {
            bytes: bytes.len() as u64,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Refusal::NotUtf8)?;
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect();
    match lines.as_slice() {
        [] => Err(Refusal::Empty),
        [line] => parse_key_line(line),
        more => Err(Refusal::MultipleLines { lines: more.len() }),
    }
}

/// Parses one key line `<type> <base64> [comment]`.
pub fn parse_key_line(line: &str) -> Result<PublicKey, Refusal> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Refusal::ControlCharacters);
    }
    let line = line.trim();
    let first = line.split([' ', '\t']).next().unwrap_or_default();
    if !KNOWN_TYPES.contains(&first) {
        return Err(if looks_like_options(first) {
            Refusal::Options {
                found: truncate(first, 40),
            }
        } else {
            Refusal::UnknownType {
                found: truncate(first, 40),
            }
        });
    }
    // ssh-key splits on single spaces; normalise tabs and runs of blanks first.
    let normalised: Vec<&str> = line.split_whitespace().collect();
    let key = PublicKey::from_openssh(&normalised.join(" ")).map_err(|e| Refusal::Malformed {
        reason: e.to_string(),
    })?;
    if key.algorithm().as_str() != first {
        return Err(Refusal::Malformed {
            reason: format!(
                "line says {first} but the key is {}",
                key.algorithm().as_str()
            ),
        });
    }
    if let KeyData::Rsa(rsa) = key.key_data() {
        if rsa.key_size() < MIN_RSA_BITS {
            return Err(Refusal::WeakKey {
                bits: rsa.key_size(),
            });
        }
    }
    Ok(PublicKey::new(key.key_data().clone(), ""))
}

fn looks_like_options(token: &str) -> bool {
    token.contains('=')
        || token.contains('"')
        || token.contains(',')
        || token.starts_with('@')
        || BARE_OPTIONS.contains(&token.to_ascii_lowercase().as_str())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The key as one OpenSSH line `<type> <base64>` followed by ` <comment>` when given.
/// The comment is a node name (a hostname label), never text from a published file.
pub fn key_line(key: &PublicKey, comment: &str) -> String {
    let mut k = PublicKey::new(key.key_data().clone(), "");
    if !comment.is_empty() {
        k.set_comment(comment);
    }
    // Encoding a decoded key cannot fail; fall back to the fingerprint to stay total.
    k.to_openssh()
        .unwrap_or_else(|_| format!("# unencodable key {}", fingerprint(key)))
}

/// SHA-256 fingerprint as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// True when both keys are the same key, whatever their comments.
pub fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBZIprfT/WZCpbcyHaYTtBegCO9t3SFNu1mWquVc+N+nJCRVBpd3q1tnyIAMb3UuSnaLVpmnfAkj+Y9Azyu/GNA=";
    const RSA1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCxWabxrUORri8lauoOlW+EpjvvHNQaO8qr+J4IHs25poiRQZIKRemu/KUgz9Hx4j/jHV/5JtZAzWGv4QXLYoTxtAELZAdTthqVl/XK/0XPaRHLsDHXi83o+Ur3/ZiCEWIyGElYrN8+ITlxUTGVUNBK1CbwBksk2Xu6eeEodDDR6Q==";
    const RSA2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQD7l+oV6sdyiPuwkz3LkZWllgGEVf8x/0iD+1hvQUQSc3WHbhVlKihxcCEo7788ap9NsyXewoS3MvtSeUuFhdqkEhZBlNVRGx6MFpCG4v5nwK2fzENIfBaKiWx+3u5xW3t4hi7Ba9LQpP8zr1NhlINre9JNGhoyBg3w0jRn2h5TCR04xHW94LKaqa6GCuOlfIvnmrriB/bySVSkDeg7+Ywo8DHGxywF7I9I11tMgUVXmNmW2RdK9VPdOdqZULg7xhRM0lBwSONebWD9QWHhk55IPoNF0q+D6ADLZtPorZol+ZQF1bLS/e+751b43um2aq8DoloNgr3il8fWjR14oPP/";

    #[test]
    fn accepts_a_plain_key_line_and_drops_the_comment() {
        let k = parse_key_file(format!("{ED} admin@node1\n").as_bytes()).unwrap();
        assert_eq!(k.algorithm().as_str(), "ssh-ed25519");
        assert_eq!(key_line(&k, ""), ED);
        assert_eq!(
            key_line(&k, "clusterlab:node1"),
            format!("{ED} clusterlab:node1")
        );
    }

    #[test]
    fn accepts_ecdsa_crlf_tabs_and_blank_lines() {
        let k = parse_key_file(format!("\n\r\n{ECDSA}\r\n\n").as_bytes()).unwrap();
        assert_eq!(k.algorithm().as_str(), "ecdsa-sha2-nistp256");
        let tabbed = ED.replace(' ', "\t  ");
        assert!(parse_key_line(&tabbed).is_ok());
    }

    #[test]
    fn refuses_every_kind_of_option_prefix() {
        for prefix in [
            "command=\"/bin/sh\"",
            "from=\"10.0.0.0/8\"",
            "environment=\"LD_PRELOAD=/x\"",
            "no-pty",
            "restrict",
            "RESTRICT",
            "no-port-forwarding,command=\"x\"",
            "@cert-authority *",
            "@revoked",
            "permitopen=\"x:1\"",
        ] {
            let line = format!("{prefix} {ED}");
            match parse_key_line(&line) {
                Err(Refusal::Options { .. }) => {}
                other => panic!("{line:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_unknown_types_certificates_and_garbage() {
        for line in [
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
            "ssh-ed25519-cert-v01@openssh.com AAAA",
            "hello world",
            "AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti",
        ] {
            assert!(
                matches!(parse_key_line(line), Err(Refusal::UnknownType { .. })),
                "{line}"
            );
        }
    }

    #[test]
    fn refuses_a_blob_of_another_type_or_broken_base64() {
        // The text says ed25519, the blob is ecdsa.
        let swapped = ECDSA.replace("ecdsa-sha2-nistp256", "ssh-ed25519");
        assert!(matches!(
            parse_key_line(&swapped),
            Err(Refusal::Malformed { .. })
        ));
        let truncated = &ED[..ED.len() - 10];
        assert!(matches!(
            parse_key_line(truncated),
            Err(Refusal::Malformed { .. })
        ));
        assert!(matches!(
            parse_key_line("ssh-ed25519 !!!notbase64!!!"),
            Err(Refusal::Malformed { .. })
        ));
        assert!(matches!(
            parse_key_line("ssh-ed25519"),
            Err(Refusal::Malformed { .. })
        ));
    }

    #[test]
    fn rsa_needs_2048_bits() {
        assert!(parse_key_line(RSA2048).is_ok());
        assert_eq!(
            parse_key_line(RSA1024),
            Err(Refusal::WeakKey { bits: 1024 })
        );
    }

    #[test]
    fn refuses_two_keys_in_one_file() {
        let two = format!("{ED}\n{ECDSA}\n");
        assert_eq!(
            parse_key_file(two.as_bytes()),
            Err(Refusal::MultipleLines { lines: 2 })
        );
    }

    #[test]
    fn refuses_empty_binary_oversized_and_control_characters() {
        assert_eq!(parse_key_file(b""), Err(Refusal::Empty));
        assert_eq!(parse_key_file(b" \n\n\t\n"), Err(Refusal::Empty));
        assert_eq!(parse_key_file(&[0xff, 0xfe, 0x00]), Err(Refusal::NotUtf8));
        let big = vec![b'a'; MAX_FILE_BYTES as usize + 1];
        assert!(matches!(
            parse_key_file(&big),
            Err(Refusal::TooLarge { .. })
        ));
        let nul = format!("{ED}\0 x");
        assert_eq!(
            parse_key_file(nul.as_bytes()),
            Err(Refusal::ControlCharacters)
        );
        // A lone carriage return in the middle would hide text from a terminal.
        let cr = format!("{ED} a\rb");
        assert_eq!(
            parse_key_file(cr.as_bytes()),
            Err(Refusal::ControlCharacters)
        );
    }

    #[test]
    fn file_names_must_be_labels_with_pub_suffix() {
        assert_eq!(node_name_of_file("node1.pub"), Some("node1"));
        assert_eq!(node_name_of_file("node1"), None);
        assert_eq!(node_name_of_file("../x.pub"), None);
        assert_eq!(node_name_of_file("a b.pub"), None);
        assert_eq!(node_name_of_file(".pub"), None);
        assert_eq!(node_name_of_file("*.pub"), None);
        assert_eq!(node_name_of_file("n,1.pub"), None);
    }

    #[test]
    fn same_key_ignores_comments() {
        let a = parse_key_line(&format!("{ED} a")).unwrap();
        let b = parse_key_line(&format!("{ED} b")).unwrap();
        let c = parse_key_line(ECDSA).unwrap();
        assert!(same_key(&a, &b));
        assert!(!same_key(&a, &c));
        assert!(fingerprint(&a).starts_with("SHA256:"));
    }

    proptest! {
        // Whatever bytes arrive, parsing never panics, and anything accepted re-encodes to a
        // line that parses back to the same key and carries nothing of the input's extra text.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(k) = parse_key_file(&bytes) {
                let line = key_line(&k, "");
                prop_assert!(!line.contains('\n'));
                prop_assert!(same_key(&parse_key_line(&line).unwrap(), &k));
            }
        }

        #[test]
        fn anything_before_a_good_key_is_refused(prefix in "[!-~]{1,30}") {
            prop_assume!(!KNOWN_TYPES.contains(&prefix.as_str()));
            let line = format!("{prefix} {ED}");
            prop_assert!(parse_key_line(&line).is_err());
        }

        #[test]
        fn comments_never_survive(comment in "[ -~]{0,60}") {
            let line = format!("{ED} {comment}");
            if let Ok(k) = parse_key_line(&line) {
                prop_assert_eq!(key_line(&k, ""), ED);
            }
        }
    }
}
