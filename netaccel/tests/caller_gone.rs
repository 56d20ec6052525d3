//! A caller that goes away while its notification is being handled (killed,
//! or interrupted by a signal) is a normal event: every answer reports
//! `CallerGone` and nothing fails.
//!
//! A test thread loads a connect-notify filter on itself only, connects, and
//! is interrupted with a signal (no SA_RESTART) while the test holds its
//! notification: the kernel then drops the notification, as when a process
//! dies, and the thread's connect returns EINTR.

use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::RwLock;
use std::time::Duration;

use std::sync::Arc;

use netaccel::calls::{self, Accel, Event, Pending, Reply};
use netaccel::policy::netview::NetView;
use netaccel::publish::Listeners;
use netaccel::route::Routes;
use netaccel::sockopts::HostDefaults;
use netaccel::sys::netns::NetnsCookie;
use netaccel::sys::notify::{Delivery, NotifyFd};
use netaccel::sys::tracee::Callers;
use rootless_lab::seccomp::{notify_connect_on_this_thread, raw_connect};
use rootless_lab::wait_for;

extern "C" fn ignore_signal(_: libc::c_int) {}

#[tokio::test]
async fn answers_to_a_vanished_caller_report_caller_gone() {
    // SAFETY: installs a handler that does nothing, for SIGUSR1 only, without
    // SA_RESTART so the interrupted connect returns instead of restarting.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let (fd_tx, fd_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let notify = notify_connect_on_this_thread().expect("seccomp notify filter");
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        fd_tx.send((notify, tid)).expect("send fd");
        // Plain connect(2): std's TcpStream::connect retries on EINTR.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("a socket fd");
        let errno = raw_connect(sock.as_fd(), "127.0.0.1:9".parse().expect("addr"));
        let _ = done_tx.send(errno);
    });
    let (notify, tid) = fd_rx.recv().expect("notify fd");
    let notify = NotifyFd::new(notify).expect("a notify fd");
    let n = tokio::task::spawn_blocking({
        let fd = notify.as_fd().try_clone_to_owned().expect("dup");
        move || NotifyFd::new(fd).expect("notify fd").recv()
    })
    .await
    .expect("join")
    .expect("notification");
    assert!(notify.id_valid(n.id));

    // SAFETY: signals our own test thread, whose tid we were given.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
    assert_eq!(rc, 0);
    wait_for("the notification to be dropped", Duration::from_secs(5), || {
        (!notify.id_valid(n.id)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("thread returned"),
        libc::EINTR
    );

    assert_eq!(
        notify.answer_continue(n.id).expect("no error"),
        Delivery::CallerGone
    );
    assert_eq!(
        notify.answer(n.id, 0, libc::ECONNREFUSED).expect("no error"),
        Delivery::CallerGone
    );
    let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("socket");
    assert_eq!(
        notify.install_fd(n.id, sock.as_fd(), 3, true).expect("no error"),
        Delivery::CallerGone
    );

    // The whole handler: the caller's memory and fds are gone too.
    let accel = Accel {
        owner: 0,
        guarded: false,
        container_netns: NetnsCookie::current().expect("netns"),
        host_netns: None,
        view: Arc::new(RwLock::new(NetView::default())),
        defaults: Arc::new(HostDefaults::probe().expect("defaults")),
        routes: Arc::new(Routes::open().expect("routes")),
        published: Vec::new(),
        listeners: Arc::new(Listeners::default()),
        callers: Callers::default(),
    };
    let pending = Pending::new(&notify, n.id);
    let handled = calls::handle(&accel, &pending, &n).await.expect("handled");
    match (&handled.reply, handled.event) {
        (Reply::Gone, Event::CallerGone) | (Reply::Continue, Event::Kept(_)) => {}
        other => panic!("unexpected outcome for a vanished caller: {other:?}"),
    }
    let answered = pending.answer(handled.reply).expect("no error");
    assert_eq!(answered.delivery, Delivery::CallerGone);
}
