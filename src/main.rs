use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    turnd::cli::run(turnd::cli::Cli::parse())
}
