//! The daemon's side of the keeper: find it or start it, get back what it
//! holds, and keep it up to date. Every call is one short blocking send on
//! a local socket with a send timeout, so a stuck keeper costs a log line,
//! never a stuck daemon.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire::{self, Entry, Kind, Message};
use crate::policy::fallback::Fallback;
use crate::sys::fdpass;

/// How long a keeper the daemon started has to begin listening.
const START_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot start the keeper ({exe} keeper): {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("the keeper at {socket} did not start listening within {START_TIMEOUT:?}; its log is the daemon's stderr")]
    NotListening { socket: PathBuf },
    #[error("talking to the keeper at {socket}: {source}")]
    Io { socket: PathBuf, source: io::Error },
    #[error("the keeper at {socket} serves another daemon (pid {daemon_pid}); stop that one first")]
    Busy { socket: PathBuf, daemon_pid: u32 },
    #[error("the keeper at {socket} answered out of protocol: {detail} (an older or newer netaccel? stop its `netaccel keeper` process once no container needs it)")]
    Protocol { socket: PathBuf, detail: String },
}

/// An attached keeper.
#[derive(Debug)]
pub struct KeeperLink {
    conn: Mutex<OwnedFd>,
    socket: PathBuf,
    pub keeper_pid: u32,
}

impl KeeperLink {
    /// Attaches to the keeper at `socket`, starting `exe keeper` there when
    /// none listens, and returns what it held for the previous daemon.
    /// `wait` is how long callers wait for a daemon once this one is gone.
    pub fn attach(socket: &Path, exe: &Path, wait: Duration) -> Result<(Self, Vec<Entry>), LinkError> {
        let io_err = |source| LinkError::Io {
            socket: socket.to_owned(),
            source,
        };
        let conn = match connect(socket) {
            Ok(c) => c,
            Err(_) => {
                start(socket, exe, wait)?;
                let started = Instant::now();
                loop {
                    match connect(socket) {
                        Ok(c) => break c,
                        Err(_) if started.elapsed() < START_TIMEOUT => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => {
                            return Err(LinkError::NotListening {
                                socket: socket.to_owned(),
                            })
                        }
                    }
                }
            }
        };
        use rustix::net::sockopt;
        sockopt::set_socket_timeout(&conn, sockopt::Timeout::Recv, Some(IO_TIMEOUT))
            .map_err(|e| io_err(e.into()))?;
        sockopt::set_socket_timeout(&conn, sockopt::Timeout::Send, Some(IO_TIMEOUT))
            .map_err(|e| io_err(e.into()))?;
        let hello = Message::Hello {
            version: wire::VERSION,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        super::send(&conn, &hello, &[]).map_err(io_err)?;
        let protocol = |detail: String| LinkError::Protocol {
            socket: socket.to_owned(),
            detail,
        };
        let mut entries = Vec::new();
        let mut buf = vec![0u8; wire::MAX_MESSAGE];
        loop {
            let Some((len, fds)) = fdpass::recv_packet(&conn, &mut buf).map_err(io_err)? else {
                return Err(protocol("it closed the connection during the hello".into()));
            };
            match Message::decode(buf.get(..len).unwrap_or_default(), fds) {
                Ok(Message::Entry(e)) => entries.push(e),
                Ok(Message::End { version, keeper_pid }) if version == wire::VERSION => {
                    let link = Self {
                        conn: Mutex::new(conn),
                        socket: socket.to_owned(),
                        keeper_pid,
                    };
                    return Ok((link, entries));
                }
                Ok(Message::Busy { daemon_pid }) => {
                    return Err(LinkError::Busy {
                        socket: socket.to_owned(),
                        daemon_pid,
                    })
                }
                Ok(other) => return Err(protocol(format!("unexpected {other:?}"))),
                Err(e) => return Err(protocol(e.to_string())),
            }
        }
    }

    /// Hands the keeper a copy of `fds` (a notify fd and its id page) or
    /// a record alone, under `key`.
    pub fn hold(&self, key: u64, kind: Kind, fallback: &Fallback, record: Vec<u8>, fds: &[BorrowedFd<'_>]) {
        let msg = Message::Hold(Entry {
            key,
            kind,
            fallback: fallback.clone(),
            record,
            fds: Vec::new(),
        });
        self.send(&msg, fds, key);
    }

    /// Replaces the record held under `key`.
    pub fn update(&self, key: u64, record: Vec<u8>) {
        self.send(&Message::Update { key, record }, &[], key);
    }

    /// Lets the keeper drop what it holds under `key`.
    pub fn forget(&self, key: u64) {
        self.send(&Message::Forget { key }, &[], key);
    }

    fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>], key: u64) {
        let sent = match self.conn.lock() {
            Ok(conn) => super::send(conn.as_fd(), msg, fds),
            Err(_) => Err(io::Error::other("keeper connection lock poisoned")),
        };
        if let Err(e) = sent {
            tracing::error!(key, socket = %self.socket.display(), error = %e, "the keeper did not take an update: this container may not survive a daemon restart");
        }
    }
}

fn connect(socket: &Path) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&sock, &SocketAddrUnix::new(socket)?)?;
    Ok(sock)
}

/// Starts `exe keeper` in a session of its own (a signal to the daemon's
/// process group or terminal does not reach it), logging to the daemon's
/// stderr; a thread reaps it should it exit while the daemon runs.
fn start(socket: &Path, exe: &Path, wait: Duration) -> Result<(), LinkError> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("keeper")
        .arg("--socket")
        .arg(socket)
        .arg("--wait-ms")
        .arg(wait.as_millis().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut child =
        crate::sys::session::spawn_in_new_session(&mut cmd).map_err(|source| LinkError::Spawn {
            exe: exe.to_owned(),
            source,
        })?;
    tracing::info!(pid = child.id(), socket = %socket.display(), "started the keeper");
    let _ = std::thread::Builder::new()
        // Not `netaccel-N.I`: those names are the serving threads.
        .name("keeper-reaper".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                tracing::info!(%status, "the keeper exited");
            }
        });
    Ok(())
}
