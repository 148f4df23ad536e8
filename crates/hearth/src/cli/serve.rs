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
    /// Loopback address of the E2B-compatible API (control plane and envd data plane; point
    /// both E2B_API_URL and E2B_SANDBOX_URL at it, E2B_API_KEY = the API token) [default:
    /// 127.0.0.1:49982, skipped with a warning if that port is taken].
    #[arg(long, value_name = "ADDR")]
    e2b_listen: Option<SocketAddr>,
    /// Do not serve the E2B-compatible API.
    #[arg(long, conflicts_with = "e2b_listen")]
    no_e2b: bool,
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
    if let Some(addr) = args.e2b_listen.filter(|addr| !addr.ip().is_loopback()) {
        return Err(CliError::new(
            ErrorKind::BadInput,
            format!("--e2b-listen {addr}: only loopback addresses are allowed"),
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
    let e2b_listener = if args.no_e2b {
        None
    } else {
        bind_e2b(args.e2b_listen).await?
    };
    let banner = (|| {
        outln!(
            "hearth serve: listening on http://{} and unix:{}",
            listeners.tcp_addr,
            listeners.unix_path.display()
        )?;
        outln!("hearth serve: API token from {token_origin}")?;
        if let Some((_, addr)) = &e2b_listener {
            outln!(
                "hearth serve: E2B-compatible API on http://{addr} (E2B_API_URL and E2B_SANDBOX_URL)"
            )?;
        }
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

    let e2b_state = crate::e2b::E2bState::new(Arc::clone(&manager), token.clone());
    let e2b = async {
        match e2b_listener {
            Some((listener, _)) => {
                tokio::spawn(crate::e2b::deadlines::run(e2b_state.clone()));
                let listener = crate::api::server::no_delay(listener);
                axum::serve(listener, crate::e2b::router(e2b_state)).await
            }
            None => std::future::pending().await,
        }
    };
    let app = router(
        AppState {
            manager,
            queue: queue.clone(),
        },
        token,
    );
    tokio::select! {
        result = listeners.serve(app) => result?,
        result = e2b => result.map_err(crate::api::server::ServeError::Serve)?,
        signal = stop_signal() => tracing::info!(signal, "stopping"),
    }
    queue.shutdown(SHUTDOWN_WAIT).await;
    let _ = std::fs::remove_file(&socket);
    Ok(0)
}

/// Where the E2B-compatible API listens unless `--e2b-listen` says otherwise.
const DEFAULT_E2B_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 49982);

/// The E2B API's listener. An address given with `--e2b-listen` must be bound; the default is
/// skipped with a warning when something else has it, so a daemon that started before this
/// API existed still starts.
async fn bind_e2b(
    asked: Option<SocketAddr>,
) -> anyhow::Result<Option<(tokio::net::TcpListener, SocketAddr)>> {
    let addr = asked.unwrap_or(DEFAULT_E2B_LISTEN);
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            let bound = listener.local_addr().unwrap_or(addr);
            Ok(Some((listener, bound)))
        }
        Err(err) if asked.is_none() && err.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!(
                "hearth serve: warning: the E2B-compatible API is not served: {addr} is in use \
                 (pick another with --e2b-listen ADDR)"
            );
            Ok(None)
        }
        Err(err) => Err(CliError::new(
            ErrorKind::HostLacks,
            format!("cannot listen on {addr} for the E2B API: {err} (--e2b-listen, or --no-e2b)"),
        )
        .into()),
    }
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
