//! What the daemon keeps in the keeper about each container, and how a new
//! daemon takes it back.
//!
//! A record holds what a registration decided (the container's id and pid,
//! its merged settings, whether its profile carries the listener guards,
//! its network namespace) and the host listeners bound for it since. A new
//! daemon re-enters the namespace through the recorded pid, checks that it
//! is still the recorded one, and serves the same notify fd again; the
//! container's sockets and listeners never moved. Calls the old daemon had
//! received but not answered are found by their ids (`sys::idlog`) and
//! answered as undecided calls are (`policy::fallback`).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::container::{Container, Mode};
use crate::daemon::Shared;
use crate::keeper::client::KeeperLink;
use crate::keeper::wire::{Entry, Kind};
use crate::oci::state::ContainerSettings;
use crate::policy::fallback::Fallback;
use crate::publish::{Listener, Listeners};
use crate::sys::idlog::IdLog;
use crate::sys::notify::NotifyFd;

/// A container as the keeper holds it for the next daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub id: String,
    /// The registered process (0 when unknown).
    pub pid: u32,
    /// `None`: served without acceleration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<AccelRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccelRecord {
    /// The settings it got: its own, plus what its registration socket added.
    pub settings: ContainerSettings,
    /// See `calls::Accel::guarded`.
    pub guarded: bool,
    /// Its network namespace's cookie: a pid that now lives elsewhere is
    /// not the container any more.
    pub netns: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerRecord>,
}

/// A host listener the container holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerRecord {
    pub addr: SocketAddr,
    pub inode: u64,
}

impl ContainerRecord {
    /// How its calls end when no daemon decides them.
    pub fn fallback(&self) -> Fallback {
        let has_listeners = self
            .accel
            .as_ref()
            .is_some_and(|a| !a.settings.bind_bypass().is_empty());
        crate::calls::undecided_answers(has_listeners)
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A container's entry in the keeper.
#[derive(Debug)]
pub struct Kept {
    link: Arc<KeeperLink>,
    key: u64,
    record: ContainerRecord,
}

impl Kept {
    /// Hands the keeper a copy of the container's notify fd and id page.
    pub fn hold(
        link: Arc<KeeperLink>,
        key: u64,
        record: ContainerRecord,
        notify: &NotifyFd,
        idlog: &IdLog,
    ) -> Self {
        let fds: [BorrowedFd<'_>; 2] = [notify.as_fd(), idlog.as_fd()];
        link.hold(key, Kind::Container, &record.fallback(), record.to_json(), &fds);
        Self { link, key, record }
    }

    /// The container's host listeners changed: so does its record.
    pub fn listeners_changed(&self, listeners: &Listeners) {
        let mut record = self.record.clone();
        if let Some(accel) = &mut record.accel {
            accel.listeners = listeners
                .of_owner(self.key)
                .into_iter()
                .map(|l| ListenerRecord {
                    addr: l.addr,
                    inode: l.inode,
                })
                .collect();
        }
        self.link.update(self.key, record.to_json());
    }

    /// The container is gone.
    pub fn forget(&self) {
        self.link.forget(self.key);
    }
}

/// Serves a container the keeper held for a previous daemon, until it
/// exits.
pub(crate) async fn reattach(entry: Entry, shared: Arc<Shared>, link: Arc<KeeperLink>) {
    let key = entry.key;
    let mut fds = entry.fds.into_iter();
    let notify = match fds.next().map(NotifyFd::new) {
        Some(Ok(n)) => n,
        _ => {
            tracing::error!(
                key,
                "the keeper handed back an entry without a notify fd; dropped"
            );
            link.forget(key);
            return;
        }
    };
    let idlog = fds.next().and_then(|fd| IdLog::open(fd).ok());
    if notify.hung_up() {
        tracing::info!(key, "container ended while no daemon ran");
        link.forget(key);
        return;
    }
    let record = serde_json::from_slice::<ContainerRecord>(&entry.record);
    let stranded = crate::keeper::answer_stranded(&notify, idlog.as_ref(), &entry.fallback);
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(key, error = %e, "unreadable record from the keeper: serving without acceleration");
            ContainerRecord {
                id: "<unreadable record>".into(),
                pid: 0,
                accel: None,
            }
        }
    };
    let mode = match &record.accel {
        None => Mode::PassThrough(entry.fallback.clone()),
        Some(a) => {
            match crate::daemon::accel_for(record.pid, &record.id, a.settings.clone(), a.guarded, &shared)
                .await
            {
                Ok((mode, fresh)) if fresh.netns == a.netns => {
                    for l in &a.listeners {
                        shared.listeners.record(Listener {
                            owner: key,
                            addr: l.addr,
                            inode: l.inode,
                        });
                    }
                    mode
                }
                Ok(_) => {
                    tracing::error!(container = %record.id, pid = record.pid, "the recorded pid lives in another network namespace now: serving without acceleration");
                    Mode::PassThrough(entry.fallback.clone())
                }
                Err(why) => {
                    tracing::error!(container = %record.id, pid = record.pid, reason = %why, "cannot re-enter the container's namespace: serving without acceleration");
                    Mode::PassThrough(entry.fallback.clone())
                }
            }
        }
    };
    let mut container = Container::with_serial(key, record.id.clone(), record.pid, notify, mode);
    container.idlog = idlog;
    container.restored = true;
    container.kept = Some(Kept { link, key, record });
    tracing::info!(
        container = %container.id,
        pid = container.pid,
        accelerated = matches!(container.mode, Mode::Accelerate { .. }),
        stranded,
        "container re-attached from the keeper"
    );
    crate::daemon::serve_tracked(&shared, container).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_knows_its_fallback() {
        let record = ContainerRecord {
            id: "c1".into(),
            pid: 42,
            accel: Some(AccelRecord {
                settings: ContainerSettings {
                    ignore: vec!["10.96.0.0/16".parse().expect("net")],
                    publish: vec!["8080:80".parse().expect("mapping")],
                    ignore_bind: false,
                },
                guarded: true,
                netns: 4096,
                listeners: vec![ListenerRecord {
                    addr: "0.0.0.0:8080".parse().expect("addr"),
                    inode: 77,
                }],
            }),
        };
        let back: ContainerRecord = serde_json::from_slice(&record.to_json()).expect("parse");
        assert_eq!(back, record);
        assert_ne!(
            record.fallback(),
            Fallback::continue_all(),
            "listeners need the daemon"
        );
        let mut no_bind = record.clone();
        if let Some(a) = &mut no_bind.accel {
            a.settings.ignore_bind = true;
        }
        assert_eq!(no_bind.fallback(), Fallback::continue_all());
        let plain = ContainerRecord {
            accel: None,
            ..record
        };
        assert_eq!(plain.fallback(), Fallback::continue_all());
    }
}
