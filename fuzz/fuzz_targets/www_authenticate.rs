//! `WWW-Authenticate` parsing: never panics, whatever upstream sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        for c in mirrorgate::upstream::auth::parse_challenges(s) {
            let _ = c.param("realm");
        }
    }
});
