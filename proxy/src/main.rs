//! `proxy` binary: filled in by its own issue.

fn main() {
    eprintln!("proxy: not implemented yet");
    std::process::exit(2);
}
