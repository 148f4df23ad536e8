//! Shared by the `firecracker_*` tests: Firecracker's API spec as a request checker, and a
//! local server that speaks that API (Firecracker itself can't run on these machines).

#![allow(dead_code)]

pub mod fake_api;
pub mod spec;
