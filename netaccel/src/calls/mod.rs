//! The syscalls the daemon acts on.
//!
//! [`SYSCALLS`] is the one table of them: name, number, when a container's
//! profile notifies it (with its argument filter), how its arguments are
//! decoded and which handler serves it. The seccomp profile
//! (`oci::profile`), the runtime wrapper's merge (`oci::runtime`) and the
//! dispatcher ([`handle`]) all read it, so adding a syscall is one entry
//! here and one handler file. Handlers decide and return a [`Reply`]; only
//! the dispatcher answers the kernel ([`Pending::answer`]).

pub mod bind;
pub mod connect;
mod reply;
pub mod shutdown;
pub mod socket;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

pub use reply::{AfterInstall, Answered, Pending, Reply};

use crate::policy::fallback::Fallback;
use crate::policy::netview::NetView;
use crate::policy::sockaddr::SockaddrCall;
use crate::policy::verdict::Keep;
use crate::publish::{Listener, Listeners, PortMapping};
use crate::route::Routes;
use crate::sockopts::HostDefaults;
use crate::sys::netns::NetnsCookie;
use crate::sys::notify::Notification;
use crate::sys::tracee::Callers;

/// `AUDIT_ARCH_*` of the daemon's own architecture: the only one whose calls
/// are handled (others continue unchanged; see `oci::profile` for the
/// containers where other architectures are not allowed at all).
#[cfg(target_arch = "x86_64")]
pub const NATIVE_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
pub const NATIVE_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// A syscall the fast path has a rule for.
#[derive(Debug)]
pub struct Syscall {
    /// The libseccomp name, as OCI profiles spell it.
    pub name: &'static str,
    /// Its number on the native architecture (`libc::SYS_*` is per target).
    pub nr: i64,
    /// Which containers get the rule.
    pub wanted: Wanted,
    /// The rule: notify the daemon (only when `filter` holds), or fail.
    pub action: Action,
    /// Conditions on arguments that the kernel checks before notifying,
    /// so calls that cannot matter never cost a round trip.
    pub filter: &'static [ArgFilter],
    /// How the handler's arguments are read from the raw ones.
    pub args: Args,
    /// Whether the call may continue unchecked when no daemon decides it
    /// (see `policy::fallback`).
    pub undecided: Undecided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// Running it unchanged cannot let a host socket of ours reach the host.
    Continues,
    /// In a container holding host listeners, running it unchecked could
    /// turn one into a socket that reaches host loopback: it fails with
    /// ENOSYS instead, as when no daemon existed.
    FailsWithListeners,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Every container on the fast path.
    Always,
    /// Containers whose published ports the daemon binds on the host: the
    /// bind itself and the guards that keep the host listener a listener.
    BindBypass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Notify(Handler),
    /// Fail every call with this errno in the kernel, never notified.
    Fail(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Connect,
    Bind,
    Shutdown,
}

/// A seccomp argument condition (OCI `LinuxSeccompArg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgFilter {
    pub index: u32,
    pub value: u64,
    /// The libseccomp comparison, as OCI spells it (`SCMP_CMP_NE`…).
    pub op: &'static str,
}

/// The argument layouts of the handled syscalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args {
    /// `(int fd, const struct sockaddr *addr, socklen_t len)`.
    Sockaddr,
    /// `(int fd, int how)`.
    FdHow,
    /// Nothing is read (the call is never notified).
    None,
}

/// Arguments decoded as the kernel would read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Sockaddr(SockaddrCall),
    FdHow { fd: i32, how: i32 },
}

impl Args {
    /// `None` for values the kernel rejects by itself: such calls continue
    /// and get the kernel's own errno.
    pub fn decode(self, args: &[u64; 6]) -> Option<Call> {
        match self {
            Args::Sockaddr => SockaddrCall::from_args(args).map(Call::Sockaddr),
            // The kernel truncates both to int.
            Args::FdHow => Some(Call::FdHow {
                fd: args[0] as u32 as i32,
                how: args[1] as u32 as i32,
            }),
            Args::None => None,
        }
    }
}

pub const SYSCALLS: &[Syscall] = &[
    Syscall {
        name: "connect",
        nr: libc::SYS_connect,
        wanted: Wanted::Always,
        action: Action::Notify(Handler::Connect),
        filter: &[],
        args: Args::Sockaddr,
        // connect(AF_UNSPEC) on a listener disconnects it.
        undecided: Undecided::FailsWithListeners,
    },
    Syscall {
        name: "bind",
        nr: libc::SYS_bind,
        wanted: Wanted::BindBypass,
        action: Action::Notify(Handler::Bind),
        filter: &[],
        args: Args::Sockaddr,
        // The kernel refuses to bind a bound socket, so a listener stays one.
        undecided: Undecided::Continues,
    },
    // shutdown(SHUT_RD or SHUT_RDWR) turns a listener back into a closed
    // socket that could connect from the host; SHUT_WR cannot.
    Syscall {
        name: "shutdown",
        nr: libc::SYS_shutdown,
        wanted: Wanted::BindBypass,
        action: Action::Notify(Handler::Shutdown),
        filter: &[ArgFilter {
            index: 1,
            value: libc::SHUT_WR as u64,
            op: "SCMP_CMP_NE",
        }],
        args: Args::FdHow,
        undecided: Undecided::FailsWithListeners,
    },
    // io_uring runs socket operations without any syscall we could see.
    Syscall {
        name: "io_uring_setup",
        nr: libc::SYS_io_uring_setup,
        wanted: Wanted::BindBypass,
        action: Action::Fail(libc::ENOSYS),
        filter: &[],
        args: Args::None,
        undecided: Undecided::Continues,
    },
];

/// The table's entries a container gets.
pub fn for_container(bind_bypass: bool) -> impl Iterator<Item = &'static Syscall> {
    SYSCALLS
        .iter()
        .filter(move |s| s.wanted == Wanted::Always || bind_bypass)
}

/// How a container's calls end when no daemon decides them: everything
/// continues unless it holds host listeners (see [`Undecided`]).
pub fn undecided_answers(has_listeners: bool) -> Fallback {
    if !has_listeners {
        return Fallback::continue_all();
    }
    let fail = SYSCALLS
        .iter()
        .filter(|s| matches!(s.action, Action::Notify(_)) && s.undecided == Undecided::FailsWithListeners)
        .map(|s| (s.nr as i32, libc::ENOSYS))
        .collect();
    Fallback::failing(fail)
}

/// The handler of a notification, with its decoded arguments; `None` when
/// the daemon does not act on it (another architecture, a call the kernel
/// rejects by itself).
pub fn route(n: &Notification) -> Option<(Handler, Call)> {
    if n.arch != NATIVE_ARCH {
        return None;
    }
    let entry = SYSCALLS.iter().find(|s| s.nr == i64::from(n.nr))?;
    let Action::Notify(handler) = entry.action else {
        return None;
    };
    Some((handler, entry.args.decode(&n.args)?))
}

/// Everything the handlers need about an accelerated container; built once
/// at registration and borrowed by every call.
pub struct Accel {
    /// The container (`Container::serial`), owner of its host listeners.
    pub owner: u64,
    /// Its profile is netaccel's, rendered with published ports, and it has
    /// published ports: it carries the guards for host sockets that cannot
    /// be pinned (io_uring refused, native code only, `shutdown` notified;
    /// see `Wanted::BindBypass`), and its `connect(AF_UNSPEC)` and connects
    /// on such sockets are decided by the connect handler. Without them a
    /// disconnect would turn an unpinned host socket into one that connects
    /// anywhere from the host, by `connect`, io_uring or
    /// `sendto(MSG_FASTOPEN)`.
    pub guarded: bool,
    pub container_netns: NetnsCookie,
    /// The daemon's (host) namespace, where every socket it hands out lives.
    pub host_netns: Option<NetnsCookie>,
    pub view: Arc<RwLock<NetView>>,
    pub defaults: Arc<HostDefaults>,
    pub routes: Arc<Routes>,
    /// The container's published ports whose binds the daemon takes over.
    pub published: Vec<PortMapping>,
    /// Every host listener the daemon bound for its containers.
    pub listeners: Arc<Listeners>,
    /// Handles on the container's recent calling threads.
    pub callers: Callers,
}

/// What a handler decided, and what it means for counters and logs.
#[derive(Debug)]
pub struct Handled {
    pub reply: Reply,
    pub event: Event,
}

/// How a notification ended, for counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The container now holds a host socket connected (or connecting) to
    /// `dst`; `errno` is what the call returned (0 or EINPROGRESS).
    Bypassed { dst: SocketAddr, errno: i32 },
    /// The host connect failed at once; the container's socket is untouched.
    Failed { dst: SocketAddr, errno: i32 },
    /// The container now holds a host listener on `host`; `listener` is
    /// recorded once it is installed.
    Published {
        host: SocketAddr,
        container_port: u16,
        listener: Listener,
    },
    /// The host refused the bind of a published port (port taken…): the
    /// errno is the container's answer, its socket is untouched.
    HostRefused { host: SocketAddr, errno: i32 },
    /// Run by the daemon on its own copy of the socket, with this result.
    Done { errno: i32 },
    /// Ended with an error without running: the call would have let a host
    /// socket of ours reach the host.
    Refused { errno: i32 },
    /// The kernel ran the syscall on the container's own path.
    Kept(Keep),
    /// The caller died or was interrupted while we worked.
    CallerGone,
}

impl Handled {
    pub fn keep(reason: Keep) -> Self {
        Self {
            reply: Reply::Continue,
            event: Event::Kept(reason),
        }
    }

    pub fn gone() -> Self {
        Self {
            reply: Reply::Gone,
            event: Event::CallerGone,
        }
    }

    /// Ends the call with `errno` without running it.
    pub fn refuse(errno: i32) -> Self {
        Self {
            reply: Reply::errno(errno),
            event: Event::Refused { errno },
        }
    }

    /// Ends the call with the result of running it ourselves.
    pub fn done(errno: i32) -> Self {
        Self {
            reply: Reply::errno(errno),
            event: Event::Done { errno },
        }
    }
}

/// Runs the handler of `n` (which must have come through [`route`]).
pub async fn handle(accel: &Accel, pending: &Pending<'_>, n: &Notification) -> io::Result<Handled> {
    match route(n) {
        Some((Handler::Connect, Call::Sockaddr(call))) => connect::handle(accel, pending, n, call).await,
        Some((Handler::Bind, Call::Sockaddr(call))) => bind::handle(accel, pending, n, call),
        Some((Handler::Shutdown, Call::FdHow { fd, how })) => shutdown::handle(accel, pending, n, fd, how),
        Some(_) => Ok(Handled::keep(Keep::NotApplicable)),
        None => Ok(Handled::keep(Keep::NotHandled)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(nr: i64, arch: u32, args: [u64; 6]) -> Notification {
        Notification {
            id: 1,
            pid: 1,
            nr: nr as i32,
            arch,
            args,
        }
    }

    #[test]
    fn notifications_reach_their_handler_with_decoded_arguments() {
        let connect = note(libc::SYS_connect, NATIVE_ARCH, [3, 0x1000, 16, 0, 0, 0]);
        assert_eq!(
            route(&connect),
            Some((
                Handler::Connect,
                Call::Sockaddr(SockaddrCall {
                    fd: 3,
                    addr_ptr: 0x1000,
                    addr_len: 16
                })
            ))
        );
        let shutdown = note(libc::SYS_shutdown, NATIVE_ARCH, [4, 2, 0, 0, 0, 0]);
        assert_eq!(
            route(&shutdown),
            Some((Handler::Shutdown, Call::FdHow { fd: 4, how: 2 }))
        );
        let bad_len = note(libc::SYS_bind, NATIVE_ARCH, [3, 0x1000, 129, 0, 0, 0]);
        assert_eq!(route(&bad_len), None, "the kernel rejects it itself");
        let compat = note(libc::SYS_connect, 0x4000_0003, [3, 0x1000, 16, 0, 0, 0]);
        assert_eq!(route(&compat), None, "i386 calls continue");
        let other = note(libc::SYS_read, NATIVE_ARCH, [0; 6]);
        assert_eq!(route(&other), None);
    }

    /// The names of the syscalls notified for a container.
    fn notified_names(bind_bypass: bool) -> impl Iterator<Item = &'static str> {
        for_container(bind_bypass)
            .filter(|s| matches!(s.action, Action::Notify(_)))
            .map(|s| s.name)
    }

    #[test]
    fn every_notified_syscall_has_a_handler_and_a_unique_number() {
        for s in SYSCALLS {
            assert_eq!(SYSCALLS.iter().filter(|o| o.nr == s.nr).count(), 1, "{}", s.name);
            if let Action::Notify(_) = s.action {
                assert_ne!(s.args, Args::None, "{} is notified but decodes nothing", s.name);
            }
        }
        assert_eq!(notified_names(false).collect::<Vec<_>>(), ["connect"]);
        assert_eq!(
            notified_names(true).collect::<Vec<_>>(),
            ["connect", "bind", "shutdown"]
        );
    }

    #[test]
    fn undecided_calls_continue_unless_they_could_undo_a_listener_guard() {
        use crate::policy::fallback::Answer;
        let open = undecided_answers(false);
        for s in SYSCALLS {
            assert_eq!(open.answer(s.nr as i32), Answer::Continue, "{}", s.name);
        }
        assert_eq!(open.answer_unknown(), Answer::Continue);
        let guarded = undecided_answers(true);
        let fails = |nr: i64| guarded.answer(nr as i32) == Answer::Fail(libc::ENOSYS);
        assert!(
            fails(libc::SYS_connect),
            "connect(AF_UNSPEC) disconnects a listener"
        );
        assert!(fails(libc::SYS_shutdown), "shutdown(SHUT_RD) reopens a listener");
        assert!(!fails(libc::SYS_bind), "a bound listener cannot be bound again");
        assert_eq!(guarded.answer_unknown(), Answer::Fail(libc::ENOSYS));
    }
}
