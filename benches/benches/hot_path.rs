//! Micro-benchmarks of the daemon's hot path, so a regression shows up as a
//! number: the ignore-list lookup, and one notification handled end to end
//! (receive → decide → inject → respond) with a real seccomp notify fd.
//!
//! The notification benchmarks run a "container" thread whose connect(2) is
//! notified (a filter on that thread alone) and measure the full cycle per
//! connect: the thread's syscall, the round trip, and the daemon's work.
//! The bypass case needs root: it runs in a private network namespace with a
//! veth pair and no neighbour, so its SYNs never leave the namespace.

use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use criterion::{criterion_group, Criterion};
use ipnet::IpNet;
use netaccel::connect::{self, ConnectContext, Outcome};
use netaccel::ifaddrs::NetView;
use netaccel::ignore::IgnoreList;
use netaccel::netns::NetnsCookie;
use netaccel::notify::{NotifyFd, Readiness};
use netaccel::publish::Listeners;
use netaccel::route::Routes;
use netaccel::sockopts::HostDefaults;
use netaccel::tracee::Callers;
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
                let sock = rustix::net::socket_with(
                    rustix::net::AddressFamily::INET,
                    rustix::net::SocketType::STREAM,
                    rustix::net::SocketFlags::NONBLOCK,
                    None,
                )
                .expect("socket");
                raw_connect(sock.as_fd(), dst);
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

fn notification_cycle(c: &mut Criterion, name: &str, dst: SocketAddrV4, expect_bypass: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let routes = rt.block_on(async { Routes::open() }).expect("route socket");
    let defaults = HostDefaults::probe().expect("socket defaults");
    let view = RwLock::new(NetView::default());
    let listeners = Listeners::default();
    let callers = Callers::default();
    let caller = Caller::start(dst);
    // The caller's thread counts as the container: same namespace as ours.
    let ctx = ConnectContext {
        notify: &caller.notify,
        container_netns: NetnsCookie::current().expect("netns"),
        // The caller shares our namespace, so no host namespace of "ours"
        // may be set: its sockets would all look like the daemon's.
        host_netns: None,
        view: &view,
        defaults: &defaults,
        routes: &routes,
        published: &[],
        owner: 0,
        listeners: &listeners,
        callers: &callers,
    };
    let mut handle_one = || {
        // Received as the daemon receives: a poll(2) wait, then RECV.
        loop {
            match ctx.notify.wait().expect("wait on notify fd") {
                Readiness::Notification => break,
                Readiness::Interrupted => {}
                Readiness::Hangup => panic!("the caller thread is gone"),
            }
        }
        let n = ctx.notify.recv().expect("notification");
        rt.block_on(connect::handle(&ctx, &n)).expect("handled")
    };
    let first = handle_one();
    assert_eq!(
        matches!(first, Outcome::Bypassed { .. }),
        expect_bypass,
        "{name}: {first:?}"
    );
    c.bench_function(name, |b| b.iter(&mut handle_one));
}

fn notifications(c: &mut Criterion) {
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

criterion_group!(benches, ignore_lookup, notifications);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
