//! `request_attr` (ABI v1, L7 mode) from the guest's side: a hand-written
//! module reads a request header through the host, in a per-request pick,
//! and the request head comes back to the caller intact.

mod common;

use std::sync::Arc;

use common::{bound, engine, http_route, request};
use switchyard::admin::Metrics;
use switchyard::l7::attrs::parse_head;
use switchyard::policy::{DecidedBy, Decider, Locality};

/// Picks the endpoint whose index is the digit in header `x-pick`, after
/// checking the context's mode, a length query and a wild name pointer.
const HEADER_PICK: &str = r#"
(module
  (import "switchyard" "request_attr" (func $attr (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-pick")
  $ABI_EXPORTS
  (func (export "sy_endpoints") (param i32 i32))
  (func (export "sy_pick") (param $ctx i32) (result i32)
    (if (i32.ne (i32.load8_u offset=1 (local.get $ctx)) (i32.const 1))
      (then (return (i32.const -1))))
    (if (i32.ne (call $attr (i32.const 3) (i32.const 16) (i32.const 6) (i32.const 0) (i32.const 0)) (i32.const 1))
      (then (return (i32.const -1))))
    (if (i32.ne (call $attr (i32.const 3) (i32.const 70000) (i32.const 6) (i32.const 32) (i32.const 8)) (i32.const -1))
      (then (unreachable)))
    (if (i32.ne (call $attr (i32.const 3) (i32.const 16) (i32.const 6) (i32.const 70000) (i32.const 8)) (i32.const -1))
      (then (unreachable)))
    (drop (call $attr (i32.const 3) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 8)))
    (i32.sub (i32.load8_u (i32.const 32)) (i32.const 48))))
"#;

#[test]
fn a_policy_routes_by_a_header_it_reads_through_the_host() {
    let engine = engine();
    let binding = bound(&engine, 1, &common::wat(HEADER_PICK));
    let metrics = Arc::new(Metrics::new("test"));
    let mut decider = Decider::new(Some(engine), Locality::default(), metrics);
    let route = http_route(4);
    let req = request(&route, &binding);
    for want in [2usize, 3, 0, 2] {
        let head = format!("GET /x HTTP/1.1\r\nHost: web\r\nX-Pick: {want}\r\n\r\n");
        let mut parts = parse_head(head.as_bytes());
        let d = decider.pick_request(&req, &mut parts).expect("a decision");
        assert_eq!((d.index, d.by), (want, DecidedBy::Current));
        let parts = parts.expect("the request head is handed back");
        assert_eq!(parts.headers["x-pick"], want.to_string().as_str());
        assert_eq!(parts.uri.path(), "/x");
    }
    // L4 mode: no request, the module declines, the round robin answers.
    let d = decider.pick(&req).expect("a decision");
    assert_eq!(d.by, DecidedBy::Builtin);
    // A request without the header: declined too, nothing trapped.
    let mut parts = parse_head(b"GET / HTTP/1.1\r\n\r\n");
    let d = decider.pick_request(&req, &mut parts).expect("a decision");
    assert_eq!(d.by, DecidedBy::Builtin);
    assert!(parts.is_some());
}
