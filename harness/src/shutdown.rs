//! Ctrl-C and SIGTERM: a command runs until it ends or a signal comes; on a signal the
//! command is dropped where it stands and every cluster this process created and has not
//! handed over ([`crate::cluster::objects::claimed`]) is removed, so an interrupted `harness
//! up`, `grade` or `bench` leaves nothing labelled behind.

use crate::cluster::objects::{claimed, down};
use std::fmt;
use std::future::Future;
use tokio::signal::unix::{signal, SignalKind};

/// A command stopped by a signal, and what was removed after it.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: &'static str,
    /// (cluster, objects removed) for each cluster this run had created.
    pub removed: Vec<(String, usize)>,
    /// Clusters that could not be removed, with why.
    pub failed: Vec<(String, crate::HarnessError)>,
    /// Clusters left in place because the Docker engine could not be reached, and why.
    pub unreachable: Option<(Vec<String>, crate::HarnessError)>,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by {}", self.signal)?;
        if self.removed.is_empty() && self.failed.is_empty() && self.unreachable.is_none() {
            return write!(f, "; this run had created no cluster objects");
        }
        for (c, n) in &self.removed {
            write!(f, "; removed {n} objects of cluster {c}")?;
        }
        for (c, e) in &self.failed {
            write!(
                f,
                "; could not remove cluster {c} ({e}): run `harness down --name {c}`"
            )?;
        }
        if let Some((clusters, e)) = &self.unreachable {
            write!(
                f,
                "; clusters {} are left in place ({e}): run `harness down --name NAME` for each",
                clusters.join(", ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// Exit status for an interrupted command: 128 + the signal number, as shells do.
    pub fn exit_code(&self) -> i32 {
        match self.signal {
            "SIGINT" => 130,
            _ => 143,
        }
    }
}

/// Why the signal handlers could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("installing the {signal} handler: {source}")]
pub struct SignalSetupError {
    signal: &'static str,
    #[source]
    source: std::io::Error,
}

/// Runs `command` until it finishes (its output is returned) or SIGINT/SIGTERM arrives; then
/// removes what this run created and returns [`Interrupted`] saying what went.
pub async fn run_until_signal<F: Future>(
    command: F,
) -> Result<Result<F::Output, Interrupted>, SignalSetupError> {
    let setup = |kind, name| {
        signal(kind).map_err(|source| SignalSetupError {
            signal: name,
            source,
        })
    };
    let mut int = setup(SignalKind::interrupt(), "SIGINT")?;
    let mut term = setup(SignalKind::terminate(), "SIGTERM")?;
    let signal = tokio::select! {
        out = command => return Ok(Ok(out)),
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    // The command future is dropped here: in-flight Docker calls are abandoned, and the
    // removal below looks the objects up by label, so late arrivals are found too.
    eprintln!("\n{signal}: removing what this run created …");
    Ok(Err(remove_claimed(signal).await))
}

async fn remove_claimed(signal: &'static str) -> Interrupted {
    let mut out = Interrupted {
        signal,
        removed: Vec::new(),
        failed: Vec::new(),
        unreachable: None,
    };
    let clusters = claimed();
    if clusters.is_empty() {
        return out;
    }
    let docker = match crate::docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            out.unreachable = Some((clusters, e));
            return out;
        }
    };
    for c in clusters {
        match down(&docker, &c).await {
            Ok(n) => out.removed.push((c, n)),
            Err(e) => out.failed.push((c, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_what_was_removed() {
        let i = Interrupted {
            signal: "SIGINT",
            removed: vec![("cint".into(), 12)],
            failed: Vec::new(),
            unreachable: None,
        };
        assert_eq!(
            i.to_string(),
            "interrupted by SIGINT; removed 12 objects of cluster cint"
        );
        assert_eq!(i.exit_code(), 130);
        let none = Interrupted {
            signal: "SIGTERM",
            removed: Vec::new(),
            failed: Vec::new(),
            unreachable: None,
        };
        assert!(none.to_string().contains("no cluster objects"));
        assert_eq!(none.exit_code(), 143);
    }

    #[tokio::test]
    async fn a_finished_command_returns_its_output() {
        let out = run_until_signal(async { 7 }).await.unwrap();
        assert_eq!(out.unwrap(), 7);
    }
}
