//! `harness view`: serves the live page ([`crate::view`]) of a cluster on 127.0.0.1 until
//! Ctrl-C; `harness up` starts one detached and `harness down` stops it.

use crate::cluster::Cluster;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

/// The long `--help` text of `harness view`.
pub const VIEW_HELP: &str = "\
Serves a live page of the cluster on 127.0.0.1 (never on another interface) and prints
its URL, which carries a random token made for this run:

  harness view                          # http://127.0.0.1:PORT/?token=…
  harness view --name lab --port 9000

Each node is a box coloured by role and state (and labelled in words), the node most
hosts tables call host0 is marked, each node's hosts table is shown side by side with
lines that not every running node has highlighted, and the event stream of `harness
events` scrolls below; everything updates live (server-sent events). The buttons kill,
start or isolate a node (a partition of it from the rest) or heal, after a confirmation.
Requests without the token, for another Host, or with another page's Origin are refused.
`harness up` starts a view by itself and prints its URL; `harness down` stops it.";

/// `harness view [--name C] [--port P]`.
#[derive(clap::Args, Debug)]
pub struct ViewArgs {
    /// Cluster name.
    #[arg(long, default_value = crate::names::DEFAULT_CLUSTER)]
    pub name: String,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Also write the URL into this file (mode 0600), for `harness up`.
    #[arg(long, hide = true)]
    pub url_file: Option<PathBuf>,
}

/// Where `harness up` keeps the detached view's pid and URL for `harness down`.
pub fn state_file(cluster: &str) -> PathBuf {
    std::env::temp_dir().join(format!("clusterlab-view-{cluster}.url"))
}

/// Runs `harness view` until Ctrl-C (the caller's signal handling drops this future) or
/// until the cluster is gone.
pub async fn run(a: ViewArgs) -> anyhow::Result<()> {
    let docker = crate::docker::connect().await?;
    let c = Cluster::discover(&docker, &a.name).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    // The view ends by itself once the cluster is gone (`harness down`, or removed by hand).
    let gone = {
        let (docker, name) = (docker.clone(), a.name.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Err(crate::HarnessError::NoSuchCluster { .. }) =
                    Cluster::discover(&docker, &name).await
                {
                    return;
                }
            }
        }
    };
    let server = tokio::spawn(crate::view::serve(c, a.port, ready_tx, gone));
    match ready_rx.await {
        Ok(s) => {
            println!("live view of {}: {}", a.name, s.url);
            if let Some(path) = &a.url_file {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)?;
                writeln!(f, "{}\n{}", std::process::id(), s.url)?;
            }
        }
        Err(_) => {
            // The server ended before it was ready: its error says why.
            server.await??;
            anyhow::bail!("the live view stopped before it was ready");
        }
    }
    server.await??;
    Ok(())
}

/// Starts `harness view` for `cluster` detached (its own process group, no terminal) and
/// returns its URL once it serves.
pub async fn start_detached(cluster: &str) -> anyhow::Result<String> {
    use std::os::unix::process::CommandExt as _;
    let file = state_file(cluster);
    let _ = std::fs::remove_file(&file);
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["view", "--name", cluster, "--port", "0", "--url-file"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    keep_inherited_descriptors_to_ourselves();
    let mut child = cmd.spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(url) = text.lines().nth(1) {
                return Ok(url.to_string());
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("harness view exited with {status} before serving");
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("harness view did not serve within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Marks every descriptor this process inherited (above stderr) close-on-exec, so the
/// detached view, which outlives this process, does not hold them: a lock taken around
/// `harness up` (e.g. `flock LOCK harness up`) must end with `up`, not with the view. The
/// harness's own descriptors are close-on-exec already (Rust opens them so).
fn keep_inherited_descriptors_to_ourselves() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
        }
    }
}

/// Stops the view `harness up` started for `cluster`, if it still runs; true if one was.
pub fn stop_detached(cluster: &str) -> bool {
    let file = state_file(cluster);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return false;
    };
    let _ = std::fs::remove_file(&file);
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // Only a `harness view --name CLUSTER` process: the pid may have been reused.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.iter().any(|a| *a == b"view")
        && args
            .windows(2)
            .any(|w| w[0] == b"--name" && w[1] == cluster.as_bytes());
    if !ours {
        return false;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn events_and_view_parse_as_documented() {
        let cli = crate::cli::Cli::try_parse_from([
            "harness", "events", "--follow", "--json", "--name", "lab",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Events(a) => {
                assert!(a.follow && a.json);
                assert_eq!(a.name, "lab");
            }
            other => panic!("{other:?}"),
        }
        let cli = crate::cli::Cli::try_parse_from(["harness", "view", "--port", "9000"]).unwrap();
        match cli.command {
            crate::cli::Command::View(a) => {
                assert_eq!(a.port, 9000);
                assert_eq!(a.name, crate::names::DEFAULT_CLUSTER);
            }
            other => panic!("{other:?}"),
        }
        let cli = crate::cli::Cli::try_parse_from(["harness", "up", "--no-view"]).unwrap();
        assert!(matches!(cli.command, crate::cli::Command::Up(a) if a.no_view));
        assert!(super::state_file("lab")
            .to_string_lossy()
            .ends_with("clusterlab-view-lab.url"));
    }

    #[test]
    fn down_stops_only_the_view_it_started() {
        let name = format!("unit-{}", std::process::id());
        let spawn = |args: &[&str]| {
            let child = std::process::Command::new("sh")
                .args(["-c", "sleep 30; :"])
                .args(args)
                .spawn()
                .unwrap();
            // spawn returns once the child is inside execve, before the kernel has set up
            // its new arguments (/proc/PID/cmdline reads empty until then): wait for them.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let cmdline = format!("/proc/{}/cmdline", child.id());
            while std::fs::read(&cmdline).unwrap_or_default().is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{cmdline} stayed empty"
                );
                std::thread::yield_now();
            }
            child
        };
        // A process that is not `view --name NAME` is left alone, the file forgotten.
        let mut other = spawn(&["view", "--name", "someone-else"]);
        std::fs::write(super::state_file(&name), format!("{}\nurl\n", other.id())).unwrap();
        assert!(!super::stop_detached(&name));
        assert!(!super::state_file(&name).exists());
        assert!(other.try_wait().unwrap().is_none());
        other.kill().unwrap();
        other.wait().unwrap();
        // The view it started is stopped.
        let mut view = spawn(&["view", "--name", &name]);
        std::fs::write(super::state_file(&name), format!("{}\nurl\n", view.id())).unwrap();
        assert!(super::stop_detached(&name));
        assert!(view.wait().unwrap().code().is_none(), "ended by a signal");
        assert!(!super::stop_detached(&name), "nothing left to stop");
    }

    #[test]
    fn an_inherited_descriptor_does_not_reach_the_detached_view() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        use std::os::fd::AsRawFd as _;
        // A descriptor as `flock LOCK harness up` hands one over: open across exec.
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let flags = |fd| FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
        assert!(!flags(fd).contains(FdFlag::FD_CLOEXEC));
        super::keep_inherited_descriptors_to_ourselves();
        assert!(flags(fd).contains(FdFlag::FD_CLOEXEC));
    }
}
