//! The host's side of a graded cluster's isolation. An internal Docker network forwards
//! nothing to other networks or beyond the machine, but packets a node addresses to the
//! host itself (the bridge's own address, or any other address of the host) are not
//! forwarded, so Docker does not filter them. For such a network the harness names the
//! bridge itself and puts one rule at the top of the host's INPUT chain: nothing that
//! arrives on that bridge may open a connection to the host; replies to connections the
//! host opened (etcd status, the service probe) still pass. The rule goes when the network
//! is removed.

use std::time::Duration;
use tokio::process::Command;

/// Docker's network option that names the bridge interface.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// The comment on every rule the harness adds, so an operator can find them.
pub const RULE_COMMENT: &str = "clusterlab: a graded cluster may not connect to the host";
/// The most one iptables call may take.
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(10);

/// The bridge interface name for a network: `clg` and 12 hex digits of a hash of the
/// network's name (interface names hold at most 15 bytes).
pub fn bridge_name(network: &str) -> String {
    // FNV-1a, 64 bits: stable across runs and builds, which std's hasher is not.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("clg{:012x}", h & 0xffff_ffff_ffff)
}

/// The rule's match and target, after the chain name.
fn rule(bridge: &str) -> Vec<String> {
    [
        "-i",
        bridge,
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-m",
        "comment",
        "--comment",
        RULE_COMMENT,
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The argument lists of an iptables call: `op` (`-C`, `-I`, `-D`) on INPUT with the rule.
pub fn iptables_args(op: &str, bridge: &str) -> Vec<String> {
    let mut args = vec!["-w".to_string(), op.to_string(), "INPUT".to_string()];
    args.extend(rule(bridge));
    args
}

/// Why the host could not be shut off from a bridge.
#[derive(Debug, thiserror::Error)]
#[error("shutting the host off from graded bridge {bridge} (iptables {op} INPUT): {reason}; the grader needs root and iptables on the host to keep a submission from reaching the host's own services")]
pub struct FirewallError {
    pub bridge: String,
    pub op: String,
    pub reason: String,
}

/// Runs iptables; Ok(true) when it exited 0, Ok(false) when it exited otherwise.
async fn iptables(op: &str, bridge: &str) -> Result<bool, FirewallError> {
    let err = |reason: String| FirewallError {
        bridge: bridge.to_string(),
        op: op.to_string(),
        reason,
    };
    let run = Command::new("iptables")
        .args(iptables_args(op, bridge))
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(IPTABLES_TIMEOUT, run)
        .await
        .map_err(|_| err(format!("no answer within {} s", IPTABLES_TIMEOUT.as_secs())))?
        .map_err(|e| err(format!("cannot run iptables: {e}")))?;
    if out.status.success() {
        return Ok(true);
    }
    // `-C` and `-D` exit 1 when the rule is not there; anything else is a real failure.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if op != "-I" && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(err(format!("{}: {}", out.status, stderr.trim())))
}

/// Puts the rule in place for `bridge` (once).
pub async fn shut(bridge: &str) -> Result<(), FirewallError> {
    if iptables("-C", bridge).await? {
        return Ok(());
    }
    iptables("-I", bridge).await.map(|_| ())
}

/// Removes every copy of the rule for `bridge`; quietly does nothing where iptables cannot
/// run (a network that never had the rule, on a host without iptables).
pub async fn open(bridge: &str) {
    for _ in 0..8 {
        match iptables("-D", bridge).await {
            Ok(true) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_an_interface_and_differ_per_network() {
        let a = bridge_name("grade-good-startup-net");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("clg") && a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, bridge_name("grade-good-startup-net"));
        assert_ne!(a, bridge_name("grade-good-scale-net"));
    }

    #[test]
    fn the_rule_drops_only_new_connections_from_the_bridge() {
        let args = iptables_args("-I", "clg0123456789ab").join(" ");
        assert_eq!(
            args,
            format!("-w -I INPUT -i clg0123456789ab -m conntrack ! --ctstate ESTABLISHED,RELATED -m comment --comment {RULE_COMMENT} -j DROP")
        );
    }
}
