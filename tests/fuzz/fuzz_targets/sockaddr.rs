//! Socket address bytes and lengths read from a container's memory at a
//! `connect`/`bind`/`sendto`, and the decision taken on them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netaccel::policy::ignore::IgnoreList;
use netaccel::policy::sockaddr::{decode_inet, is_unspec};
use netaccel::policy::verdict::check_destination;

fuzz_target!(|raw: &[u8]| {
    let _ = is_unspec(raw);
    if let Some(dst) = decode_inet(raw) {
        let ignore = IgnoreList::new(["10.244.0.0/16".parse().expect("net"), "fd00::/8".parse().expect("net")]);
        let _ = check_destination(&dst, &ignore);
    }
});
