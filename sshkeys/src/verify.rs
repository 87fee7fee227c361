//! `sshkeys verify`: prove SSH trust end to end with an embedded russh client.
//!
//! For each target: TCP connect, SSH handshake with the server's host key compared against the
//! key the target published in `hosts/` (no trust on first use: an unknown or different key
//! ends the handshake), public-key login as the cluster user with this node's user key, then
//! `hostname`, whose output must be the target's node name. Every target gets a result with a
//! reason when it fails; targets are checked concurrently, each within its own deadline.

use crate::assemble::HostNames;
use crate::pubkey::{fingerprint, same_key};
use crate::scan::Scan;
use clusterlab_core::config::Peer;
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a target failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The server presented a host key other than the published one.
    HostKeyMismatch,
    /// The server did not accept this node's user key.
    LoginRefused,
    /// The TCP connection failed (refused, no route, no address known).
    Unreachable,
    /// A step did not finish within the deadline.
    Timeout,
    /// The target has published no (acceptable) host key, so it cannot be checked.
    NoHostKey,
    /// `--to` named something that is neither a node nor an alias or address of one.
    UnknownTarget,
    /// `hostname` could not be run or exited non-zero.
    CommandFailed,
    /// `hostname` printed another name than the target's.
    WrongHostname,
    /// Any other SSH protocol failure.
    Protocol,
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailReason::HostKeyMismatch => "host key mismatch",
            FailReason::LoginRefused => "login refused",
            FailReason::Unreachable => "unreachable",
            FailReason::Timeout => "timeout",
            FailReason::NoHostKey => "no published host key",
            FailReason::UnknownTarget => "unknown target",
            FailReason::CommandFailed => "command failed",
            FailReason::WrongHostname => "wrong hostname",
            FailReason::Protocol => "protocol error",
        })
    }
}

/// The outcome for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub address: Option<String>,
    pub ok: bool,
    pub reason: Option<FailReason>,
    pub detail: String,
    pub hostname: Option<String>,
    pub elapsed_ms: u64,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub from: String,
    pub ok: bool,
    pub results: Vec<TargetResult>,
}

impl Report {
    pub fn new(from: &str, results: Vec<TargetResult>) -> Report {
        Report {
            from: from.into(),
            ok: !results.is_empty() && results.iter().all(|r| r.ok),
            results,
        }
    }

    /// One line per target, then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            let addr = r.address.as_deref().unwrap_or("-");
            if r.ok {
                out.push_str(&format!(
                    "ok      {:<10} {:<21} hostname={} {} ms\n",
                    r.target,
                    addr,
                    r.hostname.as_deref().unwrap_or(""),
                    r.elapsed_ms
                ));
            } else {
                let reason = r.reason.map(|x| x.to_string()).unwrap_or_default();
                out.push_str(&format!(
                    "FAILED  {:<10} {:<21} {reason}: {} ({} ms)\n",
                    r.target, addr, r.detail, r.elapsed_ms
                ));
            }
        }
        let failed = self.results.iter().filter(|r| !r.ok).count();
        out.push_str(&format!(
            "{} passed, {failed} failed (from {})\n",
            self.results.len() - failed,
            self.from
        ));
        out
    }
}

/// Which targets to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every node known from the peer list or the published host keys, this node included.
    All,
    /// The named nodes; a name may also be a `hostN` alias or an IP from the hosts block.
    To(Vec<String>),
}

/// A resolved target: where to connect and which host key to expect.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: Option<SocketAddr>,
    pub expected: Option<PublicKey>,
    /// Set when the target could not be resolved at all.
    pub unknown: Option<String>,
}

/// Resolves the selection against what this node knows: peers (static), published host keys,
/// and the hosts block (aliases, and addresses of nodes missing from the peer list).
pub fn resolve(
    selection: &Selection,
    peers: &[Peer],
    hosts: &Scan,
    block: &[HostNames],
    port: u16,
) -> Vec<Target> {
    let mut names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
    for p in &hosts.keys {
        if !names.contains(&p.name) {
            names.push(p.name.clone());
        }
    }
    let address_of = |name: &str| -> Option<SocketAddr> {
        let ip = peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.ip)
            .or_else(|| {
                block
                    .iter()
                    .find(|l| l.names.iter().any(|n| n == name))
                    .map(|l| l.ip)
            })?;
        Some(SocketAddr::new(IpAddr::V4(ip), port))
    };
    let target = |name: &str| Target {
        name: name.to_string(),
        addr: address_of(name),
        expected: hosts.get(name).cloned(),
        unknown: None,
    };
    match selection {
        Selection::All => names.iter().map(|n| target(n)).collect(),
        Selection::To(wanted) => wanted
            .iter()
            .map(|w| {
                if names.contains(w) {
                    return target(w);
                }
                // An alias or address: the node name on the same hosts-block line.
                let via_block = block
                    .iter()
                    .find(|l| l.names.contains(w) || l.ip.to_string() == *w)
                    .and_then(|l| l.names.iter().find(|n| names.contains(n)));
                let via_peer_ip = peers
                    .iter()
                    .find(|p| p.ip.to_string() == *w)
                    .map(|p| &p.name);
                match via_block.or(via_peer_ip) {
                    Some(n) => target(n),
                    None => Target {
                        name: w.clone(),
                        addr: None,
                        expected: None,
                        unknown: Some(format!(
                            "{w:?} is not a node name, hostN alias or node address known here"
                        )),
                    },
                }
            })
            .collect(),
    }
}

/// Host key check for the russh client: accept exactly the expected key, remember what was
/// presented so a refusal can be reported as a mismatch with both fingerprints.
struct Checker {
    expected: PublicKey,
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let (ok, shown) = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                (same_key(key, &self.expected), fingerprint(key))
            }
            // clusterlab publishes plain keys; a certificate is not what was published.
            PublicKeyOrCertificate::Certificate(_) => (
                false,
                format!(
                    "a certificate for {}",
                    fingerprint(&server_key.public_key())
                ),
            ),
        };
        if let Ok(mut p) = self.presented.lock() {
            *p = Some(shown);
        }
        Ok(ok)
    }
}

fn failed(target: &Target, reason: FailReason, detail: String, start: Instant) -> TargetResult {
    TargetResult {
        target: target.name.clone(),
        address: target.addr.map(|a| a.to_string()),
        ok: false,
        reason: Some(reason),
        detail,
        hostname: None,
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}

/// Checks one target within `timeout`.
pub async fn check(
    target: &Target,
    user: &str,
    key: Arc<PrivateKey>,
    timeout: Duration,
) -> TargetResult {
    let start = Instant::now();
    if let Some(why) = &target.unknown {
        return failed(target, FailReason::UnknownTarget, why.clone(), start);
    }
    let Some(addr) = target.addr else {
        return failed(
            target,
            FailReason::Unreachable,
            "no address known (not in peers or the hosts block)".into(),
            start,
        );
    };
    let Some(expected) = target.expected.clone() else {
        return failed(
            target,
            FailReason::NoHostKey,
            "no acceptable hosts/<name>.pub; refusing to trust on first use".into(),
            start,
        );
    };
    let deadline = start + timeout;
    let tcp = match tokio::time::timeout_at(deadline.into(), tokio::net::TcpStream::connect(addr))
        .await
    {
        Err(_) => {
            return failed(
                target,
                FailReason::Timeout,
                format!("TCP connect took over {} ms", timeout.as_millis()),
                start,
            )
        }
        Ok(Err(e)) => return failed(target, FailReason::Unreachable, e.to_string(), start),
        Ok(Ok(s)) => s,
    };
    let presented = Arc::new(Mutex::new(None));
    let checker = Checker {
        expected: expected.clone(),
        presented: presented.clone(),
    };
    let session = async {
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(timeout),
            ..Default::default()
        });
        let mut handle = match client::connect_stream(config, tcp, checker).await {
            Ok(h) => h,
            Err(e) => {
                let seen = presented.lock().ok().and_then(|p| p.clone());
                return Err(match seen {
                    Some(got) if got != fingerprint(&expected) => (
                        FailReason::HostKeyMismatch,
                        format!(
                            "published {} but the server presented {got}",
                            fingerprint(&expected)
                        ),
                    ),
                    _ => (FailReason::Protocol, format!("handshake: {e}")),
                });
            }
        };
        let auth = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
            .await
            .map_err(|e| (FailReason::Protocol, format!("authentication: {e}")))?;
        if !auth.success() {
            return Err((
                FailReason::LoginRefused,
                format!("the server refused {user}'s key"),
            ));
        }
        let (code, out) = run_hostname(&handle)
            .await
            .map_err(|e| (FailReason::CommandFailed, e))?;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
        Ok((code, out))
    };
    let outcome = match tokio::time::timeout_at(deadline.into(), session).await {
        Err(_) => {
            return failed(
                target,
                FailReason::Timeout,
                format!("no answer within {} ms", timeout.as_millis()),
                start,
            )
        }
        Ok(r) => r,
    };
    match outcome {
        Err((reason, detail)) => failed(target, reason, detail, start),
        Ok((Some(0), out)) if out == target.name => TargetResult {
            target: target.name.clone(),
            address: Some(addr.to_string()),
            ok: true,
            reason: None,
            detail: String::new(),
            hostname: Some(out),
            elapsed_ms: start.elapsed().as_millis() as u64,
        },
        Ok((Some(0), out)) => {
            let mut r = failed(
                target,
                FailReason::WrongHostname,
                format!("hostname printed {out:?}"),
                start,
            );
            r.hostname = Some(out);
            r
        }
        Ok((code, _)) => failed(
            target,
            FailReason::CommandFailed,
            format!("hostname exited with {code:?}"),
            start,
        ),
    }
}

/// Runs `hostname` on an authenticated session; returns its exit status and trimmed output.
async fn run_hostname<H: client::Handler>(
    handle: &client::Handle<H>,
) -> Result<(Option<u32>, String), String> {
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(|e| format!("opening a session: {e}"))?;
    channel
        .exec(true, "hostname")
        .await
        .map_err(|e| format!("exec hostname: {e}"))?;
    let mut out = Vec::new();
    let mut code = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            // hostname prints one short line; never buffer more than a little.
            russh::ChannelMsg::Data { data } if out.len() < 4096 => {
                out.extend_from_slice(&data);
            }
            russh::ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            _ => {}
        }
    }
    Ok((code, String::from_utf8_lossy(&out).trim().to_string()))
}

/// Checks every target concurrently.
pub async fn check_all(
    targets: &[Target],
    user: &str,
    key: Arc<PrivateKey>,
    timeout: Duration,
) -> Vec<TargetResult> {
    futures::future::join_all(targets.iter().map(|t| check(t, user, key.clone(), timeout))).await
}

#[cfg(test)]
mod tests;
