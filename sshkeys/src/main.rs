//! `sshkeys` binary: filled in by its own issue.

fn main() {
    eprintln!("sshkeys: not implemented yet");
    std::process::exit(2);
}
