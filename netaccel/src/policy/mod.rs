//! Pure decisions, with unit tests: addresses as the kernel decodes them, the
//! ignore list, a container's view of its network, and the verdicts. No
//! syscalls and no `unsafe` here; `calls` gathers the facts and acts.
#![forbid(unsafe_code)]

pub mod ignore;
pub mod netview;
pub mod sockaddr;
pub mod verdict;
