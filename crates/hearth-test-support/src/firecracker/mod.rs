//! Shared by the `firecracker_*` tests: Firecracker's API spec as a request checker, a local
//! server that speaks that API, and a stand-in jailer (Firecracker itself can't run on these
//! machines).

pub mod fake_api;
pub mod jailer;
pub mod spec;
