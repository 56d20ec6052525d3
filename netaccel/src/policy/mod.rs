//! Pure decisions, with unit tests: addresses as the kernel decodes them, the
//! ignore list, a container's view of its network, the verdicts, and the
//! answers when no daemon decides. No
//! syscalls and no `unsafe` here; `calls` gathers the facts and acts.
#![forbid(unsafe_code)]

pub mod fallback;
pub mod ignore;
pub mod netview;
pub mod sockaddr;
pub mod verdict;
