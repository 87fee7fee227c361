//! `hostsgen` binary: filled in by its own issue.

fn main() {
    eprintln!("hostsgen: not implemented yet");
    std::process::exit(2);
}
