//! The keeper with real seccomp notify fds, no containers needed: a test
//! thread loads a connect-notify filter on itself, the test plays the
//! daemon (holds the fd in a real `netaccel keeper` process, receives the
//! thread's notification), then "dies" without answering.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netaccel::calls::undecided_answers;
use netaccel::keeper::client::{KeeperLink, LinkError};
use netaccel::keeper::wire::Kind;
use netaccel::policy::fallback::Fallback;
use netaccel::sys::idlog::IdLog;
use netaccel::sys::notify::NotifyFd;
use rootless_lab::seccomp::{notify_connect_on_this_thread, raw_connect};

const WAIT: Duration = Duration::from_millis(600);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netaccel"))
}

/// A thread under a connect-notify filter; each value sent on the returned
/// channel is an address it connects to (a fresh socket each time), and
/// each connect's errno comes back on the other.
struct Caller {
    go: mpsc::Sender<std::net::SocketAddrV4>,
    done: mpsc::Receiver<i32>,
}

fn caller() -> (Caller, OwnedFd) {
    let (fd_tx, fd_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<std::net::SocketAddrV4>();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        fd_tx
            .send(notify_connect_on_this_thread().expect("seccomp notify filter"))
            .expect("send fd");
        for addr in go_rx {
            let sock = socket2_tcp();
            let _ = done_tx.send(raw_connect(sock.as_fd(), addr));
        }
    });
    (Caller { go, done }, fd_rx.recv().expect("notify fd"))
}

fn socket2_tcp() -> OwnedFd {
    rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .expect("socket")
}

fn listener() -> (std::net::TcpListener, std::net::SocketAddrV4) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let std::net::SocketAddr::V4(addr) = l.local_addr().expect("addr") else {
        unreachable!("bound to IPv4")
    };
    (l, addr)
}

fn socket_in(dir: &Path) -> PathBuf {
    dir.join("keeper.sock")
}

/// Plays a daemon that registers the caller's fd with the keeper.
fn hold(link: &KeeperLink, notify: &NotifyFd, idlog: &IdLog, fallback: &Fallback) {
    link.hold(
        7,
        Kind::Container,
        fallback,
        br#"{"id":"t"}"#.to_vec(),
        &[notify.as_fd(), idlog.as_fd()],
    );
}

#[test]
fn a_call_a_dead_daemon_received_is_answered_on_the_normal_path_after_the_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_in(dir.path());
    let (link, held) = KeeperLink::attach(&socket, &exe(), WAIT).expect("keeper starts");
    assert!(held.is_empty());
    let (caller, fd) = caller();
    let notify = NotifyFd::new(fd).expect("notify fd");
    let idlog = IdLog::create().expect("id page");
    hold(&link, &notify, &idlog, &Fallback::continue_all());

    let (_server, addr) = listener();
    caller.go.send(addr).expect("go");
    let n = notify.recv().expect("the caller's connect");
    idlog.note(n.id);
    // The daemon dies with the call received and unanswered.
    let died = Instant::now();
    drop((link, notify, idlog));
    let errno = caller
        .done
        .recv_timeout(WAIT + Duration::from_secs(10))
        .expect("the keeper answered the stranded call");
    assert_eq!(
        errno, 0,
        "continued: the kernel connected the caller's own socket"
    );
    assert!(
        died.elapsed() >= WAIT,
        "answered before the wait: {:?}",
        died.elapsed()
    );

    // Once no daemon and no container are left, the keeper goes too.
    drop(caller);
    rootless_lab::wait_for("the keeper to exit", WAIT + Duration::from_secs(10), || {
        (!socket.exists()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_new_daemon_gets_the_fd_back_and_serves_it_and_calls_queued_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_in(dir.path());
    let (link, _) = KeeperLink::attach(&socket, &exe(), Duration::from_secs(30)).expect("keeper starts");
    let (caller, fd) = caller();
    let notify = NotifyFd::new(fd).expect("notify fd");
    let idlog = IdLog::create().expect("id page");
    hold(&link, &notify, &idlog, &Fallback::continue_all());
    drop((link, notify, idlog));

    // No daemon: the call waits in the kernel.
    let (_server, addr) = listener();
    caller.go.send(addr).expect("go");
    assert!(
        caller.done.recv_timeout(Duration::from_millis(300)).is_err(),
        "answered without a daemon"
    );

    let (link, mut held) =
        KeeperLink::attach(&socket, &exe(), Duration::from_secs(30)).expect("attach again");
    assert_eq!(held.len(), 1, "{held:?}");
    let entry = held.pop().expect("entry");
    assert_eq!(
        (entry.key, entry.kind, entry.record.as_slice()),
        (7, Kind::Container, &br#"{"id":"t"}"#[..])
    );
    let mut fds = entry.fds.into_iter();
    let notify = NotifyFd::new(fds.next().expect("notify fd")).expect("a notify fd");
    assert!(IdLog::open(fds.next().expect("id page")).is_ok());
    let n = notify.recv().expect("the queued connect");
    notify.answer(n.id, 0, libc::ECONNREFUSED).expect("answer");
    assert_eq!(
        caller.done.recv_timeout(Duration::from_secs(5)),
        Ok(libc::ECONNREFUSED)
    );

    // One daemon at a time.
    match KeeperLink::attach(&socket, &exe(), WAIT) {
        Err(LinkError::Busy { daemon_pid, .. }) => assert_eq!(daemon_pid, std::process::id()),
        other => panic!("a second daemon attached: {other:?}"),
    }
    drop(link);
}

#[test]
fn with_host_listeners_an_undecided_connect_fails_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_in(dir.path());
    let (link, _) = KeeperLink::attach(&socket, &exe(), WAIT).expect("keeper starts");
    let (caller, fd) = caller();
    let notify = NotifyFd::new(fd).expect("notify fd");
    let idlog = IdLog::create().expect("id page");
    hold(&link, &notify, &idlog, &undecided_answers(true));
    drop((link, notify, idlog));
    let (_server, addr) = listener();
    caller.go.send(addr).expect("go");
    assert_eq!(
        caller.done.recv_timeout(WAIT + Duration::from_secs(10)),
        Ok(libc::ENOSYS),
        "a connect that could disconnect a listener is not run unchecked"
    );
}
