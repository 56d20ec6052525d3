//! Micro-benchmarks of the daemon's hot path, so a regression shows up as a
//! number: the ignore-list lookup, and one notification handled end to end
//! (receive → decide → inject → respond) with a real seccomp notify fd.
//!
//! The notification benchmarks run a "container" thread whose connect(2) is
//! notified (a filter on that thread alone) and measure the full cycle per
//! connect: the thread's syscall, the round trip, and the daemon's work.
//! `notification/bare` is the floor the kernel sets: RECV and CONTINUE with
//! no decision at all, against `connect/no filter`, the same connect
//! without seccomp.
//! The bypass case needs root: it runs in a private network namespace with a
//! veth pair and no neighbour, so its SYNs never leave the namespace.

use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use criterion::{criterion_group, Criterion};
use ipnet::IpNet;
use netaccel::calls::{self, Accel, Event, Pending};
use netaccel::policy::ignore::IgnoreList;
use netaccel::policy::netview::NetView;
use netaccel::publish::Listeners;
use netaccel::route::Routes;
use netaccel::sockopts::HostDefaults;
use netaccel::sys::netns::NetnsCookie;
use netaccel::sys::notify::{Notification, NotifyFd};
use netaccel::sys::tracee::Callers;
use rootless_lab::seccomp::{notify_connect_on_this_thread, raw_connect};

fn ignore_lookup(c: &mut Criterion) {
    let mut list = IgnoreList::new(
        ["10.0.2.0/24", "10.96.0.0/16", "10.244.0.0/16", "fd00::/64"]
            .map(|n| n.parse::<IpNet>().expect("net")),
    );
    let miss_v4 = "192.0.2.7".parse().expect("ip");
    let hit_v4 = "10.244.3.9".parse().expect("ip");
    let miss_v6 = "2001:db8::1".parse().expect("ip");
    c.bench_function("ignore_lookup/4 nets, IPv4 miss", |b| {
        b.iter(|| list.is_ignored(std::hint::black_box(miss_v4)))
    });
    c.bench_function("ignore_lookup/4 nets, IPv4 hit", |b| {
        b.iter(|| list.is_ignored(std::hint::black_box(hit_v4)))
    });
    c.bench_function("ignore_lookup/4 nets, IPv6 miss", |b| {
        b.iter(|| list.is_ignored(std::hint::black_box(miss_v6)))
    });
    list.extend((0..60u8).map(|i| {
        format!("172.{}.0.0/16", 16 + (i % 16))
            .parse::<IpNet>()
            .expect("net")
    }));
    list.extend((0..60u16).map(|i| format!("fd{i:02x}::/16").parse::<IpNet>().expect("net")));
    c.bench_function("ignore_lookup/many nets, IPv4 miss", |b| {
        b.iter(|| list.is_ignored(std::hint::black_box(miss_v4)))
    });
}

/// One connect(2) of a fresh non-blocking TCP socket to `dst`, closed
/// after; returns 0 or the errno.
fn connect_once(dst: SocketAddrV4) -> i32 {
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .expect("socket");
    raw_connect(sock.as_fd(), dst)
}

/// A thread whose connects to `dst` are notified, looping until stopped.
struct Caller {
    stop: Arc<AtomicBool>,
    notify: NotifyFd,
}

impl Caller {
    fn start(dst: SocketAddrV4) -> Caller {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = stop.clone();
        std::thread::spawn(move || {
            let notify = notify_connect_on_this_thread().expect("seccomp notify filter");
            tx.send(notify).expect("send notify fd");
            while !flag.load(Ordering::Relaxed) {
                connect_once(dst);
            }
        });
        let notify = NotifyFd::new(rx.recv().expect("notify fd")).expect("notify fd");
        // As the daemon does: the caller is woken on the answering CPU.
        if let Err(e) = notify.enable_sync_wake_up() {
            eprintln!("synchronous wake-up unavailable ({e}); the cycle costs more than in the daemon");
        }
        Caller { stop, notify }
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        // Closing the listener fails the caller's pending connect with ENOSYS.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Receives the caller's next notification as the daemon does (a thread
/// blocked in RECV).
fn receive(notify: &NotifyFd) -> Notification {
    loop {
        match notify.recv() {
            Ok(n) => return n,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                assert!(!notify.hung_up(), "the caller thread is gone")
            }
            Err(e) => panic!("receiving: {e}"),
        }
    }
}

fn notification_cycle(c: &mut Criterion, name: &str, dst: SocketAddrV4, expect_bypass: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let routes = rt.block_on(async { Routes::open() }).expect("route socket");
    let caller = Caller::start(dst);
    // The caller's thread counts as the container: same namespace as ours.
    let accel = Accel {
        owner: 0,
        guarded: false,
        container_netns: NetnsCookie::current().expect("netns"),
        // The caller shares our namespace, so no host namespace of "ours"
        // may be set: its sockets would all look like the daemon's.
        host_netns: None,
        view: Arc::new(RwLock::new(NetView::default())),
        defaults: Arc::new(HostDefaults::probe().expect("socket defaults")),
        routes: Arc::new(routes),
        published: Vec::new(),
        listeners: Arc::new(Listeners::default()),
        callers: Callers::default(),
    };
    let mut handle_one = || {
        let n = receive(&caller.notify);
        let pending = Pending::new(&caller.notify, n.id);
        let handled = rt.block_on(calls::handle(&accel, &pending, &n)).expect("handled");
        pending.answer(handled.reply).expect("answered");
        handled.event
    };
    let first = handle_one();
    assert_eq!(
        matches!(first, Event::Bypassed { .. }),
        expect_bypass,
        "{name}: {first:?}"
    );
    c.bench_function(name, |b| b.iter(&mut handle_one));
}

/// The bare mechanism: the caller's connect notified and continued, no
/// decision; and the same connect with no filter.
fn floor(c: &mut Criterion) {
    let dst: SocketAddrV4 = "127.0.0.1:1".parse().expect("addr");
    let caller = Caller::start(dst);
    c.bench_function("notification/bare (RECV, CONTINUE)", |b| {
        b.iter(|| {
            let n = receive(&caller.notify);
            caller.notify.answer_continue(n.id).expect("answered")
        })
    });
    // The bypass path's second round trip: a socket installed in the
    // caller (always a reference to the same one here) before the answer.
    let spare = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .expect("socket");
    c.bench_function("notification/bare with ADDFD (RECV, ADDFD, CONTINUE)", |b| {
        b.iter(|| {
            let n = receive(&caller.notify);
            caller
                .notify
                .install_fd(n.id, spare.as_fd(), n.args[0] as i32, true)
                .expect("installed");
            caller.notify.answer_continue(n.id).expect("answered")
        })
    });
    drop(caller);
    c.bench_function("connect/no filter (loopback, refused)", |b| {
        b.iter(|| connect_once(dst))
    });
}

/// A child process whose connects to `dst` are notified, looping until
/// killed: the caller in another address space, as a container is. The
/// notify fd is copied out of it with `pidfd_getfd`.
struct ChildCaller {
    pid: libc::pid_t,
    notify: NotifyFd,
}

impl ChildCaller {
    fn start(dst: SocketAddrV4) -> Result<ChildCaller, String> {
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe` is a live array of two fds for the kernel to fill.
        if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the child only makes raw syscalls (no allocation, no
        // locks) until it is killed, so forking a multi-threaded process is
        // sound; it never returns into Rust code of the parent.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let fd = match notify_connect_on_this_thread() {
                Ok(fd) => std::os::fd::IntoRawFd::into_raw_fd(fd),
                Err(_) => -1,
            };
            // SAFETY: raw syscalls on fds this child owns; `_exit` never
            // returns, so nothing of the parent's state is touched.
            unsafe {
                libc::write(pipe[1], (&fd as *const i32).cast(), 4);
                if fd < 0 {
                    libc::_exit(1);
                }
                loop {
                    let sock = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                    raw_connect(std::os::fd::BorrowedFd::borrow_raw(sock), dst);
                    libc::close(sock);
                }
            }
        }
        let mut fd = -1i32;
        // SAFETY: reads 4 bytes into a live i32; the write end is the child's.
        let n = unsafe {
            libc::close(pipe[1]);
            let n = libc::read(pipe[0], (&mut fd as *mut i32).cast(), 4);
            libc::close(pipe[0]);
            n
        };
        let child = ChildCaller {
            pid,
            notify: NotifyFd::new(Self::copy_fd(pid, fd, n)?).map_err(|e| e.to_string())?,
        };
        if let Err(e) = child.notify.enable_sync_wake_up() {
            eprintln!("synchronous wake-up unavailable ({e})");
        }
        Ok(child)
    }

    fn copy_fd(pid: libc::pid_t, fd: i32, read: isize) -> Result<std::os::fd::OwnedFd, String> {
        if read != 4 || fd < 0 {
            // SAFETY: reaps our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            return Err("the child could not load its filter".into());
        }
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).ok_or("pid 0")?,
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| format!("pidfd_open: {e}"))?;
        rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
            .map_err(|e| format!("pidfd_getfd: {e}"))
    }
}

impl Drop for ChildCaller {
    fn drop(&mut self) {
        // SAFETY: signals and reaps our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The bare mechanism with the caller in another process: each cycle
/// switches address spaces twice, which a thread of the same process does
/// not.
fn floor_across_processes(c: &mut Criterion) {
    let dst: SocketAddrV4 = "127.0.0.1:1".parse().expect("addr");
    match ChildCaller::start(dst) {
        Ok(child) => {
            c.bench_function("notification/bare, caller in another process", |b| {
                b.iter(|| {
                    let n = receive(&child.notify);
                    child.notify.answer_continue(n.id).expect("answered")
                })
            });
        }
        Err(why) => eprintln!("skipped notification/bare across processes: {why}"),
    }
}

fn notifications(c: &mut Criterion) {
    floor(c);
    floor_across_processes(c);
    notification_cycle(
        c,
        "notification/kept (loopback, CONTINUE)",
        "127.0.0.1:1".parse().expect("addr"),
        false,
    );
    match private_network() {
        Ok(dst) => notification_cycle(
            c,
            "notification/bypassed (pin, connect, ADDFD, answer)",
            dst,
            true,
        ),
        Err(why) => eprintln!("skipped notification/bypassed: {why}"),
    }
}

/// Moves this process into a fresh network namespace with a veth pair
/// (10.99.0.1/24, no neighbour) and returns an address routed out of it.
fn private_network() -> Result<SocketAddrV4, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("needs root for a private network namespace".into());
    }
    // SAFETY: only the network namespace is unshared; what makes unshare
    // unsafe is unsharing the fd table or fs state, which this does not.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|e| format!("unshare: {e}"))?;
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "nb0", "type", "veth", "peer", "name", "nb1"],
        &["addr", "add", "10.99.0.1/24", "dev", "nb0"],
        &["link", "set", "nb0", "up"],
        &["link", "set", "nb1", "up"],
    ] {
        let st = Command::new("ip")
            .args(args)
            .status()
            .map_err(|e| format!("ip: {e}"))?;
        if !st.success() {
            return Err(format!("ip {args:?} failed"));
        }
    }
    Ok("10.99.0.2:80".parse().expect("addr"))
}

/// Connects per second of `callers` threads, each a loop of socket,
/// connect to a closed loopback port (refused at once), close; with
/// `receivers` threads answering CONTINUE to every notification of their
/// shared filter, or with no filter at all (`receivers` 0). With `install`,
/// each answer first installs a socket in the caller (`ADDFD`), as a
/// bypass does. This is the floor the kernel sets under concurrency for
/// connects the fast path keeps (and, with `install`, bypasses): no
/// decision is made.
fn notified_rate(callers: usize, receivers: usize, install: bool, run: std::time::Duration) -> f64 {
    let dst: SocketAddrV4 = "127.0.0.1:1".parse().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let parent = {
        let (stop, count) = (stop.clone(), count.clone());
        std::thread::spawn(move || {
            // Threads started by a filtered thread inherit its filter: the
            // callers share one notify fd, as a container's threads do.
            let notify = if receivers > 0 {
                Some(notify_connect_on_this_thread().expect("seccomp notify filter"))
            } else {
                None
            };
            tx.send(notify).expect("send notify fd");
            let workers: Vec<_> = (0..callers)
                .map(|_| {
                    let (stop, count) = (stop.clone(), count.clone());
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            connect_once(dst);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let _ = go_rx.recv();
            for w in workers {
                let _ = w.join();
            }
        })
    };
    let notify = rx
        .recv()
        .expect("notify fd")
        .map(|fd| Arc::new(NotifyFd::new(fd).expect("notify fd")));
    let answering: Vec<_> = notify
        .iter()
        .flat_map(|notify| {
            if let Err(e) = notify.enable_sync_wake_up() {
                eprintln!("synchronous wake-up unavailable ({e})");
            }
            (0..receivers).map(move |_| {
                let notify = notify.clone();
                std::thread::spawn(move || loop {
                    match notify.recv() {
                        Ok(n) => {
                            if install {
                                // A socket of its own for each call, as a
                                // bypass makes.
                                let spare = rustix::net::socket(
                                    rustix::net::AddressFamily::INET,
                                    rustix::net::SocketType::STREAM,
                                    None,
                                )
                                .expect("socket");
                                let _ = notify.install_fd(n.id, spare.as_fd(), n.args[0] as i32, true);
                            }
                            let _ = notify.answer_continue(n.id);
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                            if notify.hung_up() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                })
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = count.load(Ordering::Relaxed);
    std::thread::sleep(run);
    let done = count.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let _ = go_tx.send(());
    let _ = parent.join();
    drop(notify);
    for a in answering {
        let _ = a.join();
    }
    done as f64 / run.as_secs_f64()
}

/// Prints the kernel's floor for kept and bypassed connects under
/// concurrency.
fn concurrency_floor() {
    let run = std::time::Duration::from_secs(2);
    println!("\nfloor under concurrency (connects/s; synchronous wake-up; no decision made):");
    println!("| callers | answer | no filter | 1 receiver | 2 receivers | 4 receivers |");
    println!("|---:|---|---:|---:|---:|---:|");
    for callers in [1, 4] {
        // Without a filter there is nothing to answer: one run serves both rows.
        let unfiltered = notified_rate(callers, 0, false, run);
        for install in [false, true] {
            let rates: Vec<String> = [1, 2, 4]
                .iter()
                .map(|&r| {
                    let rate = notified_rate(callers, r, install, run);
                    format!("{rate:.0} ({:.2}x)", rate / unfiltered)
                })
                .collect();
            let answer = if install { "ADDFD, CONTINUE" } else { "CONTINUE" };
            println!(
                "| {callers} | {answer} | {unfiltered:.0} | {} |",
                rates.join(" | ")
            );
        }
    }
}

criterion_group!(benches, ignore_lookup, notifications);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Not a criterion benchmark: rates of several threads at once, 16 runs
    // of 2 s. Only on request: `cargo bench --bench hot_path -- floor`.
    if std::env::args().skip(1).any(|a| a == "floor") {
        concurrency_floor();
    }
}
