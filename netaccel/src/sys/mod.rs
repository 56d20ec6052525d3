//! Every raw syscall of the daemon and every `unsafe` block of the crate:
//! thin, checked wrappers, no decisions. The rest of the crate is compiled
//! with `unsafe_code` denied (lib.rs), so this is the one room to audit.
#![allow(unsafe_code)]

pub mod fdpass;
pub mod idlog;
pub mod netns;
pub mod notify;
pub mod nshelper;
pub mod session;
pub mod sock;
pub mod tracee;
