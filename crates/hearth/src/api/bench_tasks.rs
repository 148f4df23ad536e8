//! `hearth bench tasks`: agent tasks per second end to end (real sandboxes, the real agent, the
//! scripted upstream) through the daemon's queue, and the gateway's added latency per call
//! next to a direct call to the same upstream, measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::cli::output::{self, outln};
use crate::config::Settings;
use crate::exit::{CliError, ErrorKind};
use crate::store::TaskStatus;
use crate::tasks::model::{ModelBackend, BASE_URL_ENV};
use crate::tasks::params::TaskParams;
use crate::tasks::queue::TaskQueue;
use crate::tasks::recorder::StoreRecorder;

#[derive(Debug, Args)]
pub struct TasksBenchArgs {
    /// Tasks to run (each replays the demo fixture: six model turns, MCP tool calls, a diff).
    #[arg(long, default_value_t = 8)]
    tasks: usize,
    /// Tasks running at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Calls per path for the gateway overhead.
    #[arg(long, default_value_t = 500)]
    calls: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: TasksBenchArgs, settings: &Settings) -> anyhow::Result<u8> {
    if std::env::var_os(BASE_URL_ENV).is_some() {
        return Err(CliError::new(
            ErrorKind::BadInput,
            format!("unset {BASE_URL_ENV}: the benchmark uses the scripted upstream"),
        )
        .into());
    }
    let manager = Arc::new(settings.manager().await?);
    manager.reconcile().await?;
    let (recorder, _writer) = StoreRecorder::start(manager.store.clone());
    let model = Arc::new(ModelBackend::from_env(Arc::new(recorder)).await?);
    let queue = TaskQueue::new(
        Arc::clone(&manager),
        model,
        settings.state_dir.join("tasks"),
        args.concurrency,
    );
    let params: TaskParams =
        serde_json::from_value(json!({"prompt": "Make the failing test pass."}))?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(args.tasks);
    for _ in 0..args.tasks {
        ids.push(queue.submit(params.validate()?).await?.id);
    }
    while queue.load().0 > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let mut latencies = Vec::new();
    let mut succeeded = 0;
    for id in &ids {
        if let Some(task) = manager.store.get_task(id).await? {
            succeeded += usize::from(task.status == TaskStatus::Succeeded);
            let ms = task.finished_at.unwrap_or(task.created_at) - task.created_at;
            latencies.push(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        }
    }
    let latency = crate::bench::Percentiles::of(latencies);
    let rate = f64::from(u32::try_from(args.tasks).unwrap_or(u32::MAX)) / wall.as_secs_f64();
    let gateway = hearth_gateway::bench::gateway_overhead(args.calls).await?;
    if args.json {
        let report = json!({
            "tasks": args.tasks, "concurrency": args.concurrency, "succeeded": succeeded,
            "wall_s": wall.as_secs_f64(), "tasks_per_s": rate, "task_latency": latency,
            "gateway": {"calls": gateway.calls, "direct_p50_us": gateway.direct.p50_us,
                        "gateway_p50_us": gateway.gateway.p50_us, "overhead_p50_us": gateway.overhead_p50_us()},
        });
        output::print_json(&report)?;
    } else {
        outln!(
            "{} tasks, {} at once, scripted upstream (demo fixture)",
            args.tasks,
            args.concurrency
        )?;
        outln!("  succeeded                    {succeeded}/{}", args.tasks)?;
        outln!("  wall time                    {:.2} s", wall.as_secs_f64())?;
        outln!("  tasks per second             {rate:.2}")?;
        outln!(
            "  task latency (queued->done)  p50 {:.0} ms  p99 {:.0} ms",
            latency.p50_ms,
            latency.p99_ms
        )?;
        outln!("{gateway}")?;
    }
    Ok(0)
}
