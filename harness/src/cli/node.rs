//! `harness ssh` and `harness logs`: a shell on a node as the cluster user, and a node's
//! output (the agent's log, which carries every plugin's output tagged with its name).
//!
//! `ssh` runs the `docker` command line with the terminal handed straight through
//! (inherited stdio): `docker exec -it` gives the user a real TTY (raw mode, window size,
//! job control), which the Docker API client would have to reimplement. Everything it runs
//! is built by [`ssh_argv`], a pure function tested below. `logs` reads the container's log
//! through the Docker API and filters it line by line.

use crate::cluster::Cluster;
use crate::names::ClusterNames;
use futures::StreamExt;
use std::io::Write as _;

/// The user the assignment's SSH mesh is set up for on every node; root has no keys.
pub const CLUSTER_USER: &str = "admin";

/// SSH options for a hop between nodes: keys only (no password prompt), host keys checked
/// against what the cluster distributed, and a bounded wait for the peer.
pub const SSH_OPTS: [&str; 6] = [
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    "ConnectTimeout=5",
];

/// The long `--help` text of `harness ssh`.
pub const SSH_HELP: &str = "\
Opens a login shell on NODE as the cluster user `admin` (the user whose SSH keys the
nodes trust; root has none), or runs COMMAND there and exits with its exit code.

  harness ssh node1                       # a shell on node1 as admin
  harness ssh node1 -- cat /etc/hosts     # one command, its exit code passed through
  harness ssh node1 --via node0           # on node0, `ssh node1` as admin: the mesh

With --via, the harness enters the other node's container and runs `ssh NODE` there as
admin, so the login goes through the cluster's own keys, host keys and hosts table; a
broken mesh shows up as ssh's own error. COMMAND's words are joined with spaces and run
by admin's shell on NODE, as ssh does (quote a pipe: -- 'ps aux | grep etcd'). A
terminal is allocated when stdin is one.";

/// `harness ssh NODE [--via NODE] [-- COMMAND…]`.
#[derive(clap::Args, Debug)]
pub struct SshArgs {
    /// The node to log in to: node0, node1 … (or its index).
    pub node: String,
    /// Log in from this node over the cluster's SSH instead of entering NODE directly.
    #[arg(long, value_name = "NODE")]
    pub via: Option<String>,
    /// Cluster name.
    #[arg(long, default_value = crate::names::DEFAULT_CLUSTER)]
    pub name: String,
    /// Command to run instead of a login shell (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The long `--help` text of `harness logs`.
pub const LOGS_HELP: &str = "\
Prints a node container's output: the agent's log, in which every plugin's stdout and
stderr lines appear tagged `plugin=NAME` (with `stream=` and `cut=`), next to the
agent's own lines about that plugin (started, exited, restarting).

  harness logs node0                      # everything so far
  harness logs node0 --follow             # and keep printing new lines
  harness logs node0 --plugin hostsgen    # only the lines tagged plugin=hostsgen

Both of the container's streams go to stdout, one line at a time, with control
characters and escape sequences neutralised (a plugin's output cannot drive your
terminal).";

/// `harness logs NODE [--follow] [--plugin NAME]`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The node: node0, node1 … (or its index).
    pub node: String,
    /// Keep printing new lines until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
    /// Only the lines the agent tagged with this plugin's name (`plugin=NAME`).
    #[arg(long, value_name = "NAME")]
    pub plugin: Option<String>,
    /// Cluster name.
    #[arg(long, default_value = crate::names::DEFAULT_CLUSTER)]
    pub name: String,
}

/// Quotes one word for a POSIX shell: unchanged when it holds only safe characters, else
/// in single quotes (a single quote inside becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The `docker` arguments of `harness ssh`: exec into `container` (NODE's, or the --via
/// node's) and become the cluster user there; with `via_target`, run ssh to that node.
/// `command` is empty for a login shell.
pub fn ssh_argv(
    container: &str,
    via_target: Option<&str>,
    command: &[String],
    tty: bool,
) -> Vec<String> {
    let mut argv: Vec<String> = vec!["exec".into(), if tty { "-it" } else { "-i" }.into()];
    argv.push(container.into());
    argv.extend(["su", "-", CLUSTER_USER].map(String::from));
    let joined = command.join(" ");
    match via_target {
        None => {
            if !command.is_empty() {
                // su hands the text to admin's login shell, as sshd would.
                argv.extend(["-c".to_string(), joined]);
            }
        }
        Some(target) => {
            let mut ssh = vec!["ssh".to_string()];
            ssh.push(if tty { "-t" } else { "-T" }.into());
            ssh.extend(SSH_OPTS.iter().map(|s| s.to_string()));
            ssh.push(shell_quote(target));
            if !command.is_empty() {
                // One word for the shell su starts; ssh sends it to NODE's shell as is.
                ssh.push(shell_quote(&joined));
            }
            argv.extend(["-c".to_string(), ssh.join(" ")]);
        }
    }
    argv
}

/// The tag the agent puts on a line about plugin `name`: the last ` plugin=` field of the
/// line (fields follow the message, so text a plugin printed cannot stand in for it).
pub fn line_plugin(line: &str) -> Option<&str> {
    let at = line.rfind(" plugin=")?;
    let rest = &line[at + " plugin=".len()..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// Splits a byte stream into lines, keeping the unfinished end for the next chunk. A line
/// longer than `max` is emitted in pieces of `max` bytes.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Lines {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// The complete lines in `pending` + `chunk`, without their `\n`.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                out.push(String::from_utf8_lossy(&self.pending).into_owned());
                self.pending.clear();
            } else {
                self.pending.push(b);
                if self.pending.len() >= self.max {
                    out.push(String::from_utf8_lossy(&self.pending).into_owned());
                    self.pending.clear();
                }
            }
        }
        out
    }

    /// The unfinished last line, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            let s = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            Some(s)
        }
    }
}

/// Longest line printed whole by `harness logs`.
const MAX_LINE: usize = 64 * 1024;

/// Why `harness ssh` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeCliError {
    #[error("{node} ({container}) is not running: {stopped}; start it with `harness start {node} --name {cluster}`")]
    NotRunning {
        node: String,
        container: String,
        stopped: String,
        cluster: String,
    },
    #[error("cannot run the docker command line (needed for a terminal): {0}")]
    DockerCli(std::io::Error),
    #[error("docker exec was ended by a signal")]
    Signalled,
}

/// Resolves a node given as `node1`, `<cluster>-node1` or `1` to (short name, container).
fn node_of(c: &Cluster, node: &str) -> anyhow::Result<(String, String)> {
    let i = c.resolve(node)?;
    Ok((ClusterNames::node_name(i), c.names.node_container(i)))
}

/// Runs `harness ssh`; exits the process with the remote command's (or shell's) status.
pub async fn run_ssh(a: SshArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let c = Cluster::discover(&docker, &a.name).await?;
    let (target, target_container) = node_of(&c, &a.node)?;
    let (enter, enter_container, via_target) = match &a.via {
        None => (target.clone(), target_container, None),
        Some(via) => {
            let (v, vc) = node_of(&c, via)?;
            (v, vc, Some(target.as_str()))
        }
    };
    if let Some(stopped) = c.objects.not_running(&enter_container).await? {
        return Err(NodeCliError::NotRunning {
            node: enter,
            container: enter_container,
            stopped: stopped.to_string(),
            cluster: c.spec.name.clone(),
        }
        .into());
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let argv = ssh_argv(&enter_container, via_target, &a.command, tty);
    // The docker CLI with inherited stdio: the only way here to hand the user a real TTY.
    let status = tokio::process::Command::new("docker")
        .args(&argv)
        .status()
        .await
        .map_err(NodeCliError::DockerCli)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => Err(NodeCliError::Signalled.into()),
    }
}

/// Runs `harness logs`.
pub async fn run_logs(a: LogsArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let c = Cluster::discover(&docker, &a.name).await?;
    let (_, container) = node_of(&c, &a.node)?;
    let mut logs = docker.logs(
        &container,
        Some(bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            follow: a.follow,
            tail: "all".into(),
            ..Default::default()
        }),
    );
    let mut out_lines = Lines::new(MAX_LINE);
    let mut err_lines = Lines::new(MAX_LINE);
    let stdout = std::io::stdout();
    let print = |lines: Vec<String>| -> std::io::Result<()> {
        let mut w = stdout.lock();
        for l in lines {
            if a.plugin.is_none() || line_plugin(&l) == a.plugin.as_deref() {
                writeln!(w, "{}", crate::grade::text::clean(&l))?;
            }
        }
        w.flush()
    };
    while let Some(chunk) = logs.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("reading the log of {container}: {e}"))?;
        let lines = match chunk {
            bollard::container::LogOutput::StdErr { message } => err_lines.push(&message),
            other => out_lines.push(&other.into_bytes()),
        };
        if let Err(e) = print(lines) {
            // A closed pipe (`| head`) ends the command quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    let rest: Vec<String> = [out_lines.finish(), err_lines.finish()]
        .into_iter()
        .flatten()
        .collect();
    match print(rest) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn login_shell_on_the_node_as_admin() {
        assert_eq!(
            ssh_argv("cl-node1", None, &[], true),
            v(&["exec", "-it", "cl-node1", "su", "-", "admin"])
        );
        assert_eq!(
            ssh_argv("cl-node1", None, &[], false),
            v(&["exec", "-i", "cl-node1", "su", "-", "admin"])
        );
    }

    #[test]
    fn a_command_runs_in_admins_shell() {
        assert_eq!(
            ssh_argv("cl-node2", None, &v(&["cat", "/etc/hosts"]), false),
            v(&[
                "exec",
                "-i",
                "cl-node2",
                "su",
                "-",
                "admin",
                "-c",
                "cat /etc/hosts"
            ])
        );
    }

    #[test]
    fn via_runs_ssh_on_the_other_node() {
        assert_eq!(
            ssh_argv("cl-node0", Some("node1"), &[], true),
            v(&[
                "exec",
                "-it",
                "cl-node0",
                "su",
                "-",
                "admin",
                "-c",
                "ssh -t -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 node1"
            ])
        );
        assert_eq!(
            ssh_argv(
                "cl-node0",
                Some("node1"),
                &v(&["echo", "it's", "$HOSTNAME"]),
                false
            ),
            v(&[
                "exec",
                "-i",
                "cl-node0",
                "su",
                "-",
                "admin",
                "-c",
                "ssh -T -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 node1 'echo it'\\''s $HOSTNAME'"
            ])
        );
    }

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(shell_quote("node1"), "node1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        // Through a real shell, the quoted word comes back unchanged.
        for word in ["it's", "a  b", "$HOME `x` \"q\" \\", "ps aux | grep etcd"] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", shell_quote(word))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }

    #[test]
    fn arguments_parse_as_documented() {
        let cli = crate::cli::Cli::try_parse_from([
            "harness", "ssh", "node1", "--via", "node0", "--name", "lab", "--", "ls", "-l",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Ssh(a) => {
                assert_eq!(a.node, "node1");
                assert_eq!(a.via.as_deref(), Some("node0"));
                assert_eq!(a.name, "lab");
                assert_eq!(a.command, v(&["ls", "-l"]));
            }
            other => panic!("{other:?}"),
        }
        let cli = crate::cli::Cli::try_parse_from([
            "harness", "logs", "node2", "-f", "--plugin", "hostsgen",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Logs(a) => {
                assert!(a.follow);
                assert_eq!(a.plugin.as_deref(), Some("hostsgen"));
                assert_eq!(a.name, crate::names::DEFAULT_CLUSTER);
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::cli::Cli::try_parse_from(["harness", "ssh"]).is_err());
    }

    #[test]
    fn plugin_tag_is_the_last_field() {
        let line = r#"2026-12-02T09:00:00.1Z  INFO plugin: wrote /etc/hosts plugin=hostsgen stream="stdout" cut=false"#;
        assert_eq!(line_plugin(line), Some("hostsgen"));
        let started = "2026-12-02T09:00:00.1Z  INFO clusterlab_agent::supervise: plugin started plugin=sshkeys pid=Some(42) starts=1";
        assert_eq!(line_plugin(started), Some("sshkeys"));
        // A plugin printing another's tag is still filed under its own name.
        let spoof =
            r#"... INFO plugin: fake plugin=hostsgen plugin=evil stream="stderr" cut=false"#;
        assert_eq!(line_plugin(spoof), Some("evil"));
        assert_eq!(
            line_plugin("... INFO clusterlab_agent: lease granted"),
            None
        );
    }

    #[test]
    fn lines_are_split_across_chunks_and_bounded() {
        let mut l = Lines::new(8);
        assert_eq!(l.push(b"ab"), Vec::<String>::new());
        assert_eq!(l.push(b"c\nde\n"), v(&["abc", "de"]));
        assert_eq!(l.push(b"0123456789\n"), v(&["01234567", "89"]));
        assert_eq!(l.push(b"tail"), Vec::<String>::new());
        assert_eq!(l.finish().as_deref(), Some("tail"));
        assert_eq!(l.finish(), None);
    }
}
