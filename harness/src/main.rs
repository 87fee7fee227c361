//! `harness`: the host-side command line. Parses arguments and runs the subcommand.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = harness::cli::Cli::parse();
    if let Err(e) = harness::cli::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
