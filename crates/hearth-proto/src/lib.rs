//! Messages exchanged between the host (`hearth`) and the in-sandbox daemon (`hearth-guest`).
//!
//! The transport is HTTP/1.1 with JSON bodies over a stream (a Unix socket for OCI sandboxes,
//! vsock or a serial port for microVMs), so these types are the whole contract between both sides.
