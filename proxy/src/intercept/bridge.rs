//! br_netfilter and TPROXY do not mix. With `bridge-nf-call-iptables` on,
//! a Pod's packet crossing a Linux bridge meets our prerouting chain at the
//! bridge layer; TPROXY assigns it to our listener there, then the IP layer
//! orphans the socket on entry (ip_rcv) and skips prerouting for bridged
//! packets, so the SYN reaches TCP with no socket and is reset. A
//! user-space proxy needs no bridge netfilter (kube-proxy needed it for
//! hairpin DNAT), so we turn it off for this network namespace while we run
//! and put the old values back at exit.

use std::path::Path;

const KNOBS: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// The values we changed, to restore.
#[derive(Debug, Default)]
pub struct Saved(Vec<(&'static str, String)>);

/// Turns the knobs off; absent knobs (no br_netfilter) are fine.
pub fn disable() -> Saved {
    let mut saved = Saved::default();
    for knob in KNOBS {
        let Ok(old) = std::fs::read_to_string(knob) else {
            continue;
        };
        let old = old.trim().to_owned();
        if old == "0" {
            continue;
        }
        match std::fs::write(Path::new(knob), "0\n") {
            Ok(()) => {
                tracing::info!(sysctl = knob, was = %old, "turned bridge netfilter off: TPROXY cannot see bridged Pod traffic through it");
                saved.0.push((knob, old));
            }
            Err(e) => {
                tracing::warn!(sysctl = knob, error = %e, "cannot turn bridge netfilter off; Pods behind a Linux bridge will not reach Services")
            }
        }
    }
    saved
}

impl Saved {
    pub fn restore(&mut self) {
        for (knob, old) in self.0.drain(..) {
            if let Err(e) = std::fs::write(knob, format!("{old}\n")) {
                tracing::warn!(sysctl = knob, error = %e, "cannot restore");
            }
        }
    }
}
