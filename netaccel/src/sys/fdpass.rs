//! Reading a whole message and its SCM_RIGHTS fds from a unix stream socket.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Fds accepted per message; more than the one we expect is a protocol error,
/// but they are received (and then closed or served) rather than left to the
/// kernel to drop silently.
const MAX_FDS: usize = 8;

/// A message read until it was complete or the peer closed its end.
#[derive(Debug, Default)]
pub struct Message {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// More than the allowed bytes were sent; `bytes` holds the first part.
    pub oversized: bool,
    /// The kernel dropped fds that did not fit (MSG_CTRUNC).
    pub fds_truncated: bool,
}

/// Reads until `complete` says the message is whole, the peer closes its
/// end, or `max_len` bytes arrived, collecting every fd sent with the data.
///
/// A sender may keep its end open after the message (runc never closes its
/// connection to the seccomp agent until its process exits), so a reader
/// that waited for EOF could wait on a peer that waits on it.
pub async fn read_message(
    stream: &UnixStream,
    max_len: usize,
    complete: impl Fn(&Message) -> bool,
) -> io::Result<Message> {
    let mut msg = Message::default();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let (n, fds, truncated) = stream
            .async_io(Interest::READABLE, || recv_chunk(stream, &mut chunk))
            .await?;
        msg.fds.extend(fds);
        msg.fds_truncated |= truncated;
        if n == 0 {
            return Ok(msg);
        }
        let room = max_len.saturating_sub(msg.bytes.len());
        msg.bytes.extend_from_slice(&chunk[..n.min(room)]);
        if n > room {
            msg.oversized = true;
            return Ok(msg);
        }
        if complete(&msg) {
            return Ok(msg);
        }
    }
}

/// True once `bytes` hold one whole JSON value, or a syntax error that no
/// further bytes can mend; false while the value is still incomplete.
pub fn json_value_ended(bytes: &[u8]) -> bool {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => true,
        Some(Err(e)) => !e.is_eof(),
        None => false,
    }
}

fn recv_chunk(stream: &UnixStream, chunk: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(chunk)];
    let got = rustix::net::recvmsg(stream, &mut iov, &mut ancillary, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((got.bytes, fds, got.flags.contains(ReturnFlags::CTRUNC)))
}

/// Sends `bytes` with `fds` attached in one message (blocking socket).
pub fn send_with_fds(
    sock: impl std::os::fd::AsFd,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut ancillary = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(rustix::net::SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    let iov = [io::IoSlice::new(bytes)];
    let sent = rustix::net::sendmsg(sock, &iov, &mut ancillary, rustix::net::SendFlags::empty())?;
    if sent != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Receives one datagram or packet (a SOCK_SEQPACKET message) and its
/// fds from a blocking socket into `buf`; `Ok(None)` at end of stream. A
/// message longer than `buf` or with more than `MAX_FDS` fds is an error
/// (its fds are closed), never half-read.
pub fn recv_packet(
    sock: impl std::os::fd::AsFd,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let got = loop {
        match rustix::net::recvmsg(&sock, &mut iov, &mut ancillary, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for m in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if got.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message or fds truncated",
        ));
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((got.bytes, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn reads_data_and_fds_until_eof_and_caps_size() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let devnull = std::fs::File::open("/dev/null").expect("open");
        send_with_fds(&a, b"hello", &[devnull.as_fd(), devnull.as_fd()]).expect("send");
        std::io::Write::write_all(&mut &a, b" world").expect("write");
        drop(a);
        b.set_nonblocking(true).expect("nonblocking");
        let b = UnixStream::from_std(b).expect("tokio stream");
        let msg = read_message(&b, 8, |_| false).await.expect("read");
        assert_eq!(msg.bytes, b"hello wo");
        assert!(msg.oversized);
        assert_eq!(msg.fds.len(), 2);
        assert!(!msg.fds_truncated);
    }

    #[tokio::test]
    async fn a_complete_message_is_returned_while_the_peer_keeps_its_end_open() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let devnull = std::fs::File::open("/dev/null").expect("open");
        // As runc does: the JSON and its fd in one sendmsg, the connection
        // left open.
        send_with_fds(&a, br#"{"fds":["seccompFd"],"pid":1}"#, &[devnull.as_fd()]).expect("send");
        b.set_nonblocking(true).expect("nonblocking");
        let b = UnixStream::from_std(b).expect("tokio stream");
        let read = read_message(&b, 1 << 20, |m| json_value_ended(&m.bytes));
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("returns without waiting for EOF")
            .expect("read");
        assert_eq!(msg.bytes, br#"{"fds":["seccompFd"],"pid":1}"#);
        assert_eq!(msg.fds.len(), 1);
        drop(a);
    }

    #[tokio::test]
    async fn a_message_split_across_writes_is_read_whole() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        b.set_nonblocking(true).expect("nonblocking");
        let b = UnixStream::from_std(b).expect("tokio stream");
        let reader = tokio::spawn(async move {
            read_message(&b, 1 << 20, |m| json_value_ended(&m.bytes))
                .await
                .map(|m| m.bytes)
        });
        std::io::Write::write_all(&mut &a, br#"{"a": [1, "}"#).expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "half a value is not a message");
        std::io::Write::write_all(&mut &a, br#""]}"#).expect("write");
        let bytes = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("returns once whole")
            .expect("task")
            .expect("read");
        assert_eq!(bytes, br#"{"a": [1, "}"]}"#);
        drop(a);
    }

    #[test]
    fn json_value_ended_tells_whole_from_partial() {
        assert!(!json_value_ended(b""));
        assert!(!json_value_ended(b"  \n"));
        assert!(!json_value_ended(br#"{"pid": 1, "fds": ["#));
        assert!(!json_value_ended(br#"{"s": "}"#));
        assert!(json_value_ended(br#"{"pid": 1}"#));
        assert!(
            json_value_ended(br#"{"pid": 1} trailing"#),
            "the parser rejects the rest"
        );
        assert!(
            json_value_ended(b"{pid"),
            "a syntax error will not be mended by more bytes"
        );
    }
}
