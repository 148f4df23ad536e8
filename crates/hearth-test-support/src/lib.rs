//! Test code shared by hearth's crates (a dev-dependency only, never published): the stand-in
//! Firecracker API and jailer ([`firecracker`]), and the network test hosts and test DNS
//! server the network tests send their traffic to ([`net`]).

// Fixtures held by tests, never printed; several hold closures or threads that have no `Debug`.
#![allow(missing_debug_implementations)]

pub mod firecracker;
pub mod net;
