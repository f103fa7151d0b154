//! The policy routing that makes TPROXY work: packets carrying the divert
//! mark are looked up in our own table, whose only route delivers every
//! destination locally. Only our rule (matched by mark, table and priority)
//! and our table are ever touched.

use super::command::{self, CommandError};
use crate::config::InterceptConfig;

const FAMILIES: [(&str, &str); 2] = [("-4", "0.0.0.0/0"), ("-6", "::/0")];

/// Installs the fwmark rule and the local route, replacing stale copies.
pub fn install(cfg: &InterceptConfig) -> Result<(), CommandError> {
    remove(cfg);
    let mark = format!("0x{:x}/0x{:x}", cfg.divert_mark, cfg.divert_mark);
    let table = cfg.route_table.to_string();
    let pref = cfg.rule_priority.to_string();
    for (fam, any) in FAMILIES {
        command::run(
            "ip",
            &[
                fam, "rule", "add", "fwmark", &mark, "lookup", &table, "pref", &pref,
            ],
        )?;
        command::run(
            "ip",
            &[
                fam, "route", "replace", "local", any, "dev", "lo", "table", &table,
            ],
        )?;
    }
    Ok(())
}

/// Removes our rule(s) and flushes our table; absent ones are fine.
pub fn remove(cfg: &InterceptConfig) {
    let mark = format!("0x{:x}/0x{:x}", cfg.divert_mark, cfg.divert_mark);
    let table = cfg.route_table.to_string();
    let pref = cfg.rule_priority.to_string();
    for (fam, _) in FAMILIES {
        // A crashed run may have left duplicates; each delete removes one.
        for _ in 0..16 {
            let args = [
                fam, "rule", "del", "fwmark", &mark, "lookup", &table, "pref", &pref,
            ];
            if command::run("ip", &args).is_err() {
                break;
            }
        }
        let _ = command::run("ip", &[fam, "route", "flush", "table", &table]);
    }
}
