//! Starting a process in a session of its own.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Spawns `cmd` as the leader of a new session, so that a signal to the
/// caller's process group or terminal (Ctrl-C, a group kill) does not reach
/// it and it outlives the caller.
pub fn spawn_in_new_session(cmd: &mut Command) -> io::Result<Child> {
    // SAFETY: the closure runs between fork and exec and only calls
    // setsid, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    cmd.spawn()
}
