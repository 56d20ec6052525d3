//! The keeper: a small process that holds a copy of every notify fd the
//! daemon serves, so that running containers survive the daemon's crash,
//! restart or upgrade.
//!
//! A seccomp notify fd dies with its last holder, and from then on every
//! notified syscall of the container fails with ENOSYS, for good. The
//! keeper is that last holder while no daemon runs. The daemon starts it
//! (or finds it) at its socket, hands it each registration (the notify fd,
//! the id page of `sys::idlog`, how undecided calls end, and an opaque
//! record of the container's settings), and a daemon started later gets
//! all of it back and serves the same fds again.
//!
//! While no daemon is attached, callers wait: the kernel queues their
//! notifications. If none attaches within the wait the last daemon set,
//! the keeper answers them itself, as `policy::fallback` says (the normal
//! path, or ENOSYS where that would undo a listener guard), including the
//! calls the dead daemon had received but not answered, until a daemon
//! attaches again. It exits once no daemon is attached and no container
//! is left.
//!
//! It is kept small on purpose: one thread, poll(2), fixed binary headers
//! (`wire`), no JSON, nothing read from containers but the syscall number
//! the kernel reports, no async runtime.

pub mod client;
pub mod wire;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::policy::fallback::{Answer, Fallback};
use crate::private_socket::{bind_private, PrivateSocketError};
use crate::sys::fdpass;
use crate::sys::idlog::{IdLog, SEARCH_WINDOW};
use crate::sys::notify::NotifyFd;
use wire::{Entry, Kind, Message};

/// Entries one keeper holds at most (each holds two fds).
const MAX_ENTRIES: usize = 1 << 16;
/// A daemon that connects must say hello, and read what it asked for,
/// within this time.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct KeeperConfig {
    pub socket: PathBuf,
    /// How long callers wait for a daemon before the keeper answers them
    /// (a daemon's hello replaces it).
    pub wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error(transparent)]
    Socket(#[from] PrivateSocketError),
    #[error("poll failed: {0}")]
    Poll(io::Error),
}

/// The keeper's socket next to the daemon's.
pub fn socket_beside(daemon_socket: &Path) -> PathBuf {
    daemon_socket.with_file_name("keeper.sock")
}

struct Held {
    fallback: Fallback,
    record: Vec<u8>,
    /// Present exactly for `Kind::Container` entries.
    notify: Option<NotifyFd>,
    idlog: Option<IdLog>,
    /// Calls the keeper answered itself.
    answered: u64,
}

impl Held {
    fn kind(&self) -> Kind {
        if self.notify.is_some() {
            Kind::Container
        } else {
            Kind::Bypass
        }
    }

    fn copy_fds(&self) -> io::Result<Vec<OwnedFd>> {
        let mut fds = Vec::new();
        if let Some(n) = &self.notify {
            fds.push(n.as_fd().try_clone_to_owned()?);
        }
        if let Some(l) = &self.idlog {
            fds.push(l.as_fd().try_clone_to_owned()?);
        }
        Ok(fds)
    }
}

/// Answers the calls a dead daemon received and never answered, found
/// around the last id it noted (`sys::idlog`), as undecided calls are;
/// returns how many. Used by the keeper when it starts answering and by a
/// daemon that re-attaches.
pub(crate) fn answer_stranded(notify: &NotifyFd, idlog: Option<&IdLog>, fallback: &Fallback) -> usize {
    let Some(last) = idlog.and_then(IdLog::last) else {
        return 0;
    };
    let ids = notify.waiting_ids_near(last, SEARCH_WINDOW);
    for &id in &ids {
        let _ = reply(notify, id, fallback.answer_unknown());
    }
    ids.len()
}

struct Keeper {
    listener: OwnedFd,
    entries: BTreeMap<u64, Held>,
    daemon: Option<(OwnedFd, u32)>,
    /// When the last daemon left (or the keeper started without one).
    detached_at: Instant,
    /// No daemon came back in time: the keeper answers calls.
    serving: bool,
    wait: Duration,
}

/// Runs the keeper until no daemon is attached and no container is left.
pub fn run(config: KeeperConfig) -> Result<(), KeeperError> {
    let listener = listen(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), wait_ms = config.wait.as_millis() as u64, "netaccel keeper listening");
    let mut keeper = Keeper {
        listener,
        entries: BTreeMap::new(),
        daemon: None,
        detached_at: Instant::now(),
        serving: false,
        wait: config.wait,
    };
    let result = keeper.serve();
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("netaccel keeper stopped: no daemon and no container left");
    result
}

fn listen(socket: &Path) -> Result<OwnedFd, KeeperError> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let seqpacket = |path: &Path| -> io::Result<(OwnedFd, SocketAddrUnix)> {
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((sock, SocketAddrUnix::new(path)?))
    };
    let live =
        |path: &Path| seqpacket(path).is_ok_and(|(probe, addr)| rustix::net::connect(&probe, &addr).is_ok());
    let bind = |path: &Path| -> io::Result<OwnedFd> {
        let (sock, addr) = seqpacket(path)?;
        rustix::net::bind(&sock, &addr)?;
        rustix::net::listen(&sock, 16)?;
        Ok(sock)
    };
    Ok(bind_private(socket, "keeper", live, bind)?)
}

/// What one poll round reported.
enum Event {
    Accept,
    Daemon,
    Notification(u64),
    Gone(u64),
}

impl Keeper {
    fn serve(&mut self) -> Result<(), KeeperError> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        loop {
            let timeout = match (&self.daemon, self.serving) {
                (None, false) => {
                    let left = self.wait.saturating_sub(self.detached_at.elapsed());
                    Some(Timespec {
                        tv_sec: left.as_secs() as i64,
                        tv_nsec: i64::from(left.subsec_nanos()),
                    })
                }
                _ => None,
            };
            let events = {
                let mut fds = vec![PollFd::new(&self.listener, PollFlags::IN)];
                if let Some((d, _)) = &self.daemon {
                    fds.push(PollFd::new(d, PollFlags::IN));
                }
                let first_entry = fds.len();
                // POLLHUP (no process uses the filter) is always reported;
                // notifications only matter while the keeper answers them.
                let want = if self.serving {
                    PollFlags::IN
                } else {
                    PollFlags::empty()
                };
                let mut keys = Vec::new();
                for (key, held) in &self.entries {
                    if let Some(n) = &held.notify {
                        fds.push(PollFd::new(n, want));
                        keys.push(*key);
                    }
                }
                match poll(&mut fds, timeout.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(KeeperError::Poll(e.into())),
                }
                let mut events = Vec::new();
                let ready = |f: &PollFd<'_>| f.revents();
                if !ready(&fds[0]).is_empty() {
                    events.push(Event::Accept);
                }
                if self.daemon.is_some() && !ready(&fds[1]).is_empty() {
                    events.push(Event::Daemon);
                }
                for (f, key) in fds[first_entry..].iter().zip(keys) {
                    let ev = ready(f);
                    if ev.contains(PollFlags::IN) {
                        events.push(Event::Notification(key));
                    } else if ev.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                        events.push(Event::Gone(key));
                    }
                }
                events
            };
            for event in events {
                match event {
                    Event::Daemon => self.read_daemon(),
                    Event::Accept => self.accept(),
                    Event::Notification(key) => self.answer_one(key),
                    Event::Gone(key) => {
                        if self.entries.remove(&key).is_some() {
                            tracing::debug!(key, "container gone: its notify fd has no users");
                        }
                    }
                }
            }
            if self.daemon.is_none() && !self.serving && self.detached_at.elapsed() >= self.wait {
                self.start_answering();
            }
            if self.daemon.is_none() && self.serving && self.containers() == 0 {
                return Ok(());
            }
        }
    }

    fn accept(&mut self) {
        let conn = match rustix::net::accept_with(&self.listener, rustix::net::SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        };
        if let Err(e) = self.attach(conn) {
            tracing::warn!(error = %e, "a daemon could not attach");
        }
    }

    /// Hello, then every entry, then End; the connection becomes the
    /// attached daemon's.
    fn attach(&mut self, conn: OwnedFd) -> io::Result<()> {
        use rustix::net::sockopt;
        sockopt::set_socket_timeout(&conn, sockopt::Timeout::Recv, Some(PEER_TIMEOUT))?;
        sockopt::set_socket_timeout(&conn, sockopt::Timeout::Send, Some(PEER_TIMEOUT))?;
        let peer = sockopt::socket_peercred(&conn)?;
        if peer.uid != rustix::process::getuid() {
            return Err(io::Error::other(format!("uid {} is not ours", peer.uid.as_raw())));
        }
        let mut buf = vec![0u8; wire::MAX_MESSAGE];
        let Some((len, fds)) = fdpass::recv_packet(&conn, &mut buf)? else {
            return Ok(());
        };
        let wait_ms = match Message::decode(buf.get(..len).unwrap_or_default(), fds) {
            Ok(Message::Hello { version, wait_ms }) if version == wire::VERSION => wait_ms,
            Ok(Message::Hello { version, .. }) => {
                return Err(io::Error::other(format!(
                    "daemon speaks keeper protocol {version}, this keeper {}",
                    wire::VERSION
                )))
            }
            Ok(_) => return Err(io::Error::other("first message is not a hello")),
            Err(e) => return Err(io::Error::other(e)),
        };
        let pid = peer.pid.as_raw_nonzero().get() as u32;
        if let Some((_, attached)) = &self.daemon {
            send(
                &conn,
                &Message::Busy {
                    daemon_pid: *attached,
                },
                &[],
            )?;
            return Ok(());
        }
        for (key, held) in &self.entries {
            let fds = held.copy_fds()?;
            let entry = Message::Entry(Entry {
                key: *key,
                kind: held.kind(),
                fallback: held.fallback.clone(),
                record: held.record.clone(),
                fds: Vec::new(),
            });
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            send(&conn, &entry, &borrowed)?;
        }
        send(
            &conn,
            &Message::End {
                version: wire::VERSION,
                keeper_pid: std::process::id(),
            },
            &[],
        )?;
        let answered: u64 = self.entries.values().map(|h| h.answered).sum();
        tracing::info!(
            daemon = pid,
            entries = self.entries.len(),
            answered_meanwhile = answered,
            "daemon attached; it serves the held containers again"
        );
        for held in self.entries.values_mut() {
            held.answered = 0;
        }
        self.daemon = Some((conn, pid));
        self.serving = false;
        self.wait = Duration::from_millis(u64::from(wait_ms));
        Ok(())
    }

    fn read_daemon(&mut self) {
        let Some((conn, pid)) = &self.daemon else { return };
        let pid = *pid;
        let mut buf = vec![0u8; wire::MAX_MESSAGE];
        let msg = match fdpass::recv_packet(conn, &mut buf) {
            Ok(Some((len, fds))) => Message::decode(buf.get(..len).unwrap_or_default(), fds),
            end => {
                if let Err(e) = end {
                    tracing::warn!(error = %e, "reading from the daemon failed");
                }
                tracing::info!(
                    daemon = pid,
                    containers = self.entries.len(),
                    wait_ms = self.wait.as_millis() as u64,
                    "daemon gone; holding its containers' notify fds"
                );
                self.daemon = None;
                self.detached_at = Instant::now();
                return;
            }
        };
        match msg {
            Ok(Message::Hold(entry)) => self.hold(entry),
            Ok(Message::Update { key, record }) => {
                if let Some(held) = self.entries.get_mut(&key) {
                    held.record = record;
                }
            }
            Ok(Message::Forget { key }) => {
                self.entries.remove(&key);
            }
            Ok(other) => tracing::warn!(message = ?other, "unexpected message from the daemon ignored"),
            Err(e) => tracing::warn!(error = %e, "bad message from the daemon ignored"),
        }
    }

    fn hold(&mut self, entry: Entry) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&entry.key) {
            tracing::error!(
                key = entry.key,
                "keeper full: this container will not survive a daemon restart"
            );
            return;
        }
        let mut fds = entry.fds.into_iter();
        let (notify, idlog) = match entry.kind {
            Kind::Bypass => (None, None),
            Kind::Container => match fds.next().map(NotifyFd::new) {
                Some(Ok(n)) => {
                    let idlog = fds.next().and_then(|fd| match IdLog::open(fd) {
                        Ok(log) => Some(log),
                        Err(e) => {
                            tracing::warn!(key = entry.key, error = %e, "unusable id page: calls a dead daemon left unanswered will not be found");
                            None
                        }
                    });
                    (Some(n), idlog)
                }
                Some(Err(e)) => {
                    tracing::warn!(key = entry.key, error = %e, "hold without a notify fd ignored");
                    return;
                }
                None => {
                    tracing::warn!(key = entry.key, "hold without fds ignored");
                    return;
                }
            },
        };
        self.entries.insert(
            entry.key,
            Held {
                fallback: entry.fallback,
                record: entry.record,
                notify,
                idlog,
                answered: 0,
            },
        );
    }

    /// No daemon came back in time: answer what waits, then every call.
    fn start_answering(&mut self) {
        self.serving = true;
        let mut stranded = 0;
        for held in self.entries.values_mut() {
            if let Some(notify) = &held.notify {
                let n = answer_stranded(notify, held.idlog.as_ref(), &held.fallback);
                held.answered += n as u64;
                stranded += n;
            }
        }
        let containers = self.containers();
        if containers > 0 {
            tracing::warn!(
                containers,
                stranded,
                wait_ms = self.wait.as_millis() as u64,
                "no daemon came back in time: the keeper answers the containers' calls (normal path, or ENOSYS where a listener guard needs the daemon) until one does"
            );
        }
    }

    /// Entries that hold a notify fd.
    fn containers(&self) -> usize {
        self.entries.values().filter(|h| h.notify.is_some()).count()
    }

    fn answer_one(&mut self, key: u64) {
        let Some(held) = self.entries.get_mut(&key) else {
            return;
        };
        let Some(notify) = &held.notify else { return };
        match notify.recv() {
            Ok(n) => {
                let _ = reply(notify, n.id, held.fallback.answer(n.nr));
                held.answered += 1;
            }
            // The caller left meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                tracing::warn!(key, error = %e, "receiving failed; dropping this container");
                self.entries.remove(&key);
            }
        }
    }
}

/// Answers call `id` as `answer` says.
pub(crate) fn reply(notify: &NotifyFd, id: u64, answer: Answer) -> io::Result<()> {
    match answer {
        Answer::Continue => notify.answer_continue(id)?,
        Answer::Fail(errno) => notify.answer(id, 0, errno)?,
    };
    Ok(())
}

/// Sends one message with `fds` attached.
pub(crate) fn send(conn: impl AsFd, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes = msg.encode().map_err(io::Error::other)?;
    if fds.is_empty() {
        rustix::net::send(&conn, &bytes, rustix::net::SendFlags::NOSIGNAL)?;
        return Ok(());
    }
    fdpass::send_with_fds(conn, &bytes, fds)
}
