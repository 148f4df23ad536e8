//! Gateway overhead per call, p50, next to a direct call to the same scripted upstream.
//!
//!     cargo run --release -p hearth-gateway --example gateway_bench [CALLS]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let calls = match std::env::args().nth(1).map(|arg| arg.parse::<usize>()) {
        None => 2_000,
        Some(Ok(calls)) if calls > 0 => calls,
        Some(_) => {
            eprintln!("usage: gateway_bench [CALLS]  (CALLS: a positive number, default 2000)");
            return ExitCode::from(2);
        }
    };
    match hearth_gateway::bench::gateway_overhead(calls).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("gateway_bench: {error}");
            ExitCode::FAILURE
        }
    }
}
