//! The keeper's protocol: one SOCK_SEQPACKET message per request, fds as
//! SCM_RIGHTS, fixed little-endian headers. The keeper reads the headers
//! only; each entry's record (the daemon's JSON about a container or a
//! bypass) is opaque bytes to it.
//!
//! Daemon → keeper: `Hello` (attach; the keeper answers with every entry it
//! holds, then `End`), `Hold` (keep this entry, with its fds), `Update` (a
//! new record for a held entry), `Forget`. Keeper → daemon: `Entry`…,
//! `End`, or `Busy` when another daemon is attached.

use std::os::fd::OwnedFd;

use crate::policy::fallback::Fallback;

/// Changes whenever a message changes shape; a daemon and a keeper of
/// different versions refuse each other instead of misreading.
pub const VERSION: u32 = 1;
/// The largest message (an entry with a 64 KiB record).
pub const MAX_MESSAGE: usize = 64 * 1024 + 1024;
const MAX_RULES: usize = 64;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A served notify fd: fds are the notify fd and, optionally, its id page.
    Container,
    /// A bypass4netnsd API registration: no fds.
    Bypass,
}

/// One thing the keeper holds for the daemon.
#[derive(Debug)]
pub struct Entry {
    pub key: u64,
    pub kind: Kind,
    /// How its calls end when no daemon decides them.
    pub fallback: Fallback,
    pub record: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

#[derive(Debug)]
pub enum Message {
    Hello {
        version: u32,
        wait_ms: u32,
    },
    Hold(Entry),
    Update {
        key: u64,
        record: Vec<u8>,
    },
    Forget {
        key: u64,
    },
    /// (keeper) one held entry, a copy of its fds attached.
    Entry(Entry),
    /// (keeper) all entries sent.
    End {
        version: u32,
        keeper_pid: u32,
    },
    /// (keeper) another daemon is attached.
    Busy {
        daemon_pid: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("keeper message too short for its kind ({0} bytes)")]
    Short(usize),
    #[error("unknown keeper message kind {0:#x}")]
    UnknownOp(u8),
    #[error("unknown keeper entry kind {0}")]
    UnknownKind(u8),
    #[error("keeper entry with {0} fallback rules (at most {MAX_RULES})")]
    TooManyRules(usize),
    #[error("keeper message of {0} bytes (at most {MAX_MESSAGE})")]
    TooLong(usize),
}

const HELLO: u8 = b'H';
const HOLD: u8 = b'K';
const UPDATE: u8 = b'U';
const FORGET: u8 = b'F';
const ENTRY: u8 = b'E';
const END: u8 = b'Z';
const BUSY: u8 = b'B';

/// A cursor over a message, failing instead of panicking when it ends.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Short(self.bytes.len()))?;
        let part = self
            .bytes
            .get(self.at..end)
            .ok_or(WireError::Short(self.bytes.len()))?;
        self.at = end;
        Ok(part)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn rest(&mut self) -> Vec<u8> {
        let rest = self.bytes.get(self.at..).unwrap_or_default().to_vec();
        self.at = self.bytes.len();
        rest
    }
}

impl Message {
    /// The message's bytes; its fds (`Hold`, `Entry`) travel beside them.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        match self {
            Message::Hello { version, wait_ms } => {
                out.push(HELLO);
                out.extend(version.to_le_bytes());
                out.extend(wait_ms.to_le_bytes());
            }
            Message::Hold(e) => encode_entry(&mut out, HOLD, e)?,
            Message::Entry(e) => encode_entry(&mut out, ENTRY, e)?,
            Message::Update { key, record } => {
                out.push(UPDATE);
                out.extend(key.to_le_bytes());
                out.extend(record);
            }
            Message::Forget { key } => {
                out.push(FORGET);
                out.extend(key.to_le_bytes());
            }
            Message::End { version, keeper_pid } => {
                out.push(END);
                out.extend(version.to_le_bytes());
                out.extend(keeper_pid.to_le_bytes());
            }
            Message::Busy { daemon_pid } => {
                out.push(BUSY);
                out.extend(daemon_pid.to_le_bytes());
            }
        }
        if out.len() > MAX_MESSAGE {
            return Err(WireError::TooLong(out.len()));
        }
        Ok(out)
    }

    /// Reads a message and takes the fds that came with it.
    pub fn decode(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Self, WireError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(WireError::TooLong(bytes.len()));
        }
        let mut r = Reader { bytes, at: 0 };
        Ok(match r.u8()? {
            HELLO => Message::Hello {
                version: r.u32()?,
                wait_ms: r.u32()?,
            },
            HOLD => Message::Hold(decode_entry(&mut r, fds)?),
            ENTRY => Message::Entry(decode_entry(&mut r, fds)?),
            UPDATE => Message::Update {
                key: r.u64()?,
                record: r.rest(),
            },
            FORGET => Message::Forget { key: r.u64()? },
            END => Message::End {
                version: r.u32()?,
                keeper_pid: r.u32()?,
            },
            BUSY => Message::Busy { daemon_pid: r.u32()? },
            op => return Err(WireError::UnknownOp(op)),
        })
    }
}

fn encode_entry(out: &mut Vec<u8>, op: u8, e: &Entry) -> Result<(), WireError> {
    let rules = e.fallback.rules();
    if rules.len() > MAX_RULES {
        return Err(WireError::TooManyRules(rules.len()));
    }
    out.push(op);
    out.extend(e.key.to_le_bytes());
    out.push(match e.kind {
        Kind::Container => 1,
        Kind::Bypass => 2,
    });
    out.extend((rules.len() as u16).to_le_bytes());
    for (nr, errno) in rules {
        out.extend(nr.to_le_bytes());
        out.extend(errno.to_le_bytes());
    }
    out.extend(&e.record);
    Ok(())
}

fn decode_entry(r: &mut Reader<'_>, fds: Vec<OwnedFd>) -> Result<Entry, WireError> {
    let key = r.u64()?;
    let kind = match r.u8()? {
        1 => Kind::Container,
        2 => Kind::Bypass,
        k => return Err(WireError::UnknownKind(k)),
    };
    let n = usize::from(r.u16()?);
    if n > MAX_RULES {
        return Err(WireError::TooManyRules(n));
    }
    let mut rules = Vec::with_capacity(n);
    for _ in 0..n {
        rules.push((r.i32()?, r.i32()?));
    }
    Ok(Entry {
        key,
        kind,
        fallback: Fallback::failing(rules),
        record: r.rest(),
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: &Message) -> Message {
        Message::decode(&m.encode().expect("encode"), Vec::new()).expect("decode")
    }

    #[test]
    fn every_message_reads_back() {
        let entry = || Entry {
            key: 7,
            kind: Kind::Container,
            fallback: Fallback::failing(vec![(42, 38), (48, 38)]),
            record: br#"{"id":"c1"}"#.to_vec(),
            fds: Vec::new(),
        };
        match roundtrip(&Message::Hold(entry())) {
            Message::Hold(e) => {
                assert_eq!((e.key, e.kind, e.record), (7, Kind::Container, entry().record));
                assert_eq!(e.fallback, entry().fallback);
            }
            other => panic!("{other:?}"),
        }
        let bypass = Entry {
            kind: Kind::Bypass,
            fallback: Fallback::continue_all(),
            ..entry()
        };
        assert!(
            matches!(roundtrip(&Message::Entry(bypass)), Message::Entry(e) if e.kind == Kind::Bypass && e.fallback == Fallback::continue_all())
        );
        assert!(matches!(
            roundtrip(&Message::Hello {
                version: VERSION,
                wait_ms: 10_000
            }),
            Message::Hello {
                version: VERSION,
                wait_ms: 10_000
            }
        ));
        assert!(
            matches!(roundtrip(&Message::Update { key: 3, record: b"x".to_vec() }), Message::Update { key: 3, record } if record == b"x")
        );
        assert!(matches!(
            roundtrip(&Message::Forget { key: 9 }),
            Message::Forget { key: 9 }
        ));
        assert!(matches!(
            roundtrip(&Message::End {
                version: VERSION,
                keeper_pid: 5
            }),
            Message::End {
                version: VERSION,
                keeper_pid: 5
            }
        ));
        assert!(matches!(
            roundtrip(&Message::Busy { daemon_pid: 6 }),
            Message::Busy { daemon_pid: 6 }
        ));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let hold = Message::Hold(Entry {
            key: 1,
            kind: Kind::Container,
            fallback: Fallback::failing(vec![(42, 38)]),
            record: Vec::new(),
            fds: Vec::new(),
        })
        .encode()
        .expect("encode");
        for cut in 0..hold.len() {
            assert!(Message::decode(&hold[..cut], Vec::new()).is_err(), "{cut} bytes");
        }
        assert_eq!(
            Message::decode(b"?", Vec::new()).err(),
            Some(WireError::UnknownOp(b'?'))
        );
        let mut bad_kind = hold.clone();
        bad_kind[9] = 9;
        assert_eq!(
            Message::decode(&bad_kind, Vec::new()).err(),
            Some(WireError::UnknownKind(9))
        );
        let mut many = hold.clone();
        many[10..12].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            Message::decode(&many, Vec::new()).err(),
            Some(WireError::TooManyRules(usize::from(u16::MAX)))
        );
        let long = Message::Update {
            key: 1,
            record: vec![b'x'; MAX_MESSAGE],
        };
        assert!(matches!(long.encode(), Err(WireError::TooLong(_))));
    }
}
