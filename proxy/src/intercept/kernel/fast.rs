//! The raw prerouting chain's fast path for kernel-path flows: the first
//! rules of the base chain accept a packet to a kernel frontend (`kfast4/6`,
//! `daddr . l4proto . dport`) or a reply from a kernel endpoint that only
//! kernel frontends use (`kepfast4/6`, `saddr . l4proto . sport`, not a SYN)
//! with one set lookup, before the dispatch and the gate's pair of lookups
//! (`kvip` and not `kmoved`; `kepx` and not `kepmoved`). The raw chain's
//! rules were what the kernel path paid over kube-proxy's table
//! (bench/results/2026-12-06-s10-kernel.md: without them it measured the
//! same as kube-proxy's).
//!
//! Each set holds exactly what the gate would accept at once, so a packet
//! takes the same verdict either way:
//! - `kfast` = `kvip` − `lbsr` (a SYN there needs the source-range check) −
//!   the frontends still in `kmoved` (their proxied connections need the
//!   socket rule);
//! - `kepfast` = `kepx` − the endpoints still in `kepmoved`.
//!
//! The sets follow the element changes the interceptor sends: every
//! netlink batch passes through [`FastPath::follow`], which returns the
//! fast-set changes to send in the same atomic batch, and [`FastPath::commit`]
//! keeps them once the kernel took it. `kmoved`/`kepmoved` elements expire
//! in the kernel after an hour; their keys join the fast sets at the first
//! batch after that (until then they take the gate's slower rules, which
//! give the same verdict).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::intercept::netlink::{Batch, Element, Family, Verb};

/// A key of `kvip`/`lbsr`/`kmoved` (a frontend) or `kepx`/`kepmoved` (an
/// endpoint), as the kernel reads it (`address . proto . port`, each
/// field padded to 4 bytes: 12 or 24 bytes), held inline: at 100,000
/// endpoints the mirror is ~3 MB and a first fill allocates nothing per
/// key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    len: u8,
    bytes: [u8; 24],
}

impl Key {
    fn of(bytes: &[u8]) -> Option<Key> {
        let mut key = Key {
            len: u8::try_from(bytes.len()).ok()?,
            bytes: [0; 24],
        };
        key.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(key)
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn v6(&self) -> bool {
        self.len == 24
    }

    /// How nft prints it (for errors and logs).
    fn label(&self) -> String {
        let b = self.bytes();
        let (addr, rest): (std::net::IpAddr, &[u8]) = if self.v6() {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            (a.into(), &b[16..])
        } else {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[..4]);
            (a.into(), &b[4..])
        };
        let proto = match rest.first() {
            Some(6) => "tcp",
            Some(17) => "udp",
            _ => "?",
        };
        let port = rest
            .get(4..6)
            .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]));
        format!("{addr} . {proto} . {port}")
    }
}

/// The sets the fast path mirrors, by the name of a change's set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Vip,
    Ranges,
    Moved,
    Exclusive,
    EndpointMoved,
}

fn source(set: &str) -> Option<Source> {
    let name = set.strip_suffix('4').or_else(|| set.strip_suffix('6'))?;
    Some(match name {
        "kvip" => Source::Vip,
        "lbsr" => Source::Ranges,
        "kmoved" => Source::Moved,
        "kepx" => Source::Exclusive,
        "kepmoved" => Source::EndpointMoved,
        _ => return None,
    })
}

/// Whether a kernel element's set is one the fast sets derive from
/// (`kvip`, `kepx`; `lbsr` and the moved sets come as netlink changes).
pub fn derives_from(set: &str) -> bool {
    matches!(source(set), Some(Source::Vip | Source::Exclusive))
}

/// The fast-path sets' definitions, in `rules.rs`'s layout.
pub fn set_definitions() -> Vec<String> {
    super::rules::addr_port_sets(&["kfast", "kepfast"], None)
}

/// The base chain's first rules (see the module doc). A SYN from an
/// endpoint's port is a new connection of the Pod's, not a reply: it goes
/// on to the SYN rules.
pub fn rules() -> Vec<String> {
    let mut out = Vec::new();
    for (f, fam) in [(4, "ip"), (6, "ip6")] {
        out.push(format!(
            "    {fam} daddr . meta l4proto . th dport @kfast{f} accept"
        ));
        out.push(format!(
            "    {fam} saddr . meta l4proto . th sport @kepfast{f} tcp flags & (syn | ack) != syn accept"
        ));
    }
    out
}

/// What the kernel holds (as sent by us), for the keys the fast sets
/// derive from.
#[derive(Debug, Default)]
pub struct FastPath {
    vips: HashSet<Key>,
    ranges: HashSet<Key>,
    exclusive: HashSet<Key>,
    /// Keys in `kmoved`/`kepmoved`, until their element expires.
    moved: HashMap<Key, Instant>,
    endpoints_moved: HashMap<Key, Instant>,
}

/// Fast-set elements per batch when a step is sent: a first fill
/// changes ~100k (one per endpoint), and a netlink change in memory is
/// ~200 bytes.
const CHUNK: usize = 8192;

/// One batch's fast-set changes, and the mirror's state after it.
#[derive(Debug, Default)]
pub struct FastStep {
    gone: Vec<(&'static str, Key)>,
    new: Vec<(&'static str, Key)>,
    over: Overlay,
}

impl FastStep {
    /// What leaves the fast sets, as batches to send before the step's
    /// batch (each its own transaction: a fast set only shrinks).
    pub fn deletions<'a>(&'a self, table: &'a str) -> impl Iterator<Item = Batch> + 'a {
        batches(&self.gone, Verb::Delete, table)
    }

    /// What joins them, as batches to send after it.
    pub fn additions<'a>(&'a self, table: &'a str) -> impl Iterator<Item = Batch> + 'a {
        batches(&self.new, Verb::Add, table)
    }
}

fn batches<'a>(
    list: &'a [(&'static str, Key)],
    verb: Verb,
    table: &'a str,
) -> impl Iterator<Item = Batch> + 'a {
    list.chunks(CHUNK).map(move |chunk| {
        let mut out = Batch::default();
        for (set, key) in chunk {
            out.push(
                verb,
                Family::Inet,
                table,
                set,
                Element::key(key.bytes().to_vec(), key.label()),
            );
        }
        out
    })
}

/// The membership of the keys a batch touched, over the mirror's
/// (`None` in a moved map: expired).
#[derive(Debug, Default)]
struct Overlay {
    vips: HashMap<Key, bool>,
    ranges: HashMap<Key, bool>,
    exclusive: HashMap<Key, bool>,
    moved: HashMap<Key, Option<Instant>>,
    endpoints_moved: HashMap<Key, Option<Instant>>,
}

fn member(base: &HashSet<Key>, over: &HashMap<Key, bool>, key: &Key) -> bool {
    over.get(key).copied().unwrap_or_else(|| base.contains(key))
}

fn pending(base: &HashMap<Key, Instant>, over: &HashMap<Key, Option<Instant>>, key: &Key) -> bool {
    match over.get(key) {
        Some(state) => state.is_some(),
        None => base.contains_key(key),
    }
}

impl FastPath {
    /// Forgets everything: our table was just created anew (its sets are
    /// empty, `kmoved` and `kepmoved` too).
    pub fn reset(&mut self) {
        *self = FastPath::default();
    }

    fn fast_vip(&self, over: &Overlay, key: &Key) -> bool {
        member(&self.vips, &over.vips, key)
            && !member(&self.ranges, &over.ranges, key)
            && !pending(&self.moved, &over.moved, key)
    }

    fn fast_endpoint(&self, over: &Overlay, key: &Key) -> bool {
        member(&self.exclusive, &over.exclusive, key)
            && !pending(&self.endpoints_moved, &over.endpoints_moved, key)
    }

    /// The fast-set changes that go with `batch` (to be sent around it, see
    /// `Interceptor::apply_elements`), and the state to
    /// [`commit`](Self::commit) once the kernel took it. `now` expires the
    /// moved keys whose time is up.
    pub fn follow(&self, batch: &Batch, now: Instant) -> FastStep {
        let mut over = Overlay::default();
        for change in &batch.changes {
            let Some(src) = source(&change.set) else {
                continue;
            };
            // A key of another shape is never fast (nor expected).
            let Some(key) = Key::of(&change.element.key) else {
                continue;
            };
            let add = change.verb == Verb::Add;
            let until = now + Duration::from_millis(change.element.timeout_ms.unwrap_or(0));
            match src {
                Source::Vip => {
                    over.vips.insert(key, add);
                }
                Source::Ranges => {
                    over.ranges.insert(key, add);
                }
                Source::Exclusive => {
                    over.exclusive.insert(key, add);
                }
                // Timed elements are only ever added (they expire).
                Source::Moved if add => {
                    over.moved.insert(key, Some(until));
                }
                Source::EndpointMoved if add => {
                    over.endpoints_moved.insert(key, Some(until));
                }
                Source::Moved | Source::EndpointMoved => {}
            }
        }
        for (key, until) in &self.moved {
            if *until <= now && !over.moved.contains_key(key) {
                over.moved.insert(*key, None);
            }
        }
        for (key, until) in &self.endpoints_moved {
            if *until <= now && !over.endpoints_moved.contains_key(key) {
                over.endpoints_moved.insert(*key, None);
            }
        }
        // The touched keys are the overlay's (each once).
        let fronts = over
            .vips
            .keys()
            .chain(over.ranges.keys().filter(|k| !over.vips.contains_key(*k)))
            .chain(
                over.moved
                    .keys()
                    .filter(|k| !over.vips.contains_key(*k) && !over.ranges.contains_key(*k)),
            );
        let endpoints = over.exclusive.keys().chain(
            over.endpoints_moved
                .keys()
                .filter(|k| !over.exclusive.contains_key(*k)),
        );
        let empty = Overlay::default();
        let mut gone = Vec::new();
        let mut new = Vec::new();
        let mut sort =
            |set: &'static str, key: &Key, before: bool, after: bool| match (before, after) {
                (true, false) => gone.push((set, *key)),
                (false, true) => new.push((set, *key)),
                _ => {}
            };
        for key in fronts {
            let set = if key.v6() { "kfast6" } else { "kfast4" };
            sort(
                set,
                key,
                self.fast_vip(&empty, key),
                self.fast_vip(&over, key),
            );
        }
        for key in endpoints {
            let set = if key.v6() { "kepfast6" } else { "kepfast4" };
            sort(
                set,
                key,
                self.fast_endpoint(&empty, key),
                self.fast_endpoint(&over, key),
            );
        }
        // Grouped by set: one netlink message per set and verb.
        gone.sort_unstable_by_key(|(set, _)| *set);
        new.sort_unstable_by_key(|(set, _)| *set);
        FastStep { gone, new, over }
    }

    /// Keeps the state of a batch the kernel took.
    pub fn commit(&mut self, step: FastStep) {
        fn set(base: &mut HashSet<Key>, changes: HashMap<Key, bool>) {
            for (key, present) in changes {
                if present {
                    base.insert(key);
                } else {
                    base.remove(&key);
                }
            }
        }
        fn timed(base: &mut HashMap<Key, Instant>, changes: HashMap<Key, Option<Instant>>) {
            for (key, until) in changes {
                match until {
                    Some(until) => {
                        base.insert(key, until);
                    }
                    None => {
                        base.remove(&key);
                    }
                }
            }
        }
        let over = step.over;
        set(&mut self.vips, over.vips);
        set(&mut self.ranges, over.ranges);
        set(&mut self.exclusive, over.exclusive);
        timed(&mut self.moved, over.moved);
        timed(&mut self.endpoints_moved, over.endpoints_moved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Protocol;
    use crate::intercept::netlink::key;
    use std::net::IpAddr;

    const T: &str = "switchyard";

    fn front(ip: &str, port: u16) -> Element {
        let ip: IpAddr = ip.parse().expect("ip");
        Element::key(
            key::addr_proto_port(ip, Protocol::Tcp, port),
            format!("{ip} . tcp . {port}"),
        )
    }

    fn batch(changes: &[(Verb, &str, Element)]) -> Batch {
        let mut b = Batch::default();
        for (verb, set, el) in changes {
            b.push(*verb, Family::Inet, T, set, el.clone());
        }
        b
    }

    /// The step's changes as `verb set label` lines.
    fn lines(step: &FastStep) -> Vec<String> {
        step.deletions(T)
            .chain(step.additions(T))
            .flat_map(|b| b.changes)
            .collect::<Vec<_>>()
            .iter()
            .map(|c| {
                let verb = if c.verb == Verb::Add { "add" } else { "delete" };
                format!("{verb} {} {}", c.set, c.element.label)
            })
            .collect()
    }

    fn apply(fast: &mut FastPath, b: &Batch, now: Instant) -> Vec<String> {
        let step = fast.follow(b, now);
        let out = lines(&step);
        fast.commit(step);
        out
    }

    #[test]
    fn a_kernel_frontend_is_fast_unless_it_has_source_ranges() {
        let now = Instant::now();
        let mut fast = FastPath::default();
        let vip = front("10.96.0.10", 80);
        let got = apply(&mut fast, &batch(&[(Verb::Add, "kvip4", vip.clone())]), now);
        assert_eq!(got, ["add kfast4 10.96.0.10 . tcp . 80"]);
        // Source ranges: its SYNs need the raw chain's check.
        let got = apply(&mut fast, &batch(&[(Verb::Add, "lbsr4", vip.clone())]), now);
        assert_eq!(got, ["delete kfast4 10.96.0.10 . tcp . 80"]);
        let got = apply(
            &mut fast,
            &batch(&[(Verb::Delete, "lbsr4", vip.clone())]),
            now,
        );
        assert_eq!(got, ["add kfast4 10.96.0.10 . tcp . 80"]);
        // Leaving the kernel path: out of the fast set in the same batch.
        let got = apply(&mut fast, &batch(&[(Verb::Delete, "kvip4", vip)]), now);
        assert_eq!(got, ["delete kfast4 10.96.0.10 . tcp . 80"]);
    }

    #[test]
    fn a_frontend_from_the_proxy_path_joins_after_its_moved_element_expired() {
        let now = Instant::now();
        let mut fast = FastPath::default();
        let vip = front("fd00::10", 443);
        let moved = vip.clone().with_timeout_ms(3_600_000);
        let got = apply(
            &mut fast,
            &batch(&[
                (Verb::Add, "kvip6", vip.clone()),
                (Verb::Add, "kmoved6", moved),
            ]),
            now,
        );
        assert!(got.is_empty(), "{got:?}");
        // Any batch after the hour brings it in.
        let later = now + Duration::from_secs(3_601);
        let got = apply(&mut fast, &Batch::default(), now + Duration::from_secs(60));
        assert!(got.is_empty(), "{got:?}");
        let got = apply(&mut fast, &Batch::default(), later);
        assert_eq!(got, ["add kfast6 fd00::10 . tcp . 443"]);
        let got = apply(&mut fast, &Batch::default(), later);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn a_frontend_that_left_before_its_hour_is_not_brought_back() {
        let now = Instant::now();
        let mut fast = FastPath::default();
        let vip = front("10.96.0.10", 80);
        let moved = vip.clone().with_timeout_ms(1_000);
        apply(
            &mut fast,
            &batch(&[
                (Verb::Add, "kvip4", vip.clone()),
                (Verb::Add, "kmoved4", moved),
            ]),
            now,
        );
        apply(&mut fast, &batch(&[(Verb::Delete, "kvip4", vip)]), now);
        let got = apply(&mut fast, &Batch::default(), now + Duration::from_secs(2));
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn an_exclusive_endpoint_is_fast_unless_it_left_the_proxy_path_within_the_hour() {
        let now = Instant::now();
        let mut fast = FastPath::default();
        let ep = front("10.244.1.11", 8080);
        let got = apply(&mut fast, &batch(&[(Verb::Add, "kepx4", ep.clone())]), now);
        assert_eq!(got, ["add kepfast4 10.244.1.11 . tcp . 8080"]);
        // Shared with a proxy-path frontend again: kepx → kepsh.
        let got = apply(
            &mut fast,
            &batch(&[(Verb::Delete, "kepx4", ep.clone())]),
            now,
        );
        assert_eq!(got, ["delete kepfast4 10.244.1.11 . tcp . 8080"]);
        // Exclusive again, the proxy path just left it: the socket rule
        // keeps its proxied connections for the hour.
        let moved = ep.clone().with_timeout_ms(3_600_000);
        let got = apply(
            &mut fast,
            &batch(&[(Verb::Add, "kepx4", ep), (Verb::Add, "kepmoved4", moved)]),
            now,
        );
        assert!(got.is_empty(), "{got:?}");
        let got = apply(
            &mut fast,
            &Batch::default(),
            now + Duration::from_secs(3_600),
        );
        assert_eq!(got, ["add kepfast4 10.244.1.11 . tcp . 8080"]);
    }

    #[test]
    fn a_batch_the_kernel_refused_leaves_the_mirror_as_it_was() {
        let now = Instant::now();
        let mut fast = FastPath::default();
        let vip = front("10.96.0.10", 80);
        let refused = fast.follow(&batch(&[(Verb::Add, "kvip4", vip.clone())]), now);
        assert_eq!(lines(&refused).len(), 1);
        drop(refused);
        // Sent again: still an addition.
        let got = apply(&mut fast, &batch(&[(Verb::Add, "kvip4", vip)]), now);
        assert_eq!(got, ["add kfast4 10.96.0.10 . tcp . 80"]);
    }

    #[test]
    fn other_sets_and_deletions_before_additions() {
        let now = Instant::now();
        let mut fast = FastPath::default();
        let a = front("10.96.0.10", 80);
        let b = front("10.96.0.11", 80);
        apply(&mut fast, &batch(&[(Verb::Add, "kvip4", a.clone())]), now);
        let got = apply(
            &mut fast,
            &batch(&[
                (Verb::Add, "vip4", a.clone()),
                (Verb::Add, "kvip4", b),
                (Verb::Delete, "kvip4", a),
            ]),
            now,
        );
        assert_eq!(
            got,
            [
                "delete kfast4 10.96.0.10 . tcp . 80",
                "add kfast4 10.96.0.11 . tcp . 80"
            ]
        );
    }

    #[test]
    fn rules_accept_on_one_lookup_and_leave_syns_of_endpoints_to_the_chain() {
        let r = rules();
        assert_eq!(
            r[0],
            "    ip daddr . meta l4proto . th dport @kfast4 accept"
        );
        assert!(r[1].ends_with("@kepfast4 tcp flags & (syn | ack) != syn accept"));
        assert!(r[3].starts_with("    ip6 saddr"));
    }
}
