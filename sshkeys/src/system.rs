//! The node's OpenSSH setup: the cluster user, its ~/.ssh, the sshd drop-in, and sshd itself.
//!
//! The node image only has openssh-server installed; everything else is done here at run time
//! so that a plain image plus `sshkeys sync` is a working SSH node:
//! - the cluster user is created with `useradd` (home, bash, own group) with a locked
//!   password: there is no password anyone could use;
//! - its `~/.ssh` (0700) gets a copy of the node's persistent user key, so the stock client
//!   works with no options (`su - admin -c 'ssh host2'`);
//! - a drop-in in `/etc/ssh/sshd_config.d/` (Debian's sshd_config includes it first, and the
//!   first value of an option wins) points sshd at the persistent host key, allows public-key
//!   logins of the cluster user only (`AuthenticationMethods publickey`, password,
//!   keyboard-interactive and root logins off, at most 3 tries per connection) and turns every
//!   kind of forwarding off (TCP, agent, X11, Unix sockets, tunnels): the cluster user only
//!   ever runs commands on a peer. `sshd -T` must then confirm every one of those before sshd
//!   is started;
//! - sshd runs in the foreground (`-D -e`) as a child of `sshkeys sync`, restarted with
//!   backoff; a sshd left over from a killed previous run is stopped through its pid file.

use crate::fsutil::{self, FsError, Owner};
use crate::keys::{NodeKeys, Paths};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The sshd binary.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Failures while setting up the node's OpenSSH.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("running {command}: {reason}")]
    Command { command: String, reason: String },
    #[error("user {user} is not in /etc/passwd after useradd")]
    NoUser { user: String },
    #[error("sshd's effective configuration is unsafe or incomplete: {}", problems.join("; "))]
    UnsafeSshd { problems: Vec<String> },
}

/// A user account as /etc/passwd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Finds `user` in the text of /etc/passwd.
pub fn find_account(passwd: &str, user: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != user {
            return None;
        }
        Some(Account {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
        })
    })
}

/// The sshd drop-in for this node.
pub fn sshd_dropin(host_key: &Path, pidfile: &Path, user: &str) -> String {
    format!(
        "# Managed by clusterlab sshkeys; rewritten whenever sshkeys sync starts.\n\
         # Included first by /etc/ssh/sshd_config, so these values win.\n\
         HostKey {host_key}\n\
         PidFile {pidfile}\n\
         PubkeyAuthentication yes\n\
         AuthorizedKeysFile .ssh/authorized_keys\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitEmptyPasswords no\n\
         PermitRootLogin no\n\
         AuthenticationMethods publickey\n\
         MaxAuthTries 3\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         AllowStreamLocalForwarding no\n\
         X11Forwarding no\n\
         PermitTunnel no\n\
         PermitUserEnvironment no\n\
         StrictModes yes\n\
         AllowUsers {user}\n",
        host_key = host_key.display(),
        pidfile = pidfile.display(),
    )
}

/// Checks `sshd -T` output: every setting the drop-in makes must be in effect, and the only
/// host key must be the persistent one. Returns the problems found.
pub fn check_effective(sshd_t: &str, host_key: &Path, user: &str) -> Vec<String> {
    let mut values: Vec<(String, String)> = Vec::new();
    for line in sshd_t.lines() {
        if let Some((k, v)) = line.trim().split_once(' ') {
            values.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |key: &str| -> Vec<&str> {
        values
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let mut problems = Vec::new();
    for (key, want) in [
        ("passwordauthentication", "no"),
        ("kbdinteractiveauthentication", "no"),
        ("permitemptypasswords", "no"),
        ("permitrootlogin", "no"),
        ("pubkeyauthentication", "yes"),
        ("authenticationmethods", "publickey"),
        ("maxauthtries", "3"),
        ("allowtcpforwarding", "no"),
        ("allowagentforwarding", "no"),
        ("allowstreamlocalforwarding", "no"),
        ("x11forwarding", "no"),
        ("permittunnel", "no"),
        ("permituserenvironment", "no"),
        ("strictmodes", "yes"),
    ] {
        let got = get(key);
        if got != [want] {
            problems.push(format!("{key} is {got:?}, expected {want}"));
        }
    }
    let host_keys = get("hostkey");
    let expected = host_key.display().to_string();
    if host_keys != [expected.as_str()] {
        problems.push(format!(
            "hostkey is {host_keys:?}, expected only {expected}"
        ));
    }
    let allow = get("allowusers");
    if allow != [user] {
        problems.push(format!("allowusers is {allow:?}, expected {user}"));
    }
    problems
}

fn run(command: &str, args: &[&str]) -> Result<String, SystemError> {
    let shown = format!("{command} {}", args.join(" "));
    let out = std::process::Command::new(command)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SystemError::Command {
            command: shown.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SystemError::Command {
            command: shown,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_passwd() -> Result<String, SystemError> {
    std::fs::read_to_string("/etc/passwd")
        .map_err(|e| FsError::new("reading", Path::new("/etc/passwd"), e).into())
}

/// Makes sure the cluster user exists, with a home and a locked password.
pub fn ensure_user(user: &str) -> Result<Account, SystemError> {
    if let Some(a) = find_account(&read_passwd()?, user) {
        return Ok(a);
    }
    // useradd leaves the password locked ("!" in /etc/shadow): key logins only.
    run(
        "useradd",
        &[
            "--create-home",
            "--shell",
            "/bin/bash",
            "--user-group",
            user,
        ],
    )?;
    tracing::info!(user, "created the cluster user");
    find_account(&read_passwd()?, user).ok_or_else(|| SystemError::NoUser { user: user.into() })
}

/// Creates ~/.ssh (0700, owned by the user) and installs the node's user key pair in it.
pub fn install_user_key(account: &Account, keys: &NodeKeys) -> Result<PathBuf, SystemError> {
    let owner = Some(Owner {
        uid: account.uid,
        gid: account.gid,
    });
    // StrictModes refuses a home that others can write to.
    let home_mode = std::fs::symlink_metadata(&account.home)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o755);
    fsutil::ensure_dir(&account.home, home_mode & !0o022, owner)?;
    let dot_ssh = account.home.join(".ssh");
    fsutil::ensure_dir(&dot_ssh, 0o700, owner)?;
    let private = keys
        .user
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| SystemError::Command {
            command: "encoding the user key".into(),
            reason: e.to_string(),
        })?;
    fsutil::write_atomic(
        &dot_ssh.join("id_ed25519"),
        private.as_bytes(),
        0o600,
        owner,
    )?;
    let public = format!(
        "{}\n",
        crate::pubkey::key_line(keys.user_public(), &account.name)
    );
    fsutil::write_atomic(
        &dot_ssh.join("id_ed25519.pub"),
        public.as_bytes(),
        0o644,
        owner,
    )?;
    Ok(dot_ssh)
}

/// Writes the drop-in, checks sshd's effective configuration and returns when it is safe.
pub fn configure_sshd(paths: &Paths, user: &str) -> Result<(), SystemError> {
    if let Some(dir) = paths.sshd_dropin.parent() {
        fsutil::ensure_dir(dir, 0o755, None)?;
    }
    let text = sshd_dropin(&paths.host_key, &paths.sshd_pidfile, user);
    fsutil::write_atomic(&paths.sshd_dropin, text.as_bytes(), 0o644, None)?;
    // sshd refuses to start, and even `sshd -T` fails, without its privilege separation dir.
    fsutil::ensure_dir(Path::new("/run/sshd"), 0o755, None)?;
    let effective = run(SSHD, &["-T"])?;
    let problems = check_effective(&effective, &paths.host_key, user);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SystemError::UnsafeSshd { problems })
    }
}

/// Stops a sshd that a previous, killed run of `sshkeys sync` left behind (it would hold
/// port 22). Only a process whose name is `sshd` is signalled.
pub async fn stop_stale_sshd(pidfile: &Path) {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "sshd" || pid <= 1 {
        return;
    }
    tracing::info!(pid, "stopping a sshd left over from a previous run");
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..30 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

/// True while `pid` exists and is not a zombie (an exited child nobody reaped yet).
fn alive(pid: nix::unistd::Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Starts sshd in the foreground, logging to this process's stderr (the agent's log).
pub fn spawn_sshd() -> Result<Child, SystemError> {
    Command::new(SSHD)
        .args(["-D", "-e"])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SystemError::Command {
            command: format!("{SSHD} -D -e"),
            reason: e.to_string(),
        })
}

/// Sends SIGTERM to sshd and waits briefly; kills it if it does not go.
pub async fn stop_sshd(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_accounts_in_passwd() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\
            admin:x:1000:1000::/home/admin:/bin/bash\nbroken:x:y\n";
        let a = find_account(text, "admin").unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!(a.home, PathBuf::from("/home/admin"));
        assert!(find_account(text, "adm").is_none());
        assert!(find_account(text, "broken").is_none());
    }

    const GOOD_T: &str = "port 22\nhostkey /data/ssh/ssh_host_ed25519_key\n\
        passwordauthentication no\nkbdinteractiveauthentication no\npermitemptypasswords no\n\
        permitrootlogin no\npubkeyauthentication yes\nauthenticationmethods publickey\n\
        maxauthtries 3\nallowtcpforwarding no\nallowagentforwarding no\n\
        allowstreamlocalforwarding no\nx11forwarding no\npermittunnel no\n\
        permituserenvironment no\nstrictmodes yes\nallowusers admin\n";

    #[test]
    fn dropin_turns_off_everything_but_keys() {
        let d = sshd_dropin(
            Path::new("/data/ssh/ssh_host_ed25519_key"),
            Path::new("/run/x.pid"),
            "admin",
        );
        for line in [
            "HostKey /data/ssh/ssh_host_ed25519_key",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "AuthenticationMethods publickey",
            "MaxAuthTries 3",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "AllowUsers admin",
        ] {
            assert!(d.lines().any(|l| l == line), "{line} missing from\n{d}");
        }
    }

    #[test]
    fn effective_config_is_checked_setting_by_setting() {
        let key = Path::new("/data/ssh/ssh_host_ed25519_key");
        assert!(check_effective(GOOD_T, key, "admin").is_empty());
        let bad = GOOD_T.replace("passwordauthentication no", "passwordauthentication yes");
        let p = check_effective(&bad, key, "admin");
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("passwordauthentication"), "{p:?}");
        let extra_key = format!("{GOOD_T}hostkey /etc/ssh/ssh_host_rsa_key\n");
        assert!(check_effective(&extra_key, key, "admin")[0].contains("hostkey"));
        let fwd = GOOD_T.replace("allowtcpforwarding no", "allowtcpforwarding yes");
        assert!(check_effective(&fwd, key, "admin")[0].contains("allowtcpforwarding"));
        let tries = GOOD_T.replace("maxauthtries 3", "maxauthtries 6");
        assert!(check_effective(&tries, key, "admin")[0].contains("maxauthtries"));
        let root = GOOD_T.replace("permitrootlogin no", "permitrootlogin without-password");
        assert!(check_effective(&root, key, "admin")[0].contains("permitrootlogin"));
        assert!(!check_effective("", key, "admin").is_empty());
        assert!(check_effective(GOOD_T, key, "bob")[0].contains("allowusers"));
    }
}
