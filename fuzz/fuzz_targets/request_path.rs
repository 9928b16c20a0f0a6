//! Request paths and routing: never panic, and every accepted name or
//! digest re-validates (so nothing unvalidated reaches the store).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate::registry::path::{self, Endpoint};
use mirrorgate::registry::range;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = path::parse(s) {
        match p.endpoint {
            Endpoint::Manifest(n, r) => {
                assert!(n.as_str().parse::<mirrorgate::oci::RepoName>().is_ok());
                assert!(r.to_string().parse::<mirrorgate::oci::Reference>().is_ok());
                assert!(!n.as_str().split('/').any(|c| c == ".." || c == "."));
            }
            Endpoint::Blob(n, d) | Endpoint::Referrers(n, d) => {
                assert!(n.as_str().parse::<mirrorgate::oci::RepoName>().is_ok());
                assert!(d.to_string().parse::<mirrorgate::oci::Digest>().is_ok());
            }
            _ => {}
        }
    }
    if let range::RangeDecision::Partial { start, end } = range::decide(Some(s), 1 << 20) {
        assert!(start < end && end <= 1 << 20);
    }
});
