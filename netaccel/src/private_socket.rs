//! A unix socket only its owner can use: its directory 0700, the socket
//! 0600, never taken from a live server, a stale one replaced. The
//! daemon's, the API's and the keeper's sockets are made this way.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PrivateSocketError {
    #[error("cannot create socket directory {dir}: {source}")]
    SocketDir { dir: PathBuf, source: io::Error },
    #[error("another {server} is already listening on {socket}; stop it or choose another socket")]
    AlreadyRunning { server: &'static str, socket: PathBuf },
    #[error("cannot remove stale socket {socket}: {source}")]
    StaleSocket { socket: PathBuf, source: io::Error },
    #[error("cannot listen on {socket}: {source}")]
    Bind { socket: PathBuf, source: io::Error },
}

/// Binds `socket` with `bind` once the path is free: `live` says whether a
/// server answers on an existing socket there; `server` names that server
/// in the error.
pub fn bind_private<L>(
    socket: &Path,
    server: &'static str,
    live: impl FnOnce(&Path) -> bool,
    bind: impl FnOnce(&Path) -> io::Result<L>,
) -> Result<L, PrivateSocketError> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| PrivateSocketError::SocketDir {
                dir: dir.to_owned(),
                source,
            })?;
    }
    if socket.exists() {
        if live(socket) {
            return Err(PrivateSocketError::AlreadyRunning {
                server,
                socket: socket.to_owned(),
            });
        }
        std::fs::remove_file(socket).map_err(|source| PrivateSocketError::StaleSocket {
            socket: socket.to_owned(),
            source,
        })?;
    }
    let bind_err = |source| PrivateSocketError::Bind {
        socket: socket.to_owned(),
        source,
    };
    let listener = bind(socket).map_err(bind_err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}
