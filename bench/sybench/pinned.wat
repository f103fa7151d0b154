;; A table policy that sends every new flow to one endpoint: PICK is
;; replaced by the index expression (swaps.py builds a "first" and a "last"
;; variant), so two modules' tables differ on every probe.
(module
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  ;; bump allocator: each table is computed in a fresh instance
  (func (export "sy_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "sy_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "sy_endpoints") (param $table i32) (param $count i32)
    (global.set $count (local.get $count)))
  (func $pick (result i32) PICK)
  (func (export "sy_pick") (param $ctx i32) (result i32)
    (if (i32.eqz (global.get $count)) (then (return (i32.const -1))))
    (call $pick))
  (func (export "sy_table") (param $slots_ptr i32) (param $slots i32) (result i32)
    (local $s i32)
    (if (i32.eqz (global.get $count)) (then (return (i32.const 0))))
    (block $done
      (loop $fill
        (br_if $done (i32.ge_u (local.get $s) (local.get $slots)))
        (i32.store
          (i32.add (local.get $slots_ptr) (i32.shl (local.get $s) (i32.const 2)))
          (call $pick))
        (local.set $s (i32.add (local.get $s) (i32.const 1)))
        (br $fill)))
    (i32.const 2)))
