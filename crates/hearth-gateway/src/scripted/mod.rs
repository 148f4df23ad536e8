//! The scripted upstream: an OpenAI-compatible server that replays fixtures of model turns.
//! It is a fixture, not a model; tests, the demo and the benchmark use it instead of a paid API.

mod fixture;
mod server;

pub use fixture::{
    Fixture, FixtureError, FixtureToolCall, FixtureTurn, FixtureUsage, DEMO_FIXTURE_JSON,
    DEMO_PROMPT, DEMO_WORKSPACE_FILES,
};
pub use server::{ScriptedError, ScriptedRequest, ScriptedUpstream};
