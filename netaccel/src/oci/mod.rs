//! What OCI runtimes and engines hand us, and what we hand them: the
//! runtime's state message (`state`), the seccomp profile a container needs
//! (`profile`), and the runtime wrapper that merges it into an engine's
//! bundle (`runtime`).
#![forbid(unsafe_code)]

pub mod profile;
pub mod runtime;
pub mod state;
