//! A property of the live daemon: whatever sequence of registrations,
//! notified calls, container exits, bad messages and bypass4netnsd API
//! requests (nerdctl's bodies whole or damaged, random path parameters and
//! routes) it is handed, it keeps serving the containers it has (a witness
//! registered first gets every connect answered after every step), answers
//! every API request with a success or a client's error, never panics, and
//! gives back every fd it took once the containers are gone and the API's
//! bypasses deleted (its own and its keeper's open fds return to their
//! baseline).
//!
//! The sequence is drawn from a seed (printed; replay it with
//! `NETACCEL_PROPERTY_SEED=N`); `NETACCEL_PROPERTY_STEPS` sets its length
//! (default 1000). "Containers" are threads with a connect-notify filter of
//! their own (`rootless_lab::seccomp`); a thread that ends is a container
//! that exited.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netaccel::sys::fdpass::send_with_fds;
use rootless_lab::seccomp::notify_connect_on_this_thread;
use rootless_lab::{unix_http, wait_for};

use common::Daemon;

/// xorshift64*: the sequence must replay from its seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn state_json(pid: u32, id: &str) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": pid, "metadata": "",
        "state": {"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": pid, "bundle": "/"}
    })
    .to_string()
    .into_bytes()
}

/// What a registered "container" thread does after registering.
enum Then {
    /// Connects this many times, then exits.
    Connects(u32),
    /// Waits for a word on the channel, connecting each time, until the
    /// channel closes (the witness).
    Serve(mpsc::Receiver<()>, mpsc::Sender<bool>),
}

/// A thread that connects to the daemon, loads a connect-notify filter,
/// registers with `payload` (its notify fd first, then `extra` fds) and
/// does `then`. For `Connects`, answers whether every connect succeeded.
fn container(
    label: String,
    socket: &Path,
    payload: Vec<u8>,
    extra: Vec<OwnedFd>,
    target: SocketAddr,
    then: Then,
) -> mpsc::Receiver<Result<(), String>> {
    let socket = socket.to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stream = UnixStream::connect(&socket).expect("connect daemon");
        let notify = notify_connect_on_this_thread().expect("seccomp notify filter");
        let mut fds = vec![notify.as_fd()];
        fds.extend(extra.iter().map(AsFd::as_fd));
        // The daemon may refuse the message part way: that is its right.
        let _ = send_with_fds(&stream, &payload, &fds);
        drop(extra);
        drop(notify);
        drop(stream);
        match then {
            Then::Connects(n) => {
                let result = (0..n).try_for_each(|i| {
                    std::net::TcpStream::connect(target)
                        .map(drop)
                        .map_err(|e| format!("{label}: connect {} of {n}: {e}", i + 1))
                });
                let _ = tx.send(result);
            }
            Then::Serve(ask, answer) => {
                while ask.recv().is_ok() {
                    let _ = answer.send(std::net::TcpStream::connect(target).is_ok());
                }
            }
        }
    });
    rx
}

/// Every byte as `%XX`: any bytes make a valid request path.
fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// One request to the bypass4netnsd-compatible API: nerdctl's body (its
/// socket inside the API's directory, so the bypass starts) whole or
/// damaged, random bytes, a path parameter of random bytes, an unknown
/// route or method. Every answer must be a client's error or a success.
fn api_request(d: &Daemon, rng: &mut Rng, step: u64) -> (String, u16) {
    let dir = d
        .api
        .as_deref()
        .expect("started with the API")
        .parent()
        .expect("api dir");
    let id = format!("{step:016x}");
    let body = serde_json::json!({
        "id": id, "socketPath": dir.join(format!("bypass4netns/{}.sock", &id[..15])),
        "pidFilePath": dir.join(format!("{id}.pid")), "logFilePath": "",
        "portMapping": [{"protos": ["tcp"], "parentIP": "0.0.0.0", "parentPort": 20000 + step % 20000, "childIP": "", "childPort": 80}],
        "ignoreSubnets": ["10.4.0.0/24", "auto"], "ignoreBind": rng.below(2) == 0
    })
    .to_string();
    let (method, path, body, what) = match rng.below(6) {
        0 => ("POST", "/v1/bypass".to_owned(), body, "nerdctl's POST"),
        1 => {
            let mut b = body.into_bytes();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
            (
                "POST",
                "/v1/bypass".to_owned(),
                String::from_utf8_lossy(&b).into_owned(),
                "a damaged POST",
            )
        }
        2 => {
            let len = rng.below(200) as usize;
            (
                "POST",
                "/v1/bypass".to_owned(),
                String::from_utf8_lossy(&rng.bytes(len)).into_owned(),
                "random bytes POSTed",
            )
        }
        3 => {
            let len = rng.below(300) as usize;
            let path = format!("/v1/bypass/{}", percent(&rng.bytes(len)));
            ("DELETE", path, String::new(), "DELETE of a random id")
        }
        4 => (
            "DELETE",
            format!("/v1/bypass/{:016x}", rng.below(step.max(1))),
            String::new(),
            "DELETE of an earlier id",
        ),
        _ => {
            let method = ["GET", "PUT", "PATCH", "DELETE"][rng.below(4) as usize];
            let path =
                ["/v1/bypass", "/v1/netaccel/status", "/v1/bypass/", "/v2", "/"][rng.below(5) as usize];
            (method, path.to_owned(), String::new(), "another method or route")
        }
    };
    let (code, answer) = unix_http(
        d.api.as_deref().expect("started with the API"),
        method,
        &path,
        &body,
    )
    .expect("the API answers");
    assert!(
        (200..500).contains(&code),
        "step {step}: {method} {path} ({what}) answered {code}: {answer}\n{}",
        d.log()
    );
    (format!("API: {what} ({code})"), code)
}

/// Sends raw bytes (and fds) and hangs up: a client that is not runc.
fn raw_message(socket: &Path, bytes: &[u8], fds: &[OwnedFd]) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return;
    };
    if fds.is_empty() {
        let _ = s.write_all(bytes);
    } else {
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let _ = send_with_fds(&s, bytes, &borrowed);
    }
}

/// An fd that is anything but a seccomp notify fd.
fn other_fd(rng: &mut Rng) -> OwnedFd {
    match rng.below(3) {
        0 => std::fs::File::open("/dev/null").expect("devnull").into(),
        1 => {
            let (r, _w) = rustix::pipe::pipe().expect("pipe");
            r
        }
        _ => {
            let (a, _b) = UnixStream::pair().expect("pair");
            a.into()
        }
    }
}

#[test]
fn any_sequence_of_registrations_exits_and_bad_messages_keeps_the_daemon_serving_without_leaks() {
    let seed = env_u64("NETACCEL_PROPERTY_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let steps = env_u64("NETACCEL_PROPERTY_STEPS").unwrap_or(1000);
    eprintln!("seed {seed} (NETACCEL_PROPERTY_SEED={seed} replays it), {steps} steps");
    let mut rng = Rng(seed);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let target = listener.local_addr().expect("addr");
    // Accepts (and drops) every connection, so the backlog never fills.
    std::thread::spawn(move || for _ in listener.incoming() {});

    let mut d = Daemon::start(true, &["--keeper-wait", "1"]);
    let keeper = d.keeper_pid();
    let baseline = d.open_fds(keeper);
    let (ask, asked) = mpsc::channel();
    let (answered, answers) = mpsc::channel();
    let _witness_done = container(
        "witness".into(),
        &d.socket,
        state_json(std::process::id(), "witness"),
        Vec::new(),
        target,
        Then::Serve(asked, answered),
    );
    // The measure sees a container's fds: the witness's notify fd is held
    // by the daemon and by the keeper once its first call is answered.
    ask.send(()).expect("witness");
    assert_eq!(
        answers.recv_timeout(Duration::from_secs(20)),
        Ok(true),
        "{}",
        d.log()
    );
    // (The keeper gets its copy a moment after the registration.)
    wait_for("the witness's fds to show", Duration::from_secs(10), || {
        let now = d.open_fds(keeper);
        now.iter().zip(&baseline).all(|(w, b)| w.1 > b.1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} against {baseline:?}", d.open_fds(keeper)));
    let mut pending = Vec::new();
    let mut counts = [0u32; 8];
    let mut answers_by_code = std::collections::BTreeMap::new();
    for step in 0..steps {
        let kind = rng.below(8) as usize;
        counts[kind] += 1;
        let what = match kind {
            0 => {
                let n = rng.below(4) as u32;
                pending.push(container(
                    format!("step {step}: register and connect {n} time(s)"),
                    &d.socket,
                    state_json(std::process::id(), &format!("c{step}")),
                    Vec::new(),
                    target,
                    Then::Connects(n),
                ));
                format!("a container registering and connecting {n} time(s)")
            }
            1 => {
                let extra = (0..1 + rng.below(3)).map(|_| other_fd(&mut rng)).collect();
                pending.push(container(
                    format!("step {step}: extra fds"),
                    &d.socket,
                    state_json(std::process::id(), &format!("x{step}")),
                    extra,
                    target,
                    Then::Connects(1),
                ));
                "a registration with extra fds".into()
            }
            2 => {
                let mut payload = state_json(std::process::id(), &format!("t{step}"));
                // At least one byte: on a stream socket the kernel sends no
                // fds with an empty message, and the container would keep a
                // filter with no listener (ENOSYS) whatever the daemon did.
                let cut = 1 + rng.below(payload.len() as u64 - 1) as usize;
                payload.truncate(cut);
                let flip = rng.below(4) as usize;
                for _ in 0..flip {
                    let i = rng.below(payload.len().max(1) as u64) as usize;
                    if let Some(b) = payload.get_mut(i) {
                        *b = rng.next() as u8;
                    }
                }
                pending.push(container(
                    format!("step {step}: damaged state"),
                    &d.socket,
                    payload,
                    Vec::new(),
                    target,
                    Then::Connects(1),
                ));
                "a registration with a truncated or damaged state".into()
            }
            3 => {
                // Another pid: one that is not the sender's (pid 1, a pid
                // that cannot exist).
                let pid = [1, u32::MAX / 2][rng.below(2) as usize];
                pending.push(container(
                    format!("step {step}: pid {pid}"),
                    &d.socket,
                    state_json(pid, &format!("p{step}")),
                    Vec::new(),
                    target,
                    Then::Connects(1),
                ));
                format!("a registration claiming pid {pid}")
            }
            4 => {
                let len = rng.below(9000) as usize;
                let bytes = rng.bytes(len);
                let fds: Vec<OwnedFd> = (0..rng.below(3)).map(|_| other_fd(&mut rng)).collect();
                raw_message(&d.socket, &bytes, &fds);
                format!("{len} random bytes with {} non-notify fd(s)", fds.len())
            }
            5 => {
                raw_message(&d.socket, &state_json(std::process::id(), "nofd"), &[]);
                "a state without any fd".into()
            }
            6 => {
                let s = UnixStream::connect(&d.socket).ok();
                drop(s);
                "a client that hangs up at once".into()
            }
            _ => {
                let (what, code) = api_request(&d, &mut rng, step);
                *answers_by_code.entry(code).or_insert(0u32) += 1;
                what
            }
        };
        // Every container step answered (or its thread would hang here).
        if rng.below(4) == 0 || step + 1 == steps {
            for rx in pending.drain(..) {
                let result = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
                    panic!(
                        "step {step} ({what}): a container's connect was never answered:\n{}",
                        d.log()
                    )
                });
                if let Err(e) = result {
                    panic!(
                        "after step {step}: a container's connect failed: {e}\n{}",
                        d.log()
                    );
                }
            }
        }
        ask.send(()).expect("witness");
        let ok = answers.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            panic!(
                "step {step} ({what}): the witness's connect was never answered:\n{}",
                d.log()
            )
        });
        assert!(ok, "step {step} ({what}): the witness's connect failed");
        d.assert_alive(&format!("step {step} ({what})"));
    }
    eprintln!(
        "steps by kind (register+connect, extra fds, damaged state, other pid, random bytes, no fd, hang-up, API request): {counts:?}; API answers by status: {answers_by_code:?}"
    );
    assert!(
        answers_by_code.contains_key(&201) && answers_by_code.contains_key(&400),
        "the API both started bypasses and refused bodies: {answers_by_code:?}"
    );

    // The bypasses the API started are stopped through it; the witness
    // exits too; then every fd the daemon and keeper took is given back.
    let (code, listed) = unix_http(
        d.api.as_deref().expect("started with the API"),
        "GET",
        "/v1/bypass",
        "",
    )
    .expect("list");
    assert_eq!(code, 200, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("list JSON");
    for b in listed.as_array().expect("a list") {
        let id = b["id"].as_str().expect("id");
        let (code, body) = unix_http(
            d.api.as_deref().expect("started with the API"),
            "DELETE",
            &format!("/v1/bypass/{}", percent(id.as_bytes())),
            "",
        )
        .expect("delete");
        assert_eq!(code, 200, "DELETE {id}: {body}");
    }
    drop(ask);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = d.open_fds(keeper);
        if now == baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "open fds (pid, count) {now:?}, at start {baseline:?}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.assert_alive("the last step");
    d.assert_no_panic();
}

#[test]
fn every_truncation_of_a_state_message_is_served_pass_through() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let target = listener.local_addr().expect("addr");
    std::thread::spawn(move || for _ in listener.incoming() {});
    let mut d = Daemon::start(true, &["--keeper-wait", "1"]);
    let full = state_json(std::process::id(), "cut");
    let mut failed = Vec::new();
    // From one byte: no fd travels with an empty message on a stream socket.
    for cut in 1..full.len() {
        let payload = full[..cut].to_vec();
        let rx = container(
            format!("cut {cut}"),
            &d.socket,
            payload,
            Vec::new(),
            target,
            Then::Connects(1),
        );
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{e}: {:?}", String::from_utf8_lossy(&full[..cut]))),
            Err(_) => failed.push(format!("cut {cut}: never answered")),
        }
    }
    d.assert_alive("every truncation");
    d.assert_no_panic();
    assert!(failed.is_empty(), "{failed:#?}\n{}", d.log());
}
