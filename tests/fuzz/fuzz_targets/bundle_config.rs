//! The bundle's config.json the runtime wrapper reads and rewrites: the
//! engine's seccomp profile (merged with the fast path's rule), annotations
//! and `process.env` (the node's ignore ranges).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netaccel::oci::profile::NotifyProfile;
use netaccel::oci::runtime::{bundle_ignore, merge_seccomp};
use netaccel::oci::state::ContainerSettings;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let ignore = bundle_ignore(&config).unwrap_or_default();
    let settings = ContainerSettings {
        ignore,
        ..Default::default()
    };
    if let Ok(ours) = NotifyProfile::new(Path::new("/run/user/1000/netaccel/netaccel.sock"), &settings) {
        let _ = merge_seccomp(config.pointer("/linux/seccomp"), &ours);
    }
});
