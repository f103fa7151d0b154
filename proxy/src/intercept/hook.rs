//! The raw prerouting hook exists only while the proxy path has work in
//! it. Every packet that crosses the node meets a base chain, even an
//! empty one, and ours runs before conntrack, where a kernel-path flow is
//! told apart only by set lookups. Without a Service port on the proxy
//! path (and no `loadBalancerSourceRanges`), the chain has nothing to do
//! for any packet: the kernel datapath's NAT chains reject frontends
//! without endpoints themselves (`kernel/rules.rs`, `kernel_untranslated`).
//! A node whose Services all run on the kernel path then has kube-proxy's
//! hooks and no other (bench/results/2026-12-07-s11-kernel.md).
//!
//! The chain comes before the first proxy element that needs it (its own
//! `nft` transaction, ahead of the element batch) and goes at the first
//! sync after it has had nothing to do for [`LINGER`]: the proxied
//! connections of a Service that left the proxy path keep reaching our
//! sockets through its socket rule that long, the horizon a frontend that
//! moved to the kernel keeps them for (`kmoved`).

use std::time::{Duration, Instant};

use super::Elements;
use super::netlink::{Batch, Verb};

/// How long the hook outlives the last element that needed it.
pub const LINGER: Duration = Duration::from_secs(super::KERNEL_MOVED_SECONDS);

/// The base chain's name (`ruleset.rs` renders it).
pub const CHAIN: &str = "prerouting";

/// Whether the hook is in the kernel, and when it last had work.
#[derive(Debug, Default)]
pub struct Hook {
    installed: bool,
    needed_at: Option<Instant>,
}

/// Whether installed elements give the raw chain work: a proxy frontend
/// (diverted, and its proxied connections' packets), or a source-range
/// restriction (checked there for both paths).
pub fn needs(elements: &Elements) -> bool {
    !elements.vips.is_empty()
        || !elements.node_ports.is_empty()
        || !elements.source_ranges.restricted.is_empty()
}

/// Whether a batch adds an element that needs the hook (see [`needs`]).
pub fn adds_work(batch: &Batch) -> bool {
    batch
        .changes
        .iter()
        .any(|c| c.verb == Verb::Add && needing_set(&c.set))
}

fn needing_set(set: &str) -> bool {
    matches!(set, "vip4" | "vip6" | "nodeport" | "lbsr4" | "lbsr6")
}

impl Hook {
    pub fn installed(&self) -> bool {
        self.installed
    }

    /// The kernel holds the hook (`true`) or not: a batch that rendered
    /// the table, or a hook change, was applied.
    pub fn set_installed(&mut self, installed: bool) {
        self.installed = installed;
    }

    /// Whether the hook belongs in a table whose elements `need` it (or
    /// not), at `now`.
    pub fn wants(&self, need: bool, now: Instant) -> bool {
        need || self
            .needed_at
            .is_some_and(|at| now.saturating_duration_since(at) < LINGER)
    }

    /// After a sync: whether the installed elements `need` the hook. Returns
    /// whether the hook should go now.
    pub fn synced(&mut self, need: bool, now: Instant) -> bool {
        if need {
            self.needed_at = Some(now);
        }
        self.installed && !self.wants(need, now)
    }

    /// Our table is gone: no hook, and no proxied connection left to keep.
    pub fn reset(&mut self) {
        *self = Hook::default();
    }
}

/// The `nft -f` batch that adds the hook to our existing table.
pub fn add_batch(table: &str, chain: &[String]) -> String {
    format!("table inet {table} {{\n{}\n}}\n", chain.join("\n"))
}

/// The `nft -f` batch that removes it (its rules go with it).
pub fn delete_batch(table: &str) -> String {
    format!("delete chain inet {table} {CHAIN}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Protocol;
    use crate::intercept::netlink::{Element, Family};

    fn batch(verb: Verb, set: &str) -> Batch {
        let mut b = Batch::default();
        b.push(
            verb,
            Family::Inet,
            "switchyard",
            set,
            Element::key(vec![0; 12], String::from("x")),
        );
        b
    }

    #[test]
    fn only_proxy_frontends_and_source_ranges_need_the_hook() {
        let mut e = Elements::default();
        assert!(!needs(&e));
        // A frontend without endpoints is refused by the NAT chains.
        e.vips_no_endpoints
            .insert(("10.96.0.1".parse().expect("ip"), Protocol::Tcp, 80));
        e.node_ports_no_endpoints.insert((Protocol::Tcp, 30080));
        assert!(!needs(&e));
        let mut v = e.clone();
        v.vips
            .insert(("10.96.0.2".parse().expect("ip"), Protocol::Tcp, 80));
        assert!(needs(&v));
        let mut n = e.clone();
        n.node_ports.insert((Protocol::Udp, 30053));
        assert!(needs(&n));
        let mut r = e;
        r.source_ranges
            .restricted
            .insert(("192.0.2.1".parse().expect("ip"), Protocol::Tcp, 80));
        assert!(needs(&r));

        for set in ["vip4", "vip6", "nodeport", "lbsr4", "lbsr6"] {
            assert!(adds_work(&batch(Verb::Add, set)), "{set}");
            assert!(!adds_work(&batch(Verb::Delete, set)), "{set}");
        }
        for set in [
            "noep4",
            "nodeport_noep",
            "kvip4",
            "kfast4",
            "kepx4",
            "lbsr_allow4",
        ] {
            assert!(!adds_work(&batch(Verb::Add, set)), "{set}");
        }
    }

    #[test]
    fn the_hook_outlives_its_last_need_by_the_linger() {
        let t0 = Instant::now();
        let mut h = Hook::default();
        // Never needed: never wanted.
        assert!(!h.wants(false, t0));
        assert!(!h.synced(false, t0));
        h.set_installed(true);
        assert!(!h.synced(true, t0));
        // Its work gone: it stays for the proxied connections...
        let later = t0 + LINGER - Duration::from_secs(1);
        assert!(h.wants(false, later));
        assert!(!h.synced(false, later));
        // ...and goes at the first sync after the linger.
        let after = t0 + LINGER;
        assert!(!h.wants(false, after));
        assert!(h.synced(false, after));
        h.set_installed(false);
        assert!(!h.synced(false, after));
        // Needed again within the linger: the clock starts over.
        h.set_installed(true);
        assert!(!h.synced(true, after));
        assert!(h.wants(false, after + LINGER - Duration::from_secs(1)));
        h.reset();
        assert!(!h.installed() && !h.wants(false, after));
    }
}
