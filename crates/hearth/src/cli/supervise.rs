//! The hidden `hearth sandbox supervise ID`: a sandbox's supervisor, started by `create` (see
//! `supervisor::launch`), never by hand. It needs the sandbox's dir and the store, not a whole
//! sandbox manager, so it is dispatched apart from the other `hearth sandbox` commands.

use clap::Args;
use hearth_sandbox::SandboxId;

use crate::supervisor;
use crate::supervisor::net::NetDuty;
use crate::supervisor::relay::RelayDuty;
use crate::supervisor::run::Duties;

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Sandbox id.
    id: String,
    /// Answer and record the calls the sandbox's seccomp policy audits.
    #[arg(long)]
    seccomp: bool,
    /// The sandbox's network (JSON): resolve its allowed names and record its drops.
    #[arg(long, value_name = "JSON")]
    net: Option<String>,
    /// The VM's guest channel (JSON): serve the guest socket and forward it into the VM.
    #[arg(long, value_name = "JSON")]
    relay: Option<String>,
}

/// `hearth sandbox supervise ID` (started by `create`, never by hand).
pub async fn run(args: SuperviseArgs, settings: &crate::config::Settings) -> anyhow::Result<u8> {
    let id = SandboxId::parse(&args.id)?;
    let net = args
        .net
        .as_deref()
        .map(serde_json::from_str::<NetDuty>)
        .transpose()?;
    let relay = args
        .relay
        .as_deref()
        .map(serde_json::from_str::<RelayDuty>)
        .transpose()?;
    let duties = Duties {
        seccomp: args.seccomp,
        net,
        relay,
    };
    supervisor::run::run(id, &settings.runtime_dir, &settings.state_dir, duties).await
}
