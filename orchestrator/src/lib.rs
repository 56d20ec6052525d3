//! u7s: rootless Kubernetes, kubeadm nodes in rootless container engines.
//!
//! This crate grows command by command (see the project's issues); today it
//! holds the host checks behind `u7s doctor`.

pub mod doctor;
