//! `GET /v1/tasks/{id}/events`: the task's timeline as Server-Sent Events.
//!
//! The stream replays the stored timeline after the client's position (`Last-Event-ID`, else
//! `?after=`, else the start), then follows new events until the task is final. It is a plain
//! `unfold` over the store: no task or timer is spawned per client, so a client that goes away
//! takes everything of its stream with it when hyper drops the body.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;

use super::server::AppState;
use super::tasks::parse_id;
use super::ApiError;
use crate::store::{Store, TaskId};

/// Re-read the store this often even without a change signal: writers in other processes (a
/// `hearth run` next to the daemon) do not signal this one.
const BACKSTOP: Duration = Duration::from_secs(2);
/// Comments on an idle stream keep proxies from closing it and reveal a vanished client.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub async fn events(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&raw)?;
    let after = position(&headers, query.as_deref())?;
    let store = state.store().clone();
    if store.get_task(&id).await?.is_none() {
        return Err(ApiError::TaskNotFound(id));
    }
    let follow = Follow {
        changes: store.timeline_changes(),
        store,
        id,
        after,
        pending: VecDeque::new(),
        last: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok(event), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Where to resume: the last event id the client saw (a timeline `seq`).
fn position(headers: &HeaderMap, query: Option<&str>) -> Result<i64, ApiError> {
    let bad = |what: &str, raw: &str| {
        ApiError::InvalidParam(crate::tasks::params::InvalidParam {
            field: if what == "header" {
                "Last-Event-ID"
            } else {
                "after"
            },
            problem: format!("{raw:?} is not a non-negative event sequence number"),
        })
    };
    if let Some(value) = headers.get("last-event-id") {
        let raw = value.to_str().unwrap_or("");
        return raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("header", raw));
    }
    let pairs = hearth_proto::query::parse(query.unwrap_or(""))
        .map_err(|_| bad("query", query.unwrap_or("")))?;
    match pairs.iter().find(|(key, _)| key == "after") {
        Some((_, raw)) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("query", raw)),
        None => Ok(0),
    }
}

#[derive(Debug)]
struct Follow {
    store: Store,
    id: TaskId,
    after: i64,
    changes: watch::Receiver<u64>,
    /// Events read but not yet sent: `(seq, kind, the event as JSON)`.
    pending: VecDeque<(i64, String, String)>,
    /// The task is final and its last events are in `pending`.
    last: bool,
}

impl Follow {
    /// The next SSE event, or `None` when the task is final and everything was sent.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some((seq, kind, json)) = self.pending.pop_front() {
                return Some(Event::default().id(seq.to_string()).event(kind).data(json));
            }
            if self.last {
                return None;
            }
            // Marked seen before reading, so a write after the read still wakes us.
            self.changes.borrow_and_update();
            match self.poll_store().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(task = %self.id, error = %err, "event stream ended by a store error");
                    self.last = true;
                    return Some(Event::default().event("error").data(err.to_string()));
                }
            }
            tokio::select! {
                _ = self.changes.changed() => {}
                () = tokio::time::sleep(BACKSTOP) => {}
            }
        }
    }

    /// Queues new events; returns whether there is anything to send.
    async fn poll_store(&mut self) -> Result<bool, crate::store::StoreError> {
        if self.read_events().await? {
            return Ok(true);
        }
        let finished = match self.store.get_task(&self.id).await? {
            Some(task) => task.status.is_final(),
            None => true,
        };
        if finished {
            // The final status and its `state` event are committed together: one more read
            // after seeing the status gets everything.
            self.read_events().await?;
            self.last = true;
            return Ok(true);
        }
        Ok(false)
    }

    async fn read_events(&mut self) -> Result<bool, crate::store::StoreError> {
        let events = self.store.events_after(&self.id, self.after).await?;
        for event in &events {
            self.after = event.seq;
            let json = serde_json::to_string(event).unwrap_or_default();
            self.pending
                .push_back((event.seq, event.kind.clone(), json));
        }
        Ok(!events.is_empty())
    }
}
