//! The bounded audit of refused system calls.
