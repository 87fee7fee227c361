//! `harness partition` and `harness heal`: arguments, and printing what the nodes' rules say.

use crate::cluster::Cluster;
use crate::faults::{cli_groups, cuts, describe, heal, parse_group, partition, FaultReport};

/// `harness partition GROUP [--from GROUP]`.
#[derive(clap::Args, Debug)]
pub struct PartitionArgs {
    /// Comma-separated node names, e.g. `node0,node1`.
    pub group: String,
    /// The other side (comma-separated); default: every node not in GROUP.
    #[arg(long)]
    pub from: Option<String>,
    /// Cluster name.
    #[arg(long, default_value = crate::names::DEFAULT_CLUSTER)]
    pub name: String,
}

/// `harness heal`.
#[derive(clap::Args, Debug)]
pub struct HealArgs {
    /// Cluster name.
    #[arg(long, default_value = crate::names::DEFAULT_CLUSTER)]
    pub name: String,
}

fn print_cuts(c: &Cluster, report: &FaultReport) {
    for (node, drops) in &report.cuts {
        let peers: Vec<String> = drops
            .iter()
            .map(|ip| {
                c.node_names()
                    .into_iter()
                    .find(|n| c.node_ip(n).ok() == Some(*ip))
                    .unwrap_or_else(|| ip.to_string())
            })
            .collect();
        let peers = if peers.is_empty() {
            "nothing".to_string()
        } else {
            peers.join(", ")
        };
        println!("  {node}: drops {peers}");
    }
    for node in &report.skipped {
        println!("  {node}: not running, left alone");
    }
}

/// Runs `harness partition`: applies the cut, reads the rules back and prints them.
pub async fn run_partition(a: PartitionArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let c = Cluster::discover(&docker, &a.name).await?;
    let all = c.node_names();
    let group = parse_group(&a.group);
    let from = a.from.as_deref().map(parse_group);
    let groups = cli_groups(&all, &group, from.as_deref())?;
    let applied = partition(&c, &groups).await?;
    let now = cuts(&c).await?;
    if now.cuts != applied.cuts {
        anyhow::bail!(
            "rules read back from the nodes ({}) differ from the plan ({})",
            describe(&now.cuts),
            describe(&applied.cuts)
        );
    }
    println!("partitioned {}: {}", c.spec.name, describe(&now.cuts));
    print_cuts(&c, &now);
    println!("undo with: harness heal --name {}", c.spec.name);
    Ok(())
}

/// Runs `harness heal`: removes every rule and prints what was cut.
pub async fn run_heal(a: HealArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let c = Cluster::discover(&docker, &a.name).await?;
    let before = heal(&c).await?;
    println!("healed {} (was: {})", c.spec.name, describe(&before.cuts));
    print_cuts(&c, &before);
    Ok(())
}
