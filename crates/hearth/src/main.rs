//! `hearth`: run AI-agent tasks in isolated sandboxes.

mod api;
mod bench;
mod classify;
mod cli;
mod config;
mod doctor;
mod doctor_firecracker;
mod e2b;
mod exit;
mod firecracker;
mod request;
mod sandboxes;
mod store;
mod supervisor;
mod tasks;
mod vm;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::escape;
use crate::cli::output::errln;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_logging(args.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = errln!("hearth: cannot start the async runtime: {err}");
            return ExitCode::from(exit::code(exit::ErrorKind::Internal));
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(err) if cli::output::is_closed(&err) => ExitCode::from(exit::OUTPUT_CLOSED),
        Err(err) => {
            let code = exit::code_for(&err);
            // The message can carry a guest's or a workload's text (a guest error, a path).
            let _ = errln!("hearth: {}", escape::field(&exit::one_line(&err)));
            ExitCode::from(code)
        }
    }
}

/// Logs go to stderr, quiet by default (`-v` for info, `-vv` for debug, or `RUST_LOG`).
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
