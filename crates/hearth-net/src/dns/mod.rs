//! hearth's DNS resolver for one sandbox: the enforcement of `domain[:port]` allowlist rules.
//!
//! A sandbox's `/etc/resolv.conf` names its host-side address ([`super::SandboxLink::resolver`]),
//! where a [`SandboxResolver`] listens on UDP and TCP. For each query it decides from the
//! sandbox's domain rules alone:
//!
//! - **An allowed name, type A**: forwarded to the host's upstream resolver as a fresh query (new
//!   id, lower-cased name, nothing else from the sandbox's packet), and every address in the
//!   answer's CNAME chain is added to the sandbox's nft set ([`super::ruleset::DNS_ANY_SET`] for a
//!   bare `domain`, [`super::ruleset::DNS_PORT_SET`] as `address . port` for `domain:port`) in one
//!   atomic batch **before** the reply leaves, so the connection that follows is allowed.
//! - **An allowed name, any other type**: an empty NOERROR answer, not forwarded. AAAA gets no
//!   records because sandboxes have no IPv6; clients fall back to A.
//! - **Any other name**: NXDOMAIN, never forwarded, so a sandbox cannot smuggle data out in the
//!   names it looks up. NXDOMAIN rather than REFUSED: stub resolvers take NXDOMAIN as a final "no
//!   such name" and fail fast, while REFUSED makes them retry other servers and search domains.
//! - Responses, other opcodes, several questions, garbage: ignored, NOTIMP or FORMERR.
//!
//! Names match exactly (case-insensitively, trailing dot ignored). Subdomains of an allowed name
//! are **not** allowed: `api.example.com` does not open `x.api.example.com`, as the `--allow`
//! parser refuses `*.` wildcards. Listing each name keeps what a sandbox can reach visible in its
//! policy.
//!
//! # Timeouts
//! Each set element lives for the answer's TTL clamped to [`ResolverConfig::min_ttl`]..
//! [`ResolverConfig::max_ttl`] (default 60 s to 1 h), and the TTLs handed to the sandbox are cut to
//! the maximum so it never caches an address longer than the firewall allows it. The floor keeps
//! clients that hold an answer a little past a tiny TTL working; the ceiling bounds how long an
//! address stays open after the name moves away. Connections already established outlive their
//! element (the egress chain accepts established traffic first). A repeated answer refreshes the
//! element's timeout.
//!
//! # Shared-IP caveat
//! The firewall sees addresses, not names. Allowing a domain opens the addresses it resolves to,
//! and those may serve many other names: a CDN edge or a virtually hosted server answers for
//! whoever asks it by SNI or `Host:`. So `--allow a.example.com:443` lets the sandbox reach
//! every site behind the same address on port 443 while the element lives. Prefer narrow rules
//! (with a port), and use a CIDR rule or hearth's gateway where a destination must be exact.
//!
//! An answer pointing at a denied address does not open it: the sets are accepted after the
//! always-denied (metadata, loopback, other sandboxes) and private-range drops.

mod answer;
mod config;
mod nftset;
mod server;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::{system_upstream, upstream_from_resolv_conf, DomainRule, ResolverConfig};
pub use nftset::{add_elements, SetElement};
pub use server::{ResolverHandle, ResolverStats, SandboxResolver};
pub use upstream::UpstreamError;

use super::nft::NftError;

/// Why the resolver could not start, or why one query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read {}: {source}", path.display())]
    ResolvConf { path: PathBuf, source: io::Error },
    #[error("{} names no usable nameserver", path.display())]
    NoNameserver { path: PathBuf },
    #[error("domain rule {name:?} is not a valid DNS name")]
    BadRule { name: String },
    #[error("min_ttl {min} s is above max_ttl {max} s")]
    TtlRange { min: u32, max: u32 },
    #[error("cannot bind the sandbox resolver to {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: io::Error,
    },
    #[error("cannot start the runtime of the resolver on {addr}: {source}")]
    Runtime { addr: SocketAddr, source: io::Error },
    #[error("the resolver thread for {addr} panicked")]
    ThreadPanicked { addr: SocketAddr },
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("adding DNS answers to table inet {table} did not finish: {source}")]
    NftTask {
        table: String,
        source: tokio::task::JoinError,
    },
}
