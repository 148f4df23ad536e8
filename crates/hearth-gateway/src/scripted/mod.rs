//! The scripted upstream: an OpenAI-compatible server that replays fixtures of model turns.
//! It is a fixture, not a model; tests, the demo and the benchmark use it instead of a paid API.
//!
//! The turn it answers is the number of assistant messages already in the request, so
//! conversations need no key or server-side state: any number run side by side on one server,
//! and a retried request gets the same turn again. A request past the fixture's last turn gets
//! HTTP 500 with code `fixture_exhausted`.

mod fixture;
mod server;

pub use fixture::{
    Fixture, FixtureError, FixtureToolCall, FixtureTurn, FixtureUsage, DEMO_FIXTURE_JSON,
    DEMO_PROMPT, DEMO_WORKSPACE_FILES,
};
pub use server::{ScriptedError, ScriptedRequest, ScriptedUpstream};
