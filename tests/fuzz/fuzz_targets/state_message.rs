//! The runc state message a container's runtime sends to the daemon's
//! listener (`ContainerProcessState` JSON, as many fds as its `fds` names),
//! and the `listenerMetadata` settings inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netaccel::oci::state::ContainerProcessState;

fuzz_target!(|data: &[u8]| {
    // The first byte stands for the number of fds that came with it.
    let Some((&fds, message)) = data.split_first() else {
        return;
    };
    if let Ok(state) = ContainerProcessState::parse(message, usize::from(fds % 4)) {
        if let Ok(settings) = state.settings() {
            let _ = netaccel::publish::check_unique(&settings.publish);
            let _ = settings.bind_bypass();
        }
    }
});
