//! `harness events`: the cluster's current state as event lines, then (with --follow) every
//! change as it happens, from [`crate::events`].

use crate::cluster::Cluster;
use std::io::Write as _;

/// The long `--help` text of `harness events`.
pub const EVENTS_HELP: &str = "\
Prints one time-stamped line (UTC) per change the harness can see, merged from Docker's
events for the cluster's containers (kill, die, start, pause, unpause, network
connect/disconnect), etcd watches on the node keys and the leader key, and the raft term
and leader every member reports (polled every 250 ms):

  12:01:03.120 node0 killed (SIGKILL)
  12:01:04.041 raft term 3: node2 leader
  12:01:04.210 /clusterlab/leader → node2 (term 3)
  12:01:13.502 node0's key expired

Without --follow it prints the current state (each container's state, each node key, the
leader key, the raft term) and exits; with --follow it goes on until Ctrl-C. Values read
from etcd are judged as the nodes judge them: one that fails shows as `refused KEY:
reason`. A lease-backed key deleted by its node's lease revocation (a graceful stop) also
shows as expired: etcd's watch does not tell the two apart.";

/// `harness events [--name C] [--follow] [--json]`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Keep printing changes until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Cluster name.
    #[arg(long, default_value = crate::names::DEFAULT_CLUSTER)]
    pub name: String,
}

fn print(e: &crate::events::Event, json: bool) -> std::io::Result<()> {
    let mut w = std::io::stdout().lock();
    if json {
        writeln!(
            w,
            "{}",
            serde_json::to_string(e).unwrap_or_else(|_| "{}".into())
        )?;
    } else {
        writeln!(w, "{e}")?;
    }
    w.flush()
}

/// Runs `harness events`.
pub async fn run(a: EventsArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let c = Cluster::discover(&docker, &a.name).await?;
    let (now, cursor) = crate::events::snapshot(&c).await?;
    let quiet_pipe = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
        Ok(()) => Ok(true),
    };
    for e in &now {
        if !quiet_pipe(print(e, a.json))? {
            return Ok(());
        }
    }
    if !a.follow {
        return Ok(());
    }
    let mut stream = crate::events::follow(&c, cursor);
    while let Some(e) = stream.next().await {
        if !quiet_pipe(print(&e, a.json))? {
            return Ok(());
        }
    }
    Ok(())
}
