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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { listen, count } => serve(listen, count),
        Cmd::Blackhole { listen } => blackhole(listen),
        Cmd::Connect { dst, bytes } => connect(dst, bytes),
        Cmd::Threads { slow, fast } => threads(slow, fast),
        Cmd::Race { good, evil, iterations } => race(good, evil, iterations),
        Cmd::RawConnect { dst } => raw_connect(dst),
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
    let fillers: Vec<TcpStream> = (0..2).filter_map(|_| TcpStream::connect_timeout(&listen, Duration::from_millis(300)).ok()).collect();
    println!("{}", json!({"listening": listen.to_string(), "queued": fillers.len()}));
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

fn connect(dst: SocketAddr, bytes: usize) -> Result<()> {
    let mut conn = TcpStream::connect_timeout(&dst, Duration::from_secs(10)).with_context(|| format!("connect {dst}"))?;
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
    let back = echo.join().map_err(|_| anyhow::anyhow!("echo reader panicked"))??;
    println!(
        "{}",
        json!({"local": local.to_string(), "peer": peer.to_string(), "sent": data.len(), "echo_intact": back == data})
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
        let sock = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None)?;
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
    let local = SocketAddr::try_from(local).map(|a| a.ip().to_string()).unwrap_or_default();
    println!("{}", json!({"local": local}));
    Ok(())
}
