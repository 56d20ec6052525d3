//! netaccel: a seccomp user-notification daemon that gives rootless
//! containers host-namespace TCP and UDP sockets, so their traffic skips the
//! user-mode network stack.
//!
//! Layers, bottom up:
//! - syscall wrappers: [`notify`] (the notify fd), [`tracee`] (the caller's
//!   memory and fds), [`netns`] (namespace identity), [`fdpass`];
//! - policy, plain Rust: [`sockaddr`], [`ignore`], [`connect`] (verdicts),
//!   [`bind`] and [`publish`] (published ports and their host listeners),
//!   [`sockopts`] (what to replay), [`route`] (egress pinning);
//! - serving: [`ifaddrs`], [`container`], [`daemon`], [`api`] (the
//!   bypass4netnsd-compatible HTTP API); and [`state`] /
//!   [`profile`] for the runtime protocol; [`runtime`], the OCI runtime wrapper.

pub mod api;
pub mod bind;
pub mod connect;
pub mod container;
pub mod daemon;
pub mod fdpass;
pub mod ifaddrs;
pub mod ignore;
pub mod netns;
pub mod notify;
pub mod profile;
pub mod publish;
pub mod route;
pub mod runtime;
pub mod sockaddr;
pub mod sockopts;
pub mod state;
pub mod tracee;

/// The user's runtime directory, `$XDG_RUNTIME_DIR`, when it is set.
pub fn runtime_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
}

/// Default daemon socket: `$XDG_RUNTIME_DIR/netaccel/netaccel.sock`.
pub fn default_socket_path() -> Option<std::path::PathBuf> {
    runtime_dir().map(|d| d.join("netaccel").join("netaccel.sock"))
}
