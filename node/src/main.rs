//! `clusterlab-node`: the node image's one executable. It is installed once and linked as
//! `agent`, `hostsgen`, `sshkeys` and `proxy`, and runs the program whose name it was started
//! by. Each program's `main` is its crate's own `src/main.rs`, compiled in here unchanged, so
//! the image holds the shared code (tokio, hyper, the etcd client …) once instead of four
//! times, and the harness links one binary instead of four (README "Images").

#[path = "../../agent/src/main.rs"]
mod agent_main;
#[path = "../../hostsgen/src/main.rs"]
mod hostsgen_main;
#[path = "../../proxy/src/main.rs"]
mod proxy_main;
#[path = "../../sshkeys/src/main.rs"]
mod sshkeys_main;

/// The programs, by the name they run as.
const PROGRAMS: [&str; 4] = ["agent", "hostsgen", "sshkeys", "proxy"];

/// The program an `argv[0]` names: its file name.
fn program(argv0: &str) -> &str {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(argv0)
}

fn main() -> anyhow::Result<()> {
    let argv0 = std::env::args().next().unwrap_or_default();
    match program(&argv0) {
        "agent" => agent_main::main(),
        "hostsgen" => hostsgen_main::main(),
        "sshkeys" => sshkeys_main::main(),
        "proxy" => proxy_main::main(),
        other => anyhow::bail!(
            "clusterlab-node runs as one of {} (a link by that name), not as {other:?}",
            PROGRAMS.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_the_file_name_it_runs_as() {
        assert_eq!(program("/usr/local/bin/agent"), "agent");
        assert_eq!(program("proxy"), "proxy");
        assert_eq!(program("./target/debug/clusterlab-node"), "clusterlab-node");
        for p in PROGRAMS {
            assert_eq!(program(&format!("/x/{p}")), p);
        }
    }

    #[test]
    fn each_program_names_itself_in_help_and_version() {
        use clap::CommandFactory;
        let names = [
            agent_main::Args::command().get_name().to_string(),
            hostsgen_main::Args::command().get_name().to_string(),
            sshkeys_main::Args::command().get_name().to_string(),
            proxy_main::Args::command().get_name().to_string(),
        ];
        assert_eq!(names, PROGRAMS);
        let version = agent_main::Args::command().render_version();
        assert!(version.starts_with("agent "), "{version}");
    }
}
