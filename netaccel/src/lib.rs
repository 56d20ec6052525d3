//! netaccel: a seccomp user-notification daemon that gives rootless
//! containers host-namespace TCP and UDP sockets, so their traffic skips the
//! user-mode network stack.
//!
//! Layers, bottom up; the compiler keeps `unsafe` in the first:
//! - [`sys`]: every raw syscall and every `unsafe` block (the notify fd, the
//!   caller's memory and fds, namespaces, fd passing, device pins);
//! - [`policy`]: pure decisions with unit tests (addresses, ignore list,
//!   a container's view of its network, verdicts);
//! - [`calls`]: the syscall table and one handler per syscall; handlers
//!   return a `Reply`, which only the dispatcher sends;
//! - serving: [`container`] (threads per notify fd), [`daemon`]
//!   (registrations), [`api`] (the bypass4netnsd-compatible HTTP API), with
//!   host facts from [`route`], [`ifaddrs`], [`sockopts`] and [`publish`];
//! - [`oci`]: the runtime's state message, the seccomp profile and the
//!   runtime wrapper;
//! - [`keeper`]: the process that holds every notify fd while no daemon
//!   runs, its protocol, and the daemon's side of it; with [`restore`],
//!   what the daemon keeps there and how a new daemon re-attaches.
#![deny(unsafe_code)]

pub mod api;
pub mod calls;
pub mod container;
pub mod daemon;
pub mod ifaddrs;
pub mod keeper;
pub mod oci;
pub mod policy;
pub mod private_socket;
pub mod publish;
pub mod restore;
pub mod route;
pub mod sockopts;
pub mod sys;

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
