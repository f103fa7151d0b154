;; A policy that answers its first pick (so it passes the trial pick that
;; validates a binding) and traps on every later one: connections must still
;; succeed through the fallback, and the faults must be counted.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (global $picks (mut i32) (i32.const 0))
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  (func (export "sy_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 15)) (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.const 60000)) (then (global.set $heap (i32.const 1024)) (return (i32.const 1024))))
    (local.get $p))
  (func (export "sy_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "sy_endpoints") (param i32 i32))
  (func (export "sy_pick") (param i32) (result i32)
    (global.set $picks (i32.add (global.get $picks) (i32.const 1)))
    (if (i32.gt_u (global.get $picks) (i32.const 1)) (then unreachable))
    (i32.const 0)))
