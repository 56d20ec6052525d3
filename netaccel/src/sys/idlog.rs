//! The last notification id each container's daemon received, in memory
//! that outlives the daemon.
//!
//! A notification the daemon has received (`SECCOMP_IOCTL_NOTIF_RECV`) but
//! not answered is never handed out again: if the daemon dies then, the
//! caller waits until someone answers that very id. Ids are sequential per
//! filter from a random start, so the last one received is enough to find
//! such calls again (`NotifyFd::waiting_ids_near`). The daemon writes it
//! with one plain store per notification into a shared page of a memfd,
//! which the keeper holds next to the notify fd; a restarted daemon (or the
//! keeper) reads it back. Nothing else is kept per call.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// How far around the last id received a search for unanswered calls
/// goes, each way: more than calls in flight at once (receiving threads,
/// and handlers waiting on the runtime).
pub const SEARCH_WINDOW: u64 = 1024;

/// The page: the last id received, and whether one was.
#[repr(C)]
struct Page {
    last: AtomicU64,
    seen: AtomicU64,
}

const LEN: usize = 4096;

/// A mapped id page.
pub struct IdLog {
    fd: OwnedFd,
    page: NonNull<Page>,
}

// SAFETY: the page holds only atomics, which any thread may read and write.
unsafe impl Send for IdLog {}
// SAFETY: as above; shared references only ever reach the atomics.
unsafe impl Sync for IdLog {}

impl IdLog {
    /// A new, empty page.
    pub fn create() -> io::Result<Self> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        let fd = memfd_create("netaccel-ids", MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, LEN as u64)?;
        Self::map(fd)
    }

    /// Maps a page another daemon created (handed back by the keeper).
    pub fn open(fd: OwnedFd) -> io::Result<Self> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size < LEN as i64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("id page is {size} bytes, not {LEN}"),
            ));
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<Self> {
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        // SAFETY: a new shared mapping of LEN bytes of a memfd at least that
        // long, at an address the kernel picks; it overlaps nothing of ours
        // and lives until `Drop` unmaps it.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                LEN,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let page = NonNull::new(ptr.cast::<Page>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { fd, page })
    }

    fn page(&self) -> &Page {
        // SAFETY: the mapping is page-aligned, LEN bytes long (more than a
        // `Page`), readable and writable, and stays mapped while `self`
        // lives; `Page` is two atomics, valid for any bit pattern (a new
        // memfd is zero-filled).
        unsafe { self.page.as_ref() }
    }

    /// Records that notification `id` was received.
    pub fn note(&self, id: u64) {
        let page = self.page();
        page.last.store(id, Ordering::Relaxed);
        page.seen.store(1, Ordering::Relaxed);
    }

    /// The last id recorded, if any.
    pub fn last(&self) -> Option<u64> {
        let page = self.page();
        (page.seen.load(Ordering::Relaxed) != 0).then(|| page.last.load(Ordering::Relaxed))
    }
}

impl AsFd for IdLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for IdLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made, which nothing
        // refers to once `self` is dropped.
        let _ = unsafe { rustix::mm::munmap(self.page.as_ptr().cast(), LEN) };
    }
}

impl std::fmt::Debug for IdLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdLog").field("last", &self.last()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_mapping_of_the_same_page_sees_the_last_id() {
        let log = IdLog::create().expect("memfd");
        assert_eq!(log.last(), None);
        let other = IdLog::open(log.as_fd().try_clone_to_owned().expect("dup")).expect("map again");
        log.note(u64::MAX - 1);
        log.note(7);
        assert_eq!(other.last(), Some(7));
        drop(log);
        assert_eq!(other.last(), Some(7), "the page lives while one mapping does");
        let small = rustix::fs::memfd_create("small", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        assert!(IdLog::open(small).is_err(), "an empty memfd is not a page");
    }
}
