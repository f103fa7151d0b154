//! The L7 request-attribute path: raw HTTP/1.x head bytes →
//! `l7::attrs::parse_head` → `lookup` of every attribute kind (and of
//! fuzzer-chosen header names, kinds and output buffer sizes) → `copy_out`,
//! as the host answers a policy's `request_attr`. The policy-side of that
//! call (guest pointers and capacities) is driven by the `policy_abi`
//! target's `PickRequest` step.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::l7::attrs;

/// Header names a policy might ask for, odd ones included.
const NAMES: &[&[u8]] = &[
    b"",
    b"host",
    b"X-Canary",
    b"content-length",
    b"bad name",
    b"x-\xff",
    &[b'a'; 70],
];

fuzz_target!(|head: &[u8]| {
    let Some(parts) = attrs::parse_head(head) else {
        return;
    };
    let method = attrs::lookup(&parts, attrs::METHOD, b"").expect("every request has a method");
    assert_eq!(method, parts.method.as_str().as_bytes());
    assert!(attrs::lookup(&parts, attrs::PATH, b"").is_some());
    assert!(attrs::lookup(&parts, attrs::SCHEME, b"").is_some());
    // Every header the head carries is found under its own name, with its
    // first value.
    for name in parts.headers.keys() {
        let found = attrs::lookup(&parts, attrs::HEADER, name.as_str().as_bytes());
        assert_eq!(found, parts.headers.get(name).map(|v| v.as_bytes()));
    }
    for kind in -1..=6 {
        for name in NAMES {
            let Some(value) = attrs::lookup(&parts, kind, name) else {
                continue;
            };
            for cap in [0usize, 3, 64] {
                let mut out = vec![0u8; cap];
                let full = attrs::copy_out(value, &mut out);
                assert_eq!(full, value.len());
                let n = full.min(cap);
                assert_eq!(&out[..n], &value[..n]);
            }
        }
    }
});
