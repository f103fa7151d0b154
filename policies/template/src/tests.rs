//! Native tests through the SDK's harness: `cargo test -p <package>`.

use std::time::Duration;

use switchyard_policy::testing::{Call, EndpointSpec, Harness};

use crate::Template;

#[test]
fn cycles_over_all_endpoints() {
    let mut h = Harness::<Template>::with_endpoints("{}", &EndpointSpec::many(3));
    let picks: Vec<_> = (0..6).map(|_| h.pick(&Call::new())).collect();
    assert_eq!(
        picks,
        [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
    );
}

#[test]
fn skips_tried_and_recently_failed_endpoints() {
    let mut h = Harness::<Template>::with_endpoints(r#"{"avoidMs": 5000}"#, &EndpointSpec::many(3));
    assert_eq!(h.pick(&Call::new().tried(&[0])), Some(1));
    h.failed(2, Duration::from_millis(1));
    assert_eq!(h.pick(&Call::new()), Some(0), "2 failed just now");
    assert_eq!(
        h.pick(&Call::new().tried(&[0, 1])),
        Some(2),
        "unless nothing else is left"
    );
    h.advance(Duration::from_secs(6));
    let d = h.distribution(300, |_| Call::new());
    assert_eq!(d.counts, [100, 100, 100], "forgiven after avoidMs");
    assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2])), None);
}

#[test]
fn rejects_unknown_settings() {
    let err = Harness::<Template>::new(r#"{"avoid": 1}"#)
        .err()
        .unwrap_or_default();
    assert!(err.contains("unknown field `avoid`"), "{err}");
}
