//! Receiving seccomp user notifications from an OCI runtime (`listenerPath`).
