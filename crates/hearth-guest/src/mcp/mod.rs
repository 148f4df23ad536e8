//! `hearth-guest mcp`: the agent's tool server, MCP over stdio (newline-delimited JSON-RPC 2.0),
//! built on `rmcp`, the official Rust MCP SDK.
//!
//! The agent starts it as a child process and talks to it on stdin/stdout; logs go to stderr.
//! It serves until stdin closes, then kills the process groups of any commands still running.
//! Protocol versions are rmcp's: an `initialize` asking for 2024-11-05, 2025-03-26, 2025-06-18 or
//! 2025-11-25 is answered with that version; any other gets 2025-11-25, the newest with an
//! `initialize` handshake (2026-07-28 clients, which send the version with each request, work too).

mod files;
mod output;
mod server;
mod shell;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rmcp::ServiceExt as _;

use files::Workspace;
use server::ToolServer;
use shell::{Groups, Shell};

/// Options of `hearth-guest mcp`.
#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// The workspace: the shell tool's working directory and the base of relative paths.
    #[arg(long, env = "HEARTH_WORKSPACE", default_value = "/workspace")]
    root: PathBuf,
    /// Bytes of shell output (stdout and stderr together) returned per call; longer output loses
    /// its middle, marked as such. Accepts K/M/G suffixes (binary).
    #[arg(long, default_value = "16000", value_parser = crate::parse_size)]
    max_output: u64,
    /// Largest file read_file returns, and write_file and edit_file write.
    #[arg(long, default_value = "1M", value_parser = crate::parse_size)]
    max_file: u64,
    /// Seconds a shell command may run when the call names no `timeout_s`.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    default_timeout_s: u64,
}

/// Why the server could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("workspace {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("workspace {0} is not a directory")]
    RootNotDir(PathBuf),
    #[error("MCP session did not start: {0}")]
    // Boxed: rmcp's error holds a whole JSON-RPC message, hundreds of bytes.
    Initialize(Box<rmcp::service::ServerInitializeError>),
    #[error("MCP session ended abnormally: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the server on this process's stdin/stdout until stdin closes.
pub fn run(args: McpArgs) -> anyhow::Result<()> {
    // stdout is the protocol channel: logs must go to stderr, and only warnings by default, since
    // rmcp logs every message at info.
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEARTH_GUEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let server = build(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let groups = server.groups();
    let result = runtime.block_on(serve(server));
    groups.kill_all();
    // A blocking stdin read cannot be cancelled; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result.context("hearth-guest mcp")
}

fn build(args: &McpArgs) -> Result<ToolServer, McpError> {
    let root = args.root.canonicalize().map_err(|source| McpError::Root {
        path: args.root.clone(),
        source,
    })?;
    if !root.is_dir() {
        return Err(McpError::RootNotDir(root));
    }
    let shell = Shell {
        env: shell::allowlisted_env(&root, |name| std::env::var(name).ok()),
        cwd: root.clone(),
        max_output: usize::try_from(args.max_output).unwrap_or(usize::MAX),
        default_timeout: Duration::from_secs(args.default_timeout_s),
        groups: Groups::default(),
    };
    let workspace = Workspace {
        root,
        max_file: args.max_file,
    };
    Ok(ToolServer::new(shell, workspace))
}

async fn serve(server: ToolServer) -> Result<(), McpError> {
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Initialize(Box::new(e)))?;
    let reason = running.waiting().await?;
    tracing::debug!(?reason, "MCP session ended");
    Ok(())
}
