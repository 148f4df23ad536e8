//! `hearth serve`: the HTTP API daemon (see `api`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::output::{outln, OutputError};
use crate::api::auth::ApiToken;
use crate::api::server::{router, AppState, Listeners};
use crate::config::Settings;
use crate::exit::{CliError, ErrorKind};
use crate::tasks::model::ModelBackend;
use crate::tasks::queue::TaskQueue;
use crate::tasks::recorder::StoreRecorder;

/// Environment variable giving the API token itself (instead of a token file).
const TOKEN_ENV: &str = "HEARTH_API_TOKEN";
/// How long a stopping daemon waits for its tasks' sandboxes to be removed.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Loopback address for the HTTP API (port 0 picks a free one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// Unix socket for the API, mode 0600 (default: <runtime dir>/api.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// File holding the bearer token (default: <state dir>/api-token, generated at first start;
    /// HEARTH_API_TOKEN gives the token itself).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Tasks that run at once; more wait queued, first come first served.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_concurrent: u16,
}

pub async fn run(args: ServeArgs, settings: &Settings) -> anyhow::Result<u8> {
    // Plain HTTP with a bearer token: fine on loopback, not across a network.
    if !args.listen.ip().is_loopback() {
        return Err(CliError::new(
            ErrorKind::BadInput,
            format!(
                "--listen {}: only loopback addresses are allowed",
                args.listen
            ),
        )
        .into());
    }
    let (token, token_origin) = load_token(&args, settings)?;
    let manager = Arc::new(settings.manager().await?);
    let tasks_dir = settings.state_dir.join("tasks");
    let interrupted = crate::tasks::restart::interrupt_abandoned(&manager, &tasks_dir).await?;
    manager.reconcile().await?;
    let (recorder, _writer) = StoreRecorder::start(manager.store.clone());
    let model = Arc::new(ModelBackend::from_env(Arc::new(recorder)).await?);
    let queue = TaskQueue::new(
        Arc::clone(&manager),
        Arc::clone(&model),
        tasks_dir,
        usize::from(args.max_concurrent),
    );
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| settings.runtime_dir.join("api.sock"));
    let listeners = Listeners::bind(args.listen, &socket).await?;
    let banner = (|| {
        outln!(
            "hearth serve: listening on http://{} and unix:{}",
            listeners.tcp_addr,
            listeners.unix_path.display()
        )?;
        outln!("hearth serve: API token from {token_origin}")?;
        outln!("hearth serve: model: {}", model.description)?;
        outln!(
            "hearth serve: at most {} tasks at once; {} task(s) of a stopped hearth process marked interrupted",
            args.max_concurrent,
            interrupted.len()
        )
    })();
    // A daemon whose starter stopped reading (`hearth serve | head -1`, to learn the port)
    // serves on: its clients use the sockets, not stdout.
    match banner {
        Ok(()) | Err(OutputError::Closed(_)) => {}
        Err(err) => return Err(err.into()),
    }
    tracing::info!(addr = %listeners.tcp_addr, socket = %socket.display(), "API listening");

    let app = router(
        AppState {
            manager,
            queue: queue.clone(),
        },
        token,
    );
    tokio::select! {
        result = listeners.serve(app) => result?,
        signal = stop_signal() => tracing::info!(signal, "stopping"),
    }
    queue.shutdown(SHUTDOWN_WAIT).await;
    let _ = std::fs::remove_file(&socket);
    Ok(0)
}

/// The token and where it came from (for the start message; never the token itself).
fn load_token(args: &ServeArgs, settings: &Settings) -> anyhow::Result<(ApiToken, String)> {
    if let Ok(raw) = std::env::var(TOKEN_ENV) {
        return Ok((ApiToken::given(&raw, TOKEN_ENV)?, TOKEN_ENV.to_owned()));
    }
    if let Some(path) = &args.token_file {
        return Ok((ApiToken::read(path)?, path.display().to_string()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(&settings.state_dir)
        .map_err(|err| {
            CliError::new(
                crate::exit::ErrorKind::HostLacks,
                format!("{}: {err}", settings.state_dir.display()),
            )
        })?;
    let path = settings.state_dir.join("api-token");
    Ok((
        ApiToken::read_or_generate(&path)?,
        path.display().to_string(),
    ))
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
