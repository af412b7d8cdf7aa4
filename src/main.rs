//! The `tether` binary: parse arguments, set up logging, run, print errors helpfully.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = tether::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| EnvFilter::new("tether=info")),
        )
        .with_writer(tether::privacy::logging::Scrubbing::new(std::io::stderr))
        .init();
    match tether::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors can quote input; they pass the anonymizer like every log line.
            eprintln!(
                "tether: {}",
                tether::privacy::global().scrub(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}
