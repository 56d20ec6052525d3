//! A body posted to the bypass4netnsd-compatible API (`POST /v1/bypass`)
//! and the checks the daemon makes before serving it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netaccel::api::{check_spec, BypassSpec};

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<BypassSpec>(data) {
        if let Ok((_, settings)) = check_spec(&spec, Path::new("/run/user/1000")) {
            let _ = netaccel::publish::check_unique(&settings.publish);
        }
    }
});
