//! labnet: network probes for the lab, run on hosts, peers and in containers.
//! Every command prints one JSON object per result on stdout.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Network probes for the rootless lab")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server: echoes every connection, then prints its peer and byte count.
    Serve {
        listen: SocketAddr,
        /// Exit after this many connections (0 = never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// A listener whose accept queue is kept full, so new SYNs are dropped
    /// and connects to it hang (a slow destination that stays on this machine).
    Blackhole { listen: SocketAddr },
    /// Connect, send pseudo-random bytes, check the echo, print both addresses.
    Connect {
        dst: SocketAddr,
        #[arg(long, default_value_t = 65536)]
        bytes: usize,
        /// Use a blocking connect(2) (default: non-blocking connect + poll).
        #[arg(long)]
        blocking: bool,
        /// Connect timeout of the non-blocking connect.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Connects COUNT times, INTERVAL apart (blocking and non-blocking
    /// connects in turn), each time sending BYTES and checking the echo;
    /// prints one line per attempt (its local address, how long it took,
    /// the error if any) and a summary.
    ConnectLoop {
        dst: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, default_value_t = 150)]
        interval_ms: u64,
        #[arg(long, default_value_t = 4096)]
        bytes: usize,
    },
    /// Sets socket options and fd flags, connects, and prints what the
    /// connected socket reports afterwards.
    Sockopts { dst: SocketAddr },
    /// Tries to turn a bypassed (host) socket towards EVIL after the fact:
    /// disconnect a connected one and reconnect it, disconnect a pending one
    /// (to HOLE, which never answers) and send to EVIL with MSG_FASTOPEN.
    Escape {
        good: SocketAddrV4,
        hole: SocketAddrV4,
        evil: SocketAddrV4,
    },
    /// UDP echo server: sends every datagram back to its sender and prints
    /// the sender, forever.
    UdpEcho { listen: SocketAddr },
    /// connect(2) a UDP socket to GOOD, then re-connect it to EVIL and send.
    UdpReaim { good: SocketAddr, evil: SocketAddr },
    /// connect(2) a UDP socket to DST, send a datagram, check the echo, print
    /// the connect result and both addresses.
    UdpConnect {
        dst: SocketAddr,
        #[arg(long)]
        nonblocking: bool,
    },
    /// Server for `connrate`: accepts and closes connections, forever.
    AcceptClose { listen: SocketAddr },
    /// Accepts and closes connections, forever, printing each peer at once
    /// (the "evil" server of the re-aim tests counts these lines).
    AcceptCount { listen: SocketAddr },
    /// Connects to GOOD (one of the host's own addresses: a bypassed socket
    /// that goes through the host's `lo`), checks the echo, then tries every
    /// way of turning that socket towards EVIL (servers on host loopback):
    /// connect again, disconnect and connect, sendto/sendmsg with
    /// MSG_FASTOPEN, TCP_FASTOPEN_CONNECT, io_uring, bind, listen, shutdown
    /// and connect; then RACES rounds of connects to EVIL on a container
    /// socket while one thread swaps the host socket under the same fd
    /// number and another flips the address to AF_UNSPEC. Prints every
    /// errno, and what became of the host socket.
    HostReaim {
        good: SocketAddr,
        #[arg(required = true)]
        evil: Vec<SocketAddr>,
        #[arg(long, default_value_t = 1000)]
        races: u32,
    },
    /// Opens and closes connections for SECONDS; prints the rate, the
    /// connect(2) latency percentiles and maximum, the connects slower than
    /// 100 ms and the errors.
    Connrate {
        dst: SocketAddr,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Connections each thread keeps in flight (non-blocking connects
        /// in a poll(2) loop when more than 1; a blocking connect otherwise).
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Serve the connections too, from a listener of this process bound
        /// to DST (port 0 picks one): a connect that stays inside the
        /// network namespace (loopback), which no fast path bypasses.
        #[arg(long)]
        local_server: bool,
    },
    /// Request/response over one connection: COUNT round trips of SIZE bytes
    /// against an echo server; prints the latency percentiles.
    Pingpong {
        dst: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Two threads: one connects to SLOW (hangs), then the other to FAST;
    /// prints how long FAST took while SLOW was still pending.
    Threads { slow: SocketAddrV4, fast: SocketAddrV4 },
    /// One thread connects in a loop while another keeps rewriting the
    /// sockaddr between GOOD and EVIL; counts where connections landed.
    Race {
        good: SocketAddrV4,
        evil: SocketAddrV4,
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
    },
    /// connect(2) a raw ICMP socket and print the local address it got.
    RawConnect { dst: std::net::Ipv4Addr },
    /// Calls connect(2) with bad pointers, lengths, fds and families and
    /// prints each errno, then one good connect to DST.
    BadArgs { dst: SocketAddrV4 },
    /// Binds and listens on 0.0.0.0:PORT (a published port), then tries to
    /// turn the listener towards EVIL: shutdown(SHUT_RD), disconnect,
    /// connect, fast-open send, a second bind, and io_uring_setup. Prints
    /// every errno.
    ListenerEscape { port: u16, evil: SocketAddrV4 },
    /// Serves echo on LISTEN in a thread, then connects to each DST in turn
    /// (the container's own published port through loopback, its address…)
    /// and prints what each connection saw.
    SelfConnect {
        listen: SocketAddr,
        #[arg(required = true)]
        dst: Vec<SocketAddr>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { listen, count } => serve(listen, count),
        Cmd::Blackhole { listen } => blackhole(listen),
        Cmd::Connect {
            dst,
            bytes,
            blocking,
            timeout_ms,
        } => connect(dst, bytes, blocking, Duration::from_millis(timeout_ms)),
        Cmd::ConnectLoop {
            dst,
            count,
            interval_ms,
            bytes,
        } => connect_loop(dst, count, Duration::from_millis(interval_ms), bytes),
        Cmd::Sockopts { dst } => sockopts(dst),
        Cmd::AcceptClose { listen } => accept_close(listen),
        Cmd::AcceptCount { listen } => accept_count(listen),
        Cmd::HostReaim { good, evil, races } => host_reaim(good, &evil, races),
        Cmd::UdpEcho { listen } => udp_echo(listen),
        Cmd::UdpConnect { dst, nonblocking } => udp_connect(dst, nonblocking),
        Cmd::UdpReaim { good, evil } => udp_reaim(good, evil),
        Cmd::Escape { good, hole, evil } => escape(good, hole, evil),
        Cmd::Connrate {
            dst,
            seconds,
            threads,
            inflight,
            local_server,
        } => {
            let dst = if local_server {
                deep_listener(dst).and_then(|l| accept_and_close_in_threads(&l))
            } else {
                Ok(dst)
            };
            dst.and_then(|dst| connrate(dst, Duration::from_secs_f64(seconds), threads, inflight))
        }
        Cmd::Pingpong { dst, count, size } => pingpong(dst, count, size),
        Cmd::Threads { slow, fast } => threads(slow, fast),
        Cmd::Race {
            good,
            evil,
            iterations,
        } => race(good, evil, iterations),
        Cmd::RawConnect { dst } => raw_connect(dst),
        Cmd::BadArgs { dst } => bad_args(dst),
        Cmd::ListenerEscape { port, evil } => listener_escape(port, evil),
        Cmd::SelfConnect { listen, dst } => self_connect(listen, &dst),
    };
    if let Err(e) = result {
        let errno = e.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error());
        println!("{}", json!({"error": format!("{e:#}"), "errno": errno}));
        std::process::exit(1);
    }
}

fn serve(listen: SocketAddr, count: u64) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("{}", json!({"listening": listener.local_addr()?.to_string()}));
    let mut served = 0;
    for conn in listener.incoming() {
        let mut conn = conn?;
        conn.set_nodelay(true)?;
        let peer = conn.peer_addr()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n])?;
            total += n as u64;
        }
        drop(conn);
        println!("{}", json!({"peer": peer.to_string(), "bytes": total}));
        std::io::stdout().flush()?;
        served += 1;
        if count != 0 && served >= count {
            break;
        }
    }
    Ok(())
}

fn blackhole(listen: SocketAddr) -> Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&sock, true)?;
    rustix::net::bind(&sock, &listen)?;
    rustix::net::listen(&sock, 0)?;
    // Fill the accept queue; with backlog 0 it holds one connection, and the
    // kernel drops SYNs while it is full.
    let fillers: Vec<TcpStream> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&listen, Duration::from_millis(300)).ok())
        .collect();
    println!(
        "{}",
        json!({"listening": listen.to_string(), "queued": fillers.len()})
    );
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn connect(dst: SocketAddr, bytes: usize, blocking: bool, timeout: Duration) -> Result<()> {
    let mut conn = if blocking {
        TcpStream::connect(dst)
    } else {
        TcpStream::connect_timeout(&dst, timeout)
    }
    .with_context(|| format!("connect {dst}"))?;
    let local = conn.local_addr()?;
    let peer = conn.peer_addr()?;
    let data = pattern(bytes);
    let mut reader = conn.try_clone()?;
    let expected = data.len();
    let echo = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut back = Vec::with_capacity(expected);
        reader.read_to_end(&mut back)?;
        Ok(back)
    });
    conn.write_all(&data)?;
    conn.shutdown(Shutdown::Write)?;
    let back = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo reader panicked"))??;
    println!(
        "{}",
        json!({"local": local.to_string(), "peer": peer.to_string(), "sent": data.len(), "echo_intact": back == data})
    );
    Ok(())
}

/// One connection of `connect-loop`: its local address, once the echo of
/// `data` came back intact.
fn echo_once(dst: SocketAddr, data: &[u8], blocking: bool) -> std::io::Result<SocketAddr> {
    let mut conn = if blocking {
        TcpStream::connect(dst)?
    } else {
        TcpStream::connect_timeout(&dst, Duration::from_secs(10))?
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let local = conn.local_addr()?;
    conn.write_all(data)?;
    conn.shutdown(Shutdown::Write)?;
    let mut back = Vec::with_capacity(data.len());
    conn.read_to_end(&mut back)?;
    if back != data {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "echo differs",
        ));
    }
    Ok(local)
}

fn connect_loop(dst: SocketAddr, count: u32, interval: Duration, bytes: usize) -> Result<()> {
    let data = pattern(bytes);
    let mut failed = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..count {
        let started = Instant::now();
        let result = echo_once(dst, &data, i % 2 == 0);
        let took = started.elapsed();
        slowest = slowest.max(took);
        match result {
            Ok(local) => println!(
                "{}",
                json!({"attempt": i, "ok": true, "local": local.to_string(), "ms": took.as_secs_f64() * 1e3})
            ),
            Err(e) => {
                failed += 1;
                println!(
                    "{}",
                    json!({"attempt": i, "ok": false, "error": e.to_string(), "errno": e.raw_os_error(), "ms": took.as_secs_f64() * 1e3})
                );
            }
        }
        std::thread::sleep(interval.saturating_sub(took));
    }
    println!(
        "{}",
        json!({"attempts": count, "failed": failed, "slowest_ms": slowest.as_secs_f64() * 1e3})
    );
    Ok(())
}

fn threads(slow: SocketAddrV4, fast: SocketAddrV4) -> Result<()> {
    let slow_done = Arc::new(AtomicBool::new(false));
    let flag = slow_done.clone();
    std::thread::spawn(move || {
        let _ = TcpStream::connect(slow);
        flag.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let conn = TcpStream::connect_timeout(&fast.into(), Duration::from_secs(10));
    let fast_ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({"fast_ok": conn.is_ok(), "fast_ms": fast_ms, "slow_pending": !slow_done.load(Ordering::SeqCst),
               "fast_local": conn.ok().and_then(|c| c.local_addr().ok()).map(|a| a.to_string())})
    );
    Ok(())
}

/// A sockaddr_in whose address and port another thread may rewrite while the
/// kernel reads it (same layout as `struct sockaddr_in`).
#[repr(C)]
struct RacySockaddr {
    family: u16,
    port: AtomicU16,
    addr: AtomicU32,
    zero: [u8; 8],
}

fn race(good: SocketAddrV4, evil: SocketAddrV4, iterations: u32) -> Result<()> {
    let encode = |a: SocketAddrV4| (a.port().to_be(), u32::from_ne_bytes(a.ip().octets()));
    let (good_port, good_ip) = encode(good);
    let (evil_port, evil_ip) = encode(evil);
    let shared = Arc::new(RacySockaddr {
        family: libc::AF_INET as u16,
        port: AtomicU16::new(good_port),
        addr: AtomicU32::new(good_ip),
        zero: [0; 8],
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flipper = {
        let (shared, stop, flips) = (shared.clone(), stop.clone(), flips.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (p, a) in [(evil_port, evil_ip), (good_port, good_ip)] {
                    shared.port.store(p, Ordering::Relaxed);
                    shared.addr.store(a, Ordering::Relaxed);
                }
                flips.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (mut to_good, mut to_evil, mut failed) = (0u32, 0u32, 0u32);
    for _ in 0..iterations {
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )?;
        // SAFETY: `shared` is a live, properly laid out sockaddr_in (repr(C),
        // atomics have the layout of their integers) of the length we pass;
        // the kernel only reads it.
        let rc = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                Arc::as_ptr(&shared).cast::<libc::sockaddr>(),
                std::mem::size_of::<RacySockaddr>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            failed += 1;
            continue;
        }
        match rustix::net::getpeername(&sock)?.map(SocketAddr::try_from) {
            Some(Ok(SocketAddr::V4(p))) if p == good => to_good += 1,
            Some(Ok(SocketAddr::V4(p))) if p == evil => to_evil += 1,
            _ => failed += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flipper.join();
    println!(
        "{}",
        json!({"to_good": to_good, "to_evil": to_evil, "failed": failed, "flips": flips.load(Ordering::Relaxed)})
    );
    Ok(())
}

fn raw_connect(dst: std::net::Ipv4Addr) -> Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::RAW,
        Some(rustix::net::ipproto::ICMP),
    )
    .context("raw socket (needs CAP_NET_RAW)")?;
    rustix::net::connect(&sock, &SocketAddrV4::new(dst, 0))?;
    let local = rustix::net::getsockname(&sock)?;
    let local = SocketAddr::try_from(local)
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    println!("{}", json!({"local": local}));
    Ok(())
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// connect(2) with raw arguments; returns 0 or the errno.
fn raw_connect_errno(fd: i32, addr: *const libc::sockaddr, len: libc::socklen_t) -> i32 {
    // SAFETY: connect only reads `len` bytes at `addr` (faulting pointers are
    // the point of the probe and only yield EFAULT); it never writes memory.
    let rc = unsafe { libc::connect(fd, addr, len) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn bad_args(dst: SocketAddrV4) -> Result<()> {
    let tcp = || {
        rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
    };
    let good = sockaddr_in(dst);
    let good_ptr = (&good as *const libc::sockaddr_in).cast::<libc::sockaddr>();
    let in_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let mut r = serde_json::Map::new();
    let s = tcp()?;
    r.insert(
        "null_pointer".into(),
        raw_connect_errno(s.as_raw_fd(), std::ptr::null(), in_len).into(),
    );
    r.insert(
        "wild_pointer".into(),
        raw_connect_errno(s.as_raw_fd(), 16 as *const libc::sockaddr, in_len).into(),
    );
    r.insert(
        "too_long".into(),
        raw_connect_errno(s.as_raw_fd(), good_ptr, 200).into(),
    );
    r.insert(
        "too_short".into(),
        raw_connect_errno(s.as_raw_fd(), good_ptr, 8).into(),
    );
    r.insert(
        "negative_len".into(),
        raw_connect_errno(s.as_raw_fd(), good_ptr, u32::MAX).into(),
    );
    r.insert("bad_fd".into(), raw_connect_errno(-1, good_ptr, in_len).into());
    r.insert(
        "closed_fd".into(),
        raw_connect_errno(900, good_ptr, in_len).into(),
    );
    let file = std::fs::File::open("/dev/null")?;
    r.insert(
        "not_a_socket".into(),
        raw_connect_errno(file.as_raw_fd(), good_ptr, in_len).into(),
    );
    let mut v6 = [0u8; 28];
    v6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
    r.insert(
        "wrong_family".into(),
        raw_connect_errno(s.as_raw_fd(), v6.as_ptr().cast(), 28).into(),
    );
    let mut unix_addr = [0u8; 110];
    unix_addr[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    r.insert(
        "unix_family".into(),
        raw_connect_errno(s.as_raw_fd(), unix_addr.as_ptr().cast(), 110).into(),
    );
    // An address whose last bytes lie past the end of a mapping.
    let page = rustix::param::page_size();
    // SAFETY: a fresh anonymous private mapping of two pages; nothing else
    // refers to it, and it is unmapped below before return.
    let map = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            2 * page,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )
    }?;
    // SAFETY: the second page lies inside the mapping we own.
    unsafe { rustix::mm::munmap(map.cast::<u8>().add(page).cast(), page) }?;
    // SAFETY: writes 8 bytes at the end of the first (still mapped) page.
    let edge = unsafe { map.cast::<u8>().add(page - 8) };
    // SAFETY: the 8 bytes at `edge` are inside the mapped first page.
    unsafe { std::ptr::copy_nonoverlapping((&good as *const libc::sockaddr_in).cast::<u8>(), edge, 8) };
    r.insert(
        "crosses_mapping".into(),
        raw_connect_errno(s.as_raw_fd(), edge.cast(), in_len).into(),
    );
    // SAFETY: unmaps the first page of our own mapping; `edge` is not used after.
    unsafe { rustix::mm::munmap(map, page) }?;
    let fresh = tcp()?;
    r.insert(
        "good".into(),
        raw_connect_errno(fresh.as_raw_fd(), good_ptr, in_len).into(),
    );
    println!("{}", serde_json::Value::Object(r));
    Ok(())
}

fn sockopts(dst: SocketAddr) -> Result<()> {
    use rustix::fs::{fcntl_getfl, OFlags};
    use rustix::io::{fcntl_getfd, FdFlags};
    use rustix::net::{sockopt as so, AddressFamily, SocketFlags, SocketType};
    let family = if dst.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    // Blocking, close-on-exec, with options set before connect.
    let a = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    so::set_tcp_nodelay(&a, true)?;
    so::set_socket_keepalive(&a, true)?;
    so::set_tcp_keepidle(&a, Duration::from_secs(77))?;
    so::set_socket_send_buffer_size(&a, 300_000)?;
    so::set_socket_linger(&a, Some(Duration::from_secs(3)))?;
    rustix::net::connect(&a, &dst)?;
    // Non-blocking, inheritable.
    let b = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK, None)?;
    let b_connect = match rustix::net::connect(&b, &dst) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    let local = |fd: &std::os::fd::OwnedFd| {
        rustix::net::getsockname(fd)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok())
            .map(|a| a.ip().to_string())
    };
    let mut facts = json!({
            "a_local": local(&a),
            "a_peer": rustix::net::getpeername(&a)?.and_then(|p| SocketAddr::try_from(p).ok()).map(|p| p.to_string()),
            "nodelay": so::tcp_nodelay(&a)?,
            "keepalive": so::socket_keepalive(&a)?,
            "keepidle_s": so::tcp_keepidle(&a)?.as_secs(),
            "sndbuf": so::socket_send_buffer_size(&a)?,
            "linger_s": so::socket_linger(&a)?.map(|d| d.as_secs()),
            "a_cloexec": fcntl_getfd(&a)?.contains(FdFlags::CLOEXEC),
            "a_nonblocking": fcntl_getfl(&a)?.contains(OFlags::NONBLOCK),
            "b_connect_errno": b_connect,
            "b_local": local(&b),
            "b_cloexec": fcntl_getfd(&b)?.contains(FdFlags::CLOEXEC),
            "b_nonblocking": fcntl_getfl(&b)?.contains(OFlags::NONBLOCK),
    });
    // Blocking and inheritable, on the number `a` had: flags are read for
    // this socket, not remembered from the last one with that number.
    let a_number = a.as_raw_fd();
    drop(a);
    let c = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::empty(), None)?;
    rustix::net::connect(&c, &dst)?;
    facts["c_has_a_number"] = json!(c.as_raw_fd() == a_number);
    facts["c_cloexec"] = json!(fcntl_getfd(&c)?.contains(FdFlags::CLOEXEC));
    println!("{facts}");
    Ok(())
}

/// A listener with a deep accept queue. std's `TcpListener::bind` asks for
/// 128: a client opening tens of thousands of connections a second fills
/// that while the server is off the CPU for a few milliseconds, the kernel
/// drops the next SYN (ListenOverflows), and that connect takes the 1 s SYN
/// retransmission — the stalls that made the host's connection rate swing
/// 100x between runs. The kernel caps the backlog at net.core.somaxconn.
fn deep_listener(listen: SocketAddr) -> Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketType};
    let family = if listen.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(family, SocketType::STREAM, None)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &listen).with_context(|| format!("bind {listen}"))?;
    rustix::net::listen(&fd, 4096)?;
    Ok(TcpListener::from(fd))
}

/// Accepting threads of `accept-close`: one can be preempted while the
/// other drains the queue.
const ACCEPT_THREADS: usize = 2;

fn accept_close(listen: SocketAddr) -> Result<()> {
    let listener = deep_listener(listen)?;
    println!("{}", json!({"listening": listener.local_addr()?.to_string()}));
    std::io::stdout().flush()?;
    accept_and_close_in_threads(&listener)?;
    for conn in listener.incoming() {
        drop(conn);
    }
    Ok(())
}

/// Accepts and closes on `listener` in background threads (see
/// [`accept_close`]); returns the address it listens on.
fn accept_and_close_in_threads(listener: &TcpListener) -> Result<SocketAddr> {
    let addr = listener.local_addr()?;
    for _ in 0..ACCEPT_THREADS {
        let l = listener.try_clone()?;
        std::thread::spawn(move || {
            for conn in l.incoming() {
                drop(conn);
            }
        });
    }
    Ok(addr)
}

/// Percentiles of latencies in microseconds.
fn percentiles(mut us: Vec<f64>) -> serde_json::Value {
    if us.is_empty() {
        return json!({"p50_us": null, "p99_us": null, "max_us": null});
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    json!({"p50_us": at(0.50), "p99_us": at(0.99), "max_us": us[us.len() - 1]})
}

/// A connect slower than this is a stall (a SYN retransmitted after a
/// drop takes 1 s), counted apart so no average hides it.
const STALL_US: f64 = 100_000.0;

/// What one client thread of `connrate` saw.
#[derive(Default)]
struct ConnSamples {
    latencies_us: Vec<f64>,
    errors: u64,
    /// The errors by errno, so a failed run says what failed.
    errnos: std::collections::BTreeMap<i32, u64>,
}

impl ConnSamples {
    fn failed(&mut self, errno: i32, count: u64) {
        self.errors += count;
        *self.errnos.entry(errno).or_default() += count;
    }
}

fn connrate(dst: SocketAddr, duration: Duration, threads: usize, inflight: usize) -> Result<()> {
    anyhow::ensure!(
        threads >= 1 && inflight >= 1,
        "--threads and --inflight must be at least 1"
    );
    let start = Instant::now();
    let until = start + duration;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                if inflight == 1 {
                    blocking_connects(dst, until)
                } else {
                    polled_connects(dst, until, inflight)
                }
            })
        })
        .collect();
    let mut all = ConnSamples::default();
    for w in workers {
        let s = w
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.latencies_us.extend(s.latencies_us);
        all.errors += s.errors;
        for (errno, n) in s.errnos {
            *all.errnos.entry(errno).or_default() += n;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let conns = all.latencies_us.len();
    let stalls = all.latencies_us.iter().filter(|l| **l >= STALL_US).count();
    let mut out = percentiles(all.latencies_us);
    out["conns"] = json!(conns);
    out["per_s"] = json!(conns as f64 / elapsed);
    out["errors"] = json!(all.errors);
    out["errnos"] = json!(all.errnos);
    out["stalls"] = json!(stalls);
    out["threads"] = json!(threads);
    out["inflight"] = json!(inflight);
    println!("{out}");
    Ok(())
}

/// Closes a connected socket with RST: no TIME_WAIT on either side, so
/// ports are neither exhausted nor found busy when reused.
fn close_with_rst(fd: impl std::os::fd::AsFd) -> Result<()> {
    rustix::net::sockopt::set_socket_linger(&fd, Some(Duration::ZERO))?;
    Ok(())
}

fn blocking_connects(dst: SocketAddr, until: Instant) -> Result<ConnSamples> {
    let mut s = ConnSamples::default();
    while Instant::now() < until {
        let t = Instant::now();
        match TcpStream::connect(dst) {
            Ok(conn) => {
                s.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                close_with_rst(&conn)?;
            }
            Err(e) => s.failed(e.raw_os_error().unwrap_or(0), 1),
        }
    }
    Ok(s)
}

/// Keeps `inflight` non-blocking connects pending, in one poll(2) loop.
fn polled_connects(dst: SocketAddr, until: Instant, inflight: usize) -> Result<ConnSamples> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if dst.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let mut s = ConnSamples::default();
    let mut pending: Vec<(std::os::fd::OwnedFd, Instant)> = Vec::with_capacity(inflight);
    // Connects still pending this long after the end count as errors.
    let give_up = until + Duration::from_secs(10);
    loop {
        while pending.len() < inflight && Instant::now() < until {
            let fd = rustix::net::socket_with(
                family,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )?;
            let t = Instant::now();
            match rustix::net::connect(&fd, &dst) {
                Ok(()) => {
                    s.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                    close_with_rst(&fd)?;
                }
                Err(rustix::io::Errno::INPROGRESS) => pending.push((fd, t)),
                Err(e) => s.failed(e.raw_os_error(), 1),
            }
        }
        if pending.is_empty() {
            if Instant::now() >= until {
                return Ok(s);
            }
            continue;
        }
        if Instant::now() >= give_up {
            s.failed(libc::ETIMEDOUT, pending.len() as u64);
            return Ok(s);
        }
        let mut fds: Vec<PollFd<'_>> = pending
            .iter()
            .map(|(fd, _)| PollFd::new(fd, PollFlags::OUT))
            .collect();
        poll(
            &mut fds,
            Some(&Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            }),
        )?;
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        for i in (0..pending.len()).rev() {
            if !ready[i] {
                continue;
            }
            let (fd, t) = pending.swap_remove(i);
            match rustix::net::sockopt::socket_error(&fd)? {
                Ok(()) => {
                    s.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                    close_with_rst(&fd)?;
                }
                Err(e) => s.failed(e.raw_os_error(), 1),
            }
        }
    }
}

fn pingpong(dst: SocketAddr, count: usize, size: usize) -> Result<()> {
    let mut conn = TcpStream::connect(dst).with_context(|| format!("connect {dst}"))?;
    conn.set_nodelay(true)?;
    let msg = pattern(size);
    let mut back = vec![0u8; size];
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        conn.write_all(&msg)?;
        conn.read_exact(&mut back)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    anyhow::ensure!(back == msg, "echo differs");
    let mut out = percentiles(latencies);
    out["count"] = json!(count);
    println!("{out}");
    Ok(())
}

/// connect(2) with AF_UNSPEC: dissolves the association (TCP disconnect).
fn disconnect(fd: i32) -> i32 {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as u16,
        sa_data: [0; 14],
    };
    raw_connect_errno(
        fd,
        &unspec,
        std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
    )
}

/// Waits up to 1.5 s for a connecting socket; "connected" or the errno.
fn outcome(fd: &std::os::fd::OwnedFd) -> String {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::OUT)];
    let t = rustix::event::Timespec {
        tv_sec: 1,
        tv_nsec: 500_000_000,
    };
    match rustix::event::poll(&mut fds, Some(&t)) {
        Ok(0) => "pending".into(),
        Ok(_) => match rustix::net::sockopt::socket_error(fd) {
            Ok(Ok(())) if rustix::net::getpeername(fd).ok().flatten().is_some() => "connected".into(),
            Ok(Ok(())) => "not connected".into(),
            Ok(Err(e)) => format!("errno {}", e.raw_os_error()),
            Err(e) => format!("errno {}", e.raw_os_error()),
        },
        Err(e) => format!("poll errno {}", e.raw_os_error()),
    }
}

fn escape(good: SocketAddrV4, hole: SocketAddrV4, evil: SocketAddrV4) -> Result<()> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let evil_raw = sockaddr_in(evil);
    let evil_ptr = (&evil_raw as *const libc::sockaddr_in).cast::<libc::sockaddr>();
    let in_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let nonblocking = |fd: &std::os::fd::OwnedFd| -> Result<()> {
        let fl = rustix::fs::fcntl_getfl(fd)?;
        rustix::fs::fcntl_setfl(fd, fl | rustix::fs::OFlags::NONBLOCK)?;
        Ok(())
    };
    // A: a connected host socket, disconnected and aimed at EVIL.
    let a = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
    let a_good = raw_connect_errno(
        a.as_raw_fd(),
        (&sockaddr_in(good) as *const libc::sockaddr_in).cast(),
        in_len,
    );
    let a_local = rustix::net::getsockname(&a)
        .ok()
        .and_then(|l| SocketAddr::try_from(l).ok())
        .map(|l| l.ip().to_string());
    let a_disconnect = disconnect(a.as_raw_fd());
    nonblocking(&a)?;
    let a_evil_errno = raw_connect_errno(a.as_raw_fd(), evil_ptr, in_len);
    let a_evil = outcome(&a);
    // B: a pending host socket, disconnected, then fast-open towards EVIL.
    let b = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK,
        None,
    )?;
    let b_hole = raw_connect_errno(
        b.as_raw_fd(),
        (&sockaddr_in(hole) as *const libc::sockaddr_in).cast(),
        in_len,
    );
    let b_disconnect = disconnect(b.as_raw_fd());
    // SAFETY: sends one byte from a live buffer to a live sockaddr_in.
    let sent = unsafe {
        libc::sendto(
            b.as_raw_fd(),
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            evil_ptr,
            in_len,
        )
    };
    let b_fastopen_errno = if sent < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    };
    let b_evil = outcome(&b);
    println!(
        "{}",
        json!({"a_good": a_good, "a_local": a_local, "a_disconnect": a_disconnect, "a_evil_errno": a_evil_errno,
               "a_evil": a_evil, "b_hole": b_hole, "b_disconnect": b_disconnect,
               "b_fastopen_errno": b_fastopen_errno, "b_evil": b_evil})
    );
    Ok(())
}

fn udp_echo(listen: SocketAddr) -> Result<()> {
    let sock = std::net::UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("{}", json!({"listening": sock.local_addr()?.to_string()}));
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        sock.send_to(&buf[..n], from)?;
        println!("{}", json!({"peer": from.to_string(), "bytes": n}));
        std::io::stdout().flush()?;
    }
}

fn udp_connect(dst: SocketAddr, nonblocking: bool) -> Result<()> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if dst.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let flags = if nonblocking {
        SocketFlags::NONBLOCK
    } else {
        SocketFlags::empty()
    };
    let sock = rustix::net::socket_with(family, SocketType::DGRAM, flags, None)?;
    let connect_errno = match rustix::net::connect(&sock, &dst) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    let addr = |a: Option<rustix::net::SocketAddrAny>| {
        a.and_then(|a| SocketAddr::try_from(a).ok())
            .map(|a| a.to_string())
    };
    let local = addr(rustix::net::getsockname(&sock).ok());
    let peer = addr(rustix::net::getpeername(&sock).ok().flatten());
    let data = pattern(1200);
    rustix::net::send(&sock, &data, rustix::net::SendFlags::empty())?;
    let mut fds = [rustix::event::PollFd::new(&sock, rustix::event::PollFlags::IN)];
    let t = rustix::event::Timespec {
        tv_sec: 3,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut fds, Some(&t))?;
    let mut back = vec![0u8; 2048];
    let n = if ready > 0 {
        rustix::net::recv(&sock, &mut back, rustix::net::RecvFlags::empty())?.0
    } else {
        0
    };
    println!(
        "{}",
        json!({"connect_errno": connect_errno, "local": local, "peer": peer, "echo_intact": back[..n] == data[..]})
    );
    Ok(())
}

fn udp_reaim(good: SocketAddr, evil: SocketAddr) -> Result<()> {
    // Unbound, so that the first connect is bypassed.
    let family = if good.is_ipv4() {
        rustix::net::AddressFamily::INET
    } else {
        rustix::net::AddressFamily::INET6
    };
    let sock = rustix::net::socket(family, rustix::net::SocketType::DGRAM, None)?;
    rustix::net::connect(&sock, &good)?;
    let local = rustix::net::getsockname(&sock)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .map(|a| a.to_string());
    let reaim_errno = match rustix::net::connect(&sock, &evil) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    let sent = rustix::net::send(&sock, b"evil", rustix::net::SendFlags::empty())
        .map(|n| n as i64)
        .unwrap_or(-1);
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "{}",
        json!({"local_after_good": local, "reaim_errno": reaim_errno, "sent": sent})
    );
    Ok(())
}

fn errno_of(rc: libc::c_long) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

fn listener_escape(port: u16, evil: SocketAddrV4) -> Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
    let fd = listener.as_raw_fd();
    let local = listener.local_addr()?.to_string();
    let evil_raw = sockaddr_in(evil);
    let evil_ptr = (&evil_raw as *const libc::sockaddr_in).cast::<libc::sockaddr>();
    let in_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: shutdown takes plain integers.
    let shutdown_rd = errno_of(unsafe { libc::shutdown(fd, libc::SHUT_RD) } as libc::c_long);
    let disconnect = disconnect(fd);
    let connect_evil = raw_connect_errno(fd, evil_ptr, in_len);
    // SAFETY: sends one byte from a live buffer to a live sockaddr_in.
    let fastopen =
        errno_of(
            unsafe { libc::sendto(fd, b"x".as_ptr().cast(), 1, libc::MSG_FASTOPEN, evil_ptr, in_len) }
                as libc::c_long,
        );
    let other = sockaddr_in(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
    // SAFETY: bind reads `in_len` bytes from a live sockaddr_in.
    let rebind = errno_of(
        unsafe { libc::bind(fd, (&other as *const libc::sockaddr_in).cast(), in_len) } as libc::c_long,
    );
    // SAFETY: io_uring_params is plain integers (all-zero is valid); the
    // syscall writes into it and returns an fd or -1.
    let uring = unsafe {
        let mut params = [0u8; 120];
        libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr())
    };
    let uring_errno = errno_of(uring);
    if uring >= 0 {
        // SAFETY: the fd was just returned to us and nothing else owns it.
        unsafe { libc::close(uring as i32) };
    }
    // The listener must still accept after all that.
    let still_listening = rustix::net::sockopt::socket_acceptconn(&listener).unwrap_or(false);
    println!(
        "{}",
        json!({"local": local, "shutdown_rd": shutdown_rd, "disconnect": disconnect,
               "connect_evil": connect_evil, "fastopen": fastopen, "rebind": rebind,
               "io_uring_setup": uring_errno, "still_listening": still_listening})
    );
    Ok(())
}

fn self_connect(listen: SocketAddr, dsts: &[SocketAddr]) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    let listening = listener.local_addr()?.to_string();
    let served = Arc::new(AtomicU64::new(0));
    let served_by_server = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            served_by_server.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut results = Vec::new();
    for dst in dsts {
        let r = match TcpStream::connect_timeout(dst, Duration::from_secs(5)) {
            Ok(mut c) => {
                let msg = format!("hello {dst}");
                let local = c.local_addr().context("getsockname")?.to_string();
                let peer = c.peer_addr().context("getpeername")?.to_string();
                c.write_all(msg.as_bytes()).context("write")?;
                c.shutdown(Shutdown::Write).context("shutdown")?;
                let mut back = String::new();
                c.read_to_string(&mut back).context("read")?;
                json!({"dst": dst.to_string(), "echo_intact": back == msg, "local": local, "peer": peer})
            }
            Err(e) => json!({"dst": dst.to_string(), "errno": e.raw_os_error()}),
        };
        results.push(r);
    }
    println!(
        "{}",
        json!({"listening": listening, "results": results, "served": served.load(Ordering::SeqCst)})
    );
    Ok(())
}

fn accept_count(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("{}", json!({"listening": listener.local_addr()?.to_string()}));
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let conn = conn?;
        println!("{}", json!({"accepted": conn.peer_addr()?.to_string()}));
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// A sockaddr_storage-sized buffer holding `a`, and its length.
fn sockaddr_of(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = sockaddr_in(v4);
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A sockaddr whose family another thread rewrites while the kernel reads it.
#[repr(C)]
struct RacyStorage {
    family: AtomicU16,
    rest: [u8; 126],
}

impl From<&libc::sockaddr_storage> for RacyStorage {
    fn from(sa: &libc::sockaddr_storage) -> Self {
        // SAFETY: sockaddr_storage is 128 plain bytes.
        let bytes: [u8; 128] = unsafe { std::mem::transmute_copy(sa) };
        let mut rest = [0u8; 126];
        rest.copy_from_slice(&bytes[2..]);
        Self {
            family: AtomicU16::new(sa.ss_family),
            rest,
        }
    }
}

fn last_errno(rc: libc::c_long) -> i32 {
    errno_of(rc)
}

fn host_reaim(good: SocketAddr, evil: &[SocketAddr], races: u32) -> Result<()> {
    use rustix::net::{AddressFamily, SocketType};
    let family = if good.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let mut conn = TcpStream::connect(good).with_context(|| format!("connect {good}"))?;
    conn.write_all(b"ping")?;
    let mut back = [0u8; 4];
    conn.read_exact(&mut back)?;
    let local = conn.local_addr()?.to_string();
    let fd = conn.as_raw_fd();
    let mut attempts = serde_json::Map::new();
    let note = |attempts: &mut serde_json::Map<String, serde_json::Value>, name: String, errno: i32| {
        attempts.insert(name, json!(errno));
    };
    for (i, e) in evil.iter().enumerate() {
        let (sa, len) = sockaddr_of(*e);
        let sa_ptr = (&sa as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
        note(
            &mut attempts,
            format!("connect_{i}"),
            raw_connect_errno(fd, sa_ptr, len),
        );
        let peer = rustix::net::getpeername(&conn)
            .ok()
            .flatten()
            .and_then(|p| SocketAddr::try_from(p).ok());
        attempts.insert(
            format!("peer_after_connect_{i}"),
            json!(peer.map(|p| p.to_string())),
        );
        note(&mut attempts, format!("disconnect_{i}"), disconnect(fd));
        note(
            &mut attempts,
            format!("connect_after_disconnect_{i}"),
            raw_connect_errno(fd, sa_ptr, len),
        );
        // SAFETY: sends one byte from a live buffer to a live sockaddr.
        let sent = unsafe { libc::sendto(fd, b"x".as_ptr().cast(), 1, libc::MSG_FASTOPEN, sa_ptr, len) };
        note(
            &mut attempts,
            format!("sendto_fastopen_{i}"),
            last_errno(sent as libc::c_long),
        );
        let mut byte = *b"x";
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: msghdr is plain data; all-zero is valid before we fill it.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&sa as *const libc::sockaddr_storage).cast_mut().cast();
        msg.msg_namelen = len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: msg points at a live name and one live iovec.
        let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_FASTOPEN) };
        note(
            &mut attempts,
            format!("sendmsg_fastopen_{i}"),
            last_errno(sent as libc::c_long),
        );
    }
    let one: libc::c_int = 1;
    // SAFETY: reads one c_int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    note(
        &mut attempts,
        "tcp_fastopen_connect".into(),
        last_errno(rc as libc::c_long),
    );
    // SAFETY: io_uring_params is plain integers (all-zero is valid); the
    // syscall writes into it and returns an fd or -1.
    let uring = unsafe {
        let mut params = [0u8; 120];
        libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr())
    };
    note(&mut attempts, "io_uring_setup".into(), last_errno(uring));
    if uring >= 0 {
        // SAFETY: the fd was just returned to us and nothing else owns it.
        unsafe { libc::close(uring as i32) };
    }
    // io_uring runs connect without a syscall the daemon could see.
    if let Some(e) = evil.first() {
        note(
            &mut attempts,
            "io_uring_disconnect".into(),
            uring_connect(fd, None),
        );
        note(
            &mut attempts,
            "io_uring_connect".into(),
            uring_connect(fd, Some(*e)),
        );
    }
    let (any, any_len) = sockaddr_of(SocketAddr::new(good.ip(), 0));
    // SAFETY: bind reads `any_len` bytes from a live sockaddr.
    let rc = unsafe { libc::bind(fd, (&any as *const libc::sockaddr_storage).cast(), any_len) };
    note(&mut attempts, "bind".into(), last_errno(rc as libc::c_long));
    // SAFETY: listen takes plain integers.
    note(
        &mut attempts,
        "listen".into(),
        last_errno(unsafe { libc::listen(fd, 16) } as libc::c_long),
    );
    // The race: connects to EVIL on a container socket at RACE_FD, while the
    // host socket is swapped in and out of RACE_FD and the address flips
    // between EVIL and AF_UNSPEC.
    const RACE_FD: i32 = 900;
    let host_copy = rustix::io::dup(&conn)?;
    // Non-blocking everywhere: a connect of the host socket that went
    // anywhere but GOOD would otherwise wait for its SYN retries to end.
    let fl = rustix::fs::fcntl_getfl(&host_copy)?;
    rustix::fs::fcntl_setfl(&host_copy, fl | rustix::fs::OFlags::NONBLOCK)?;
    let fresh = move || {
        rustix::net::socket_with(
            family,
            SocketType::STREAM,
            rustix::net::SocketFlags::NONBLOCK,
            None,
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let (evil_sa, evil_len) = sockaddr_of(evil[0]);
    let shared = Arc::new(RacyStorage::from(&evil_sa));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let host_raw = host_copy.as_raw_fd();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: dup2 onto a number this process reserves for the race.
                unsafe { libc::dup2(host_raw, RACE_FD) };
                std::thread::yield_now();
                if let Ok(s) = fresh() {
                    // SAFETY: as above; the fresh socket is closed after.
                    unsafe { libc::dup2(s.as_raw_fd(), RACE_FD) };
                }
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let flipper = {
        let (stop, shared) = (stop.clone(), shared.clone());
        let real = evil_sa.ss_family;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                shared.family.store(libc::AF_UNSPEC as u16, Ordering::Relaxed);
                shared.family.store(real, Ordering::Relaxed);
            }
        })
    };
    let (mut race_ok, mut race_failed) = (0u32, 0u32);
    let mut errnos = std::collections::BTreeMap::<i32, u32>::new();
    for _ in 0..races {
        if let Ok(s) = fresh() {
            // SAFETY: as in the swapper.
            unsafe { libc::dup2(s.as_raw_fd(), RACE_FD) };
        }
        let rc = raw_connect_errno(RACE_FD, Arc::as_ptr(&shared).cast(), evil_len);
        if rc == 0 {
            race_ok += 1;
        } else {
            race_failed += 1;
            *errnos.entry(rc).or_default() += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = swapper.join();
    let _ = flipper.join();
    // SAFETY: closes the race's fd number, which only this function used.
    unsafe { libc::close(RACE_FD) };
    // What became of the host socket: still connected to GOOD, or (had a
    // race disconnected it) able to open a connection to EVIL?
    let still_connected = rustix::net::getpeername(&host_copy)
        .ok()
        .flatten()
        .and_then(|p| SocketAddr::try_from(p).ok())
        == Some(good);
    let after_race = if still_connected {
        "still connected to good".to_string()
    } else {
        let rc = raw_connect_errno(
            host_copy.as_raw_fd(),
            (&evil_sa as *const libc::sockaddr_storage).cast(),
            evil_len,
        );
        format!(
            "disconnected; connect to evil: errno {rc}, then {}",
            outcome(&host_copy)
        )
    };
    // SAFETY: shutdown takes plain integers.
    note(
        &mut attempts,
        "shutdown".into(),
        last_errno(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } as libc::c_long),
    );
    let (sa, len) = sockaddr_of(evil[0]);
    note(
        &mut attempts,
        "connect_after_shutdown".into(),
        raw_connect_errno(fd, (&sa as *const libc::sockaddr_storage).cast(), len),
    );
    drop(conn);
    println!(
        "{}",
        json!({"local": local, "echo": back == *b"ping", "attempts": attempts,
               "races": races, "race_connected": race_ok, "race_failed": race_failed,
               "race_errnos": errnos.iter().map(|(e, n)| (e.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
               "swaps": swaps.load(Ordering::Relaxed), "host_socket": after_race})
    );
    Ok(())
}

/// connect(2) through io_uring (`None`: AF_UNSPEC); 0, the errno, or -1
/// when io_uring itself is refused.
fn uring_connect(fd: i32, to: Option<SocketAddr>) -> i32 {
    let Ok(mut ring) = io_uring::IoUring::new(2) else {
        return -1;
    };
    let (sa, len) = match to {
        Some(a) => sockaddr_of(a),
        None => {
            // SAFETY: sockaddr_storage is plain integers; all-zero is AF_UNSPEC.
            (
                unsafe { std::mem::zeroed() },
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        }
    };
    let entry = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd),
        (&sa as *const libc::sockaddr_storage).cast(),
        len,
    )
    .build();
    // SAFETY: the sockaddr outlives the submission: we wait for its
    // completion below before `sa` goes out of scope.
    if unsafe { ring.submission().push(&entry) }.is_err() {
        return -1;
    }
    if ring.submit_and_wait(1).is_err() {
        return -1;
    }
    let res = ring.completion().next().map_or(-1, |c| c.result());
    if res < 0 {
        -res
    } else {
        0
    }
}
