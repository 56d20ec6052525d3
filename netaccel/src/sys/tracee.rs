//! Access to the process that made an intercepted syscall: its memory, its fds.
//!
//! Every result here may be stale the moment it returns (the caller can die and
//! its pid be reused); callers re-check `NotifyFd::id_valid` afterwards.

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for a thread, not only a group leader.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// Copies `buf.len()` bytes at `addr` in the address space of thread `tid`.
/// Fails with EFAULT for a bad pointer, ESRCH when the thread is gone.
pub fn read_memory(tid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which we own mutably for the call; the
    // remote iovec is only interpreted in the other process by the kernel,
    // which validates it.
    let n = unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        // A partial read means the range crosses into unmapped memory.
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// A pidfd for the calling thread of a notification.
pub struct CallerPidfd {
    pub fd: OwnedFd,
    /// The pidfd names this one thread (`PIDFD_THREAD`), not its whole
    /// thread group (kernels before 6.9).
    pub per_thread: bool,
}

/// Opens a pidfd for thread `tid`.
pub fn open_thread(tid: u32) -> io::Result<CallerPidfd> {
    let pid = Pid::from_raw(tid as i32).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    match rustix::process::pidfd_open(pid, PidfdFlags::from_bits_retain(PIDFD_THREAD)) {
        Ok(fd) => Ok(CallerPidfd { fd, per_thread: true }),
        // Before Linux 6.9 only thread-group leaders have pidfds: use the group.
        Err(e) if e == rustix::io::Errno::INVAL => {
            let tgid = thread_group_of(tid)?;
            let pid = Pid::from_raw(tgid as i32).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
            Ok(CallerPidfd {
                fd: rustix::process::pidfd_open(pid, PidfdFlags::empty())?,
                per_thread: false,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// How many calling threads a container keeps handles for.
const KEPT_THREADS: usize = 8;
/// How many fds' fdinfo files are kept per thread (a program that opens
/// connections one after another reuses the same few fd numbers). Each open
/// fdinfo file holds a page of kernel memory once read, so the bound is low.
const KEPT_FDINFOS: usize = 2;

/// What is kept of one calling thread.
#[derive(Debug)]
struct KeptThread {
    tid: u32,
    /// A per-thread pidfd.
    pidfd: OwnedFd,
    /// Open `/proc/<tid>/fdinfo/<fd>` files, most recently used first.
    fdinfos: Vec<(RawFd, OwnedFd)>,
}

/// Handles on a container's most recent calling threads, so that a thread's
/// next call skips `pidfd_open` and the open of its fd's fdinfo file (7 and
/// 9 µs here). Nothing kept can reach another thread:
///
/// - Only per-thread pidfds are kept, and one fails with ESRCH once its
///   thread has exited, so a tid reused by a later thread never reaches the
///   new one through a stale entry. The caller still checks the
///   notification (`ID_VALID`) after copying: a live notification means its
///   thread was alive during the copy, and two live threads never share a tid.
/// - An open fdinfo file is bound to its thread in the same way (reading it
///   fails once the thread is gone) and to an fd number, whose flags the
///   kernel formats anew on every read from offset 0.
#[derive(Debug, Default)]
pub struct Callers {
    /// Most recently used first.
    kept: std::sync::Mutex<Vec<KeptThread>>,
}

impl Callers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<KeptThread>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Copies fd `fd` of thread `tid` through its kept pidfd; `None` when no
    /// pidfd is kept for `tid` or its thread has exited (the entry is then
    /// dropped).
    pub fn copy_fd(&self, tid: u32, fd: RawFd) -> Option<io::Result<OwnedFd>> {
        let mut kept = self.lock();
        let at = kept.iter().position(|k| k.tid == tid)?;
        match copy_fd(&kept[at].pidfd, fd) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                kept.remove(at);
                None
            }
            result => {
                let entry = kept.remove(at);
                kept.insert(0, entry);
                Some(result)
            }
        }
    }

    /// Keeps `pidfd` for `tid`'s next calls, if it names that one thread.
    pub fn keep(&self, tid: u32, pidfd: CallerPidfd) {
        if !pidfd.per_thread {
            return;
        }
        let mut kept = self.lock();
        kept.retain(|k| k.tid != tid);
        kept.insert(
            0,
            KeptThread {
                tid,
                pidfd: pidfd.fd,
                fdinfos: Vec::new(),
            },
        );
        kept.truncate(KEPT_THREADS);
    }

    /// The flags of fd `fd` of thread `tid` (see [`fd_flags`]), through a
    /// kept fdinfo file when there is one. A file opened here is kept when
    /// the thread is.
    pub fn fd_flags(&self, tid: u32, fd: RawFd) -> io::Result<FdFlags> {
        let mut kept = self.lock();
        let Some(thread) = kept.iter_mut().find(|k| k.tid == tid) else {
            drop(kept);
            return fd_flags(tid, fd);
        };
        if let Some(at) = thread.fdinfos.iter().position(|(f, _)| *f == fd) {
            let (_, file) = thread.fdinfos.remove(at);
            // An error means the thread is gone or the fd closed: open anew.
            if let Ok(flags) = read_fdinfo_flags(&file) {
                thread.fdinfos.insert(0, (fd, file));
                return Ok(flags);
            }
        }
        let file = open_fdinfo(tid, fd)?;
        let flags = read_fdinfo_flags(&file)?;
        thread.fdinfos.insert(0, (fd, file));
        thread.fdinfos.truncate(KEPT_FDINFOS);
        Ok(flags)
    }

    /// How many threads have handles kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

fn thread_group_of(tid: u32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in /proc status"))
}

/// A copy of the caller's fd `fd` (same open file description).
pub fn copy_fd(pidfd: impl AsFd, fd: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_getfd(pidfd, fd, PidfdGetfdFlags::empty())?)
}

/// What the caller's fd carries that its replacement must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdFlags {
    /// FD_CLOEXEC: a flag of the caller's fd table, not of the file.
    pub cloexec: bool,
    /// O_NONBLOCK, a flag of the file.
    pub nonblocking: bool,
}

/// The flags of the caller's fd `fd`, read from /proc (one open, one read:
/// this is on every bypassed connect, see [`Callers`] for the second time).
/// The kernel prints the file's flags with O_CLOEXEC added when the fd
/// has FD_CLOEXEC, so one read answers both.
pub fn fd_flags(tid: u32, fd: RawFd) -> io::Result<FdFlags> {
    read_fdinfo_flags(&open_fdinfo(tid, fd)?)
}

fn open_fdinfo(tid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        format!("/proc/{tid}/fdinfo/{fd}").as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// Reads an fdinfo file from its start, which makes the kernel format it
/// anew.
fn read_fdinfo_flags(file: &OwnedFd) -> io::Result<FdFlags> {
    // "pos:" and "flags:" come first; 256 bytes always hold them.
    let mut buf = [0u8; 256];
    let n = rustix::io::pread(file, &mut buf, 0)?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(parse_fdinfo_flags)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no flags in fdinfo"))
}

fn parse_fdinfo_flags(info: &str) -> Option<FdFlags> {
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    let flags = u32::from_str_radix(flags.trim(), 8).ok()?;
    Some(FdFlags {
        cloexec: flags & libc::O_CLOEXEC as u32 != 0,
        nonblocking: flags & libc::O_NONBLOCK as u32 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_flags_are_octal() {
        let flags = |info| parse_fdinfo_flags(info).map(|f| (f.cloexec, f.nonblocking));
        assert_eq!(flags("pos:\t0\nflags:\t02000002\n"), Some((true, false)));
        assert_eq!(flags("pos:\t0\nflags:\t0000002\n"), Some((false, false)));
        assert_eq!(flags("pos:\t0\nflags:\t02004002\n"), Some((true, true)));
        assert_eq!(flags("pos:\t0\n"), None);
        assert_eq!(flags("flags:\tzz\n"), None);
    }

    #[test]
    fn reads_own_memory_and_rejects_bad_pointers() {
        let me = std::process::id();
        let src = *b"netaccel";
        let mut buf = [0u8; 8];
        read_memory(me, src.as_ptr() as u64, &mut buf).expect("read own memory");
        assert_eq!(&buf, b"netaccel");
        let err = read_memory(me, 8, &mut buf).expect_err("read address 8");
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    }

    #[test]
    fn copies_an_fd_of_a_thread_and_reads_its_cloexec_flag() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let pidfd = open_thread(tid).expect("pidfd of own thread");
        let copy = copy_fd(&pidfd.fd, raw).expect("pidfd_getfd");
        assert!(std::os::fd::AsRawFd::as_raw_fd(&copy) != raw);
        assert!(
            fd_flags(tid, raw).expect("fdinfo").cloexec,
            "std opens files O_CLOEXEC"
        );
    }

    fn thread_with_pidfd() -> (u32, CallerPidfd) {
        std::thread::spawn(|| {
            let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
            (tid, open_thread(tid).expect("pidfd of a thread"))
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn kept_pidfds_serve_live_threads_and_drop_exited_ones() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
        let kept = Callers::default();
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        assert!(kept.copy_fd(me, raw).is_none(), "nothing kept yet");
        let pidfd = open_thread(me).expect("pidfd of own thread");
        if !pidfd.per_thread {
            eprintln!("skipped: this kernel has no per-thread pidfds (Linux < 6.9), so none are kept");
            return;
        }
        kept.keep(me, pidfd);
        kept.copy_fd(me, raw)
            .expect("kept")
            .expect("copy through the kept pidfd");
        assert_eq!(
            kept.copy_fd(me, 9999)
                .expect("kept")
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(Some(libc::EBADF)),
            "a closed fd is the caller's error, not a stale pidfd"
        );

        // A thread that has exited: its entry goes, whoever has its tid now.
        let (tid, pidfd) = thread_with_pidfd();
        kept.keep(tid, pidfd);
        assert_eq!(kept.len(), 2);
        assert!(kept.copy_fd(tid, raw).is_none(), "exited thread");
        assert_eq!(kept.len(), 1);

        // Bounded: the least recently used go first.
        for _ in 0..KEPT_THREADS + 4 {
            let (tid, pidfd) = thread_with_pidfd();
            kept.keep(tid, pidfd);
        }
        assert_eq!(kept.len(), KEPT_THREADS);
        assert!(kept.copy_fd(me, raw).is_none(), "pushed out");
    }

    #[test]
    fn kept_fdinfo_follows_the_fd_number_and_its_flags() {
        use std::os::fd::AsRawFd;
        let kept = Callers::default();
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let pidfd = open_thread(me).expect("pidfd of own thread");
        if !pidfd.per_thread {
            eprintln!("skipped: this kernel has no per-thread pidfds (Linux < 6.9), so none are kept");
            return;
        }
        kept.keep(me, pidfd);
        let socket = || {
            rustix::net::socket(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::STREAM,
                None,
            )
            .expect("socket")
        };
        // A number far above what other tests of this process open, so none
        // of them can take it while this test closes and reuses it.
        let mut sock = rustix::io::fcntl_dupfd_cloexec(socket(), 900).expect("dup to a high number");
        let fd = sock.as_raw_fd();
        assert!(kept.fd_flags(me, fd).expect("fdinfo").cloexec);
        rustix::io::fcntl_setfd(&sock, rustix::io::FdFlags::empty()).expect("clear cloexec");
        assert!(!kept.fd_flags(me, fd).expect("kept fdinfo").cloexec, "read anew");
        // The same number for another file: dup2 replaces it (and clears
        // close-on-exec, which the number had again).
        rustix::io::fcntl_setfd(&sock, rustix::io::FdFlags::CLOEXEC).expect("set cloexec");
        assert!(kept.fd_flags(me, fd).expect("kept fdinfo").cloexec);
        rustix::io::dup2(socket(), &mut sock).expect("dup2");
        assert_eq!(sock.as_raw_fd(), fd, "same number");
        assert!(!kept.fd_flags(me, fd).expect("fdinfo of the other socket").cloexec);
        drop(sock);
        assert!(kept.fd_flags(me, fd).is_err(), "closed fd");

        // A thread not kept is read without keeping anything.
        let (tid, pidfd) = thread_with_pidfd();
        drop(pidfd);
        assert!(kept.fd_flags(tid, fd).is_err(), "exited thread");
        assert_eq!(kept.len(), 1);
    }
}
