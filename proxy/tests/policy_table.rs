//! `sy_table` (ABI.md, "Slot table") driven with hand-written WAT modules:
//! a good table is taken, every bad answer is a fault, and a module without
//! the export keeps working on the proxy path.

mod common;

use std::sync::Arc;

use common::{endpoints, engine};
use switchyard::policy::table::{compute, slot_count};
use switchyard::policy::{Locality, ModuleError, SlotKey, TableFault, load_module};

/// The ABI.md example round robin; `$TABLE` is replaced by a `sy_table`
/// export (or nothing).
const MODULE: &str = r#"
(module
  (memory (export "memory") 1)
  $ABI_EXPORTS
  $COUNTER
  (func (export "sy_pick") (param $ctx i32) (result i32)
    $PICK)
  $TABLE)
"#;

/// ABI.md's `sy_table` example; `$VALUE` is what slot `$s` gets and
/// `$KEY` the result.
const TABLE: &str = r#"
  (func (export "sy_table") (param $slots_ptr i32) (param $slots i32) (result i32)
    (local $s i32)
    (if (i32.eqz (global.get $count)) (then (return (i32.const 0))))
    (block $done
      (loop $fill
        (br_if $done (i32.ge_u (local.get $s) (local.get $slots)))
        (i32.store
          (i32.add (local.get $slots_ptr) (i32.shl (local.get $s) (i32.const 2)))
          $VALUE)
        (local.set $s (i32.add (local.get $s) (i32.const 1)))
        (br $fill)))
    $KEY)"#;

const ROUND_ROBIN: &str = "(i32.rem_u (local.get $s) (global.get $count))";

fn module(table: &str) -> Vec<u8> {
    common::wat(
        &MODULE
            .replace("$PICK", common::ROUND_ROBIN_PICK)
            .replace("$TABLE", table),
    )
}

fn table_export(value: &str, key: &str) -> String {
    TABLE.replace("$VALUE", value).replace("$KEY", key)
}

fn table_of(
    bytes: &[u8],
    n: usize,
) -> Result<Option<Arc<switchyard::policy::SlotTable>>, TableFault> {
    let engine = engine();
    let module = load_module(&engine, "t", bytes).expect("module loads");
    compute(&engine, &module, "{}", &endpoints(n), &Locality::default())
}

#[test]
fn a_round_robin_table_is_taken() {
    let bytes = module(&table_export(ROUND_ROBIN, "(i32.const 2)"));
    let table = table_of(&bytes, 3).expect("no fault").expect("a table");
    assert_eq!(table.key, SlotKey::Sequence);
    assert_eq!(table.slots.len(), slot_count(3));
    assert_eq!(&table.slots[..4], &[0, 1, 2, 0]);
    assert_eq!(table.counts(3), [23, 22, 22]);
}

#[test]
fn every_key_is_understood() {
    for (abi, key) in [
        (1, SlotKey::Random),
        (2, SlotKey::Sequence),
        (3, SlotKey::FiveTuple),
        (4, SlotKey::ClientAddress),
    ] {
        let bytes = module(&table_export(ROUND_ROBIN, &format!("(i32.const {abi})")));
        let table = table_of(&bytes, 2).expect("no fault").expect("a table");
        assert_eq!(table.key, key);
    }
}

#[test]
fn no_export_no_table_and_empty_sets_are_not_tables() {
    let without = module("");
    assert_eq!(table_of(&without, 3), Ok(None));
    let with = module(&table_export(ROUND_ROBIN, "(i32.const 2)"));
    assert_eq!(table_of(&with, 0), Ok(None));
    let declines = module(&table_export(ROUND_ROBIN, "(i32.const 0)"));
    assert_eq!(table_of(&declines, 3), Ok(None));
}

#[test]
fn bad_answers_are_faults() {
    let out_of_range = module(&table_export("(global.get $count)", "(i32.const 1)"));
    assert_eq!(
        table_of(&out_of_range, 2),
        Err(TableFault::OutOfRange {
            slot: 0,
            index: 2,
            count: 2
        })
    );
    let unknown_key = module(&table_export(ROUND_ROBIN, "(i32.const 5)"));
    assert_eq!(table_of(&unknown_key, 2), Err(TableFault::UnknownKey(5)));
    // Fills nothing: the host's 0xFFFFFFFF shows through.
    let lazy = module(r#"(func (export "sy_table") (param i32 i32) (result i32) (i32.const 1))"#);
    assert_eq!(table_of(&lazy, 2), Err(TableFault::Unfilled { slot: 0 }));
    let traps = module(r#"(func (export "sy_table") (param i32 i32) (result i32) unreachable)"#);
    assert!(matches!(table_of(&traps, 2), Err(TableFault::Call(_))));
    let spins = module(
        r#"(func (export "sy_table") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 1))"#,
    );
    assert!(matches!(table_of(&spins, 2), Err(TableFault::Call(_))));
}

#[test]
fn a_wrongly_typed_export_is_refused_at_load() {
    let bytes = module(r#"(func (export "sy_table") (param i32) (result i32) (i32.const 1))"#);
    let err = load_module(&engine(), "t", &bytes).expect_err("refused");
    assert!(
        matches!(
            err,
            ModuleError::ExportType {
                name: "sy_table",
                ..
            }
        ),
        "{err:?}"
    );
}
