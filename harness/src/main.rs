//! `harness`: the host-side command line. Parses arguments and runs the subcommand until it
//! ends or Ctrl-C/SIGTERM stops it (then what the run created is removed).

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = harness::cli::Cli::parse();
    match harness::shutdown::run_until_signal(harness::cli::run(cli)).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        Ok(Err(interrupted)) => {
            eprintln!("error: {interrupted}");
            std::process::exit(interrupted.exit_code());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
