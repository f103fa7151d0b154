//! Round trips through the kernel: what the writer sends, read back with
//! `nft -j list table`, in a network namespace of the test's own.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::catalog::Protocol;

pub(super) const TABLE: &str = "synltest";

/// A namespace deleted on drop, also when an assertion failed.
pub(super) struct Netns(String);

impl Netns {
    pub(super) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "synl{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name], "");
        Netns(name)
    }

    pub(super) fn nft(&self, script: &str) {
        run("ip", &["netns", "exec", &self.0, "nft", "-f", "-"], script);
    }

    /// The elements of every set of our table, as nft prints them in JSON.
    pub(super) fn elements(&self) -> std::collections::BTreeMap<String, BTreeSet<String>> {
        let out = run(
            "ip",
            &[
                "netns", "exec", &self.0, "nft", "-j", "list", "table", "inet", TABLE,
            ],
            "",
        );
        let doc: serde_json::Value = serde_json::from_str(&out).expect("nft -j output is JSON");
        let mut sets = std::collections::BTreeMap::new();
        for item in doc["nftables"].as_array().expect("nftables array") {
            let set = if item.get("set").is_some() {
                &item["set"]
            } else if item.get("map").is_some() {
                &item["map"]
            } else {
                continue;
            };
            let name = set["name"].as_str().expect("set name").to_owned();
            let elems = set["elem"]
                .as_array()
                .map(|a| a.iter().map(|e| e.to_string()).collect())
                .unwrap_or_default();
            sets.insert(name, elems);
        }
        sets
    }

    /// Runs `f` on a thread that lives in the namespace (a network
    /// namespace is per thread, so the writer's socket opens there).
    pub(super) fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("netns file");
                // SAFETY: setns on a namespace descriptor affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SKELETON: &str = "table inet synltest {
  set vip4 { type ipv4_addr . inet_proto . inet_service; }
  set vip6 { type ipv6_addr . inet_proto . inet_service; }
  set nodeport { type inet_proto . inet_service; }
  set nodeaddr4 { type ipv4_addr; flags interval; }
  set ranges { type ipv4_addr . inet_service; flags interval; }
  map slots { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
}
";

fn a(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn vip(verb: Verb, ip: &str, port: u16) -> Change {
    let set = if a(ip).is_ipv4() { "vip4" } else { "vip6" };
    Change {
        verb,
        family: Family::Inet,
        table: TABLE.into(),
        set: set.into(),
        element: Element::key(
            key::addr_proto_port(a(ip), Protocol::Tcp, port),
            format!("{ip} . tcp . {port}"),
        ),
    }
}

fn on(set: &str, verb: Verb, element: Element) -> Change {
    Change {
        verb,
        family: Family::Inet,
        table: TABLE.into(),
        set: set.into(),
        element,
    }
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn elements_sets_intervals_and_maps_round_trip_through_the_kernel() {
    let ns = Netns::new();
    ns.nft(SKELETON);
    let mut batch = Batch::default();
    batch.changes.push(vip(Verb::Add, "10.96.0.10", 80));
    batch.changes.push(vip(Verb::Add, "fd00::10", 443));
    batch.changes.push(on(
        "nodeport",
        Verb::Add,
        Element::key(key::proto_port(Protocol::Udp, 30053), "udp . 30053"),
    ));
    // 192.168.50.0/24 in a plain interval set: start, and end-of-interval.
    batch.changes.push(on(
        "nodeaddr4",
        Verb::Add,
        Element::key(key::ip(a("192.168.50.0")), "192.168.50.0/24"),
    ));
    let mut end = Element::key(key::ip(a("192.168.51.0")), "192.168.50.0/24 (end)");
    end.interval_end = true;
    batch.changes.push(on("nodeaddr4", Verb::Add, end));
    // A concatenated interval: key and key_end.
    batch.changes.push(on(
        "ranges",
        Verb::Add,
        Element::key(
            key::concat(&[&key::ip(a("10.1.0.0")), &80u16.to_be_bytes()]),
            "10.1.0.0-10.1.0.255 . 80",
        )
        .with_key_end(key::concat(&[
            &key::ip(a("10.1.0.255")),
            &80u16.to_be_bytes(),
        ])),
    ));
    // A map element: key and data.
    batch.changes.push(on(
        "slots",
        Verb::Add,
        Element::key(
            key::concat(&[&key::ip(a("10.96.0.10")), &80u16.to_be_bytes()]),
            "10.96.0.10 . 80",
        )
        .with_data(key::concat(&[
            &key::ip(a("10.244.1.5")),
            &8080u16.to_be_bytes(),
        ])),
    ));
    let applied = ns.within(|| Writer::default().apply(&batch));
    assert_eq!(applied.expect("batch applies"), 1);
    let sets = ns.elements();
    assert_eq!(
        sets["vip4"],
        set_of(&[r#"{"concat":["10.96.0.10","tcp",80]}"#])
    );
    assert_eq!(
        sets["vip6"],
        set_of(&[r#"{"concat":["fd00::10","tcp",443]}"#])
    );
    assert_eq!(sets["nodeport"], set_of(&[r#"{"concat":["udp",30053]}"#]));
    assert_eq!(
        sets["nodeaddr4"],
        set_of(&[r#"{"prefix":{"addr":"192.168.50.0","len":24}}"#])
    );
    assert_eq!(
        sets["ranges"],
        set_of(&[r#"{"concat":[{"prefix":{"addr":"10.1.0.0","len":24}},80]}"#])
    );
    assert_eq!(
        sets["slots"],
        set_of(&[r#"[{"concat":["10.96.0.10",80]},{"concat":["10.244.1.5",8080]}]"#])
    );

    // Deletions, the interval's two halves together.
    let mut gone = Batch::default();
    gone.changes.push(vip(Verb::Delete, "10.96.0.10", 80));
    gone.changes.push(on(
        "nodeaddr4",
        Verb::Delete,
        Element::key(key::ip(a("192.168.50.0")), "192.168.50.0/24"),
    ));
    let mut end = Element::key(key::ip(a("192.168.51.0")), "192.168.50.0/24 (end)");
    end.interval_end = true;
    gone.changes.push(on("nodeaddr4", Verb::Delete, end));
    ns.within(|| Writer::default().apply(&gone))
        .expect("deletions apply");
    let sets = ns.elements();
    assert!(sets["vip4"].is_empty(), "{:?}", sets["vip4"]);
    assert!(sets["nodeaddr4"].is_empty(), "{:?}", sets["nodeaddr4"]);
    assert_eq!(sets["vip6"].len(), 1);
}

#[test]
fn a_table_is_found_only_once_it_exists() {
    let ns = Netns::new();
    let (before, after) = ns.within(|| {
        let mut w = Writer::default();
        let before = w.table_exists(Family::Inet, TABLE).expect("ask");
        ns.nft(SKELETON);
        let after = w.table_exists(Family::Inet, TABLE).expect("ask");
        (before, after)
    });
    assert!(!before && after);
}

#[test]
fn a_refused_element_is_named_and_nothing_of_its_batch_applies() {
    let ns = Netns::new();
    ns.nft(SKELETON);
    let mut batch = Batch::default();
    batch.changes.push(vip(Verb::Add, "10.96.0.11", 80));
    // Not there: the kernel says ENOENT for this one.
    batch.changes.push(vip(Verb::Delete, "10.96.0.99", 53));
    let err = ns
        .within(|| {
            let mut w = Writer::default();
            let first = w.apply(&batch);
            // The same socket keeps working after a refusal.
            let mut ok = Batch::default();
            ok.changes.push(vip(Verb::Add, "10.96.0.12", 80));
            w.apply(&ok).expect("next batch applies");
            first
        })
        .expect_err("deleting a missing element fails");
    let text = err.to_string();
    assert!(
        text.contains("delete element inet synltest vip4 { 10.96.0.99 . tcp . 53 }"),
        "{text}"
    );
    assert!(!err.state_unknown(), "{err:?}");
    assert_eq!(
        ns.elements()["vip4"],
        set_of(&[r#"{"concat":["10.96.0.12","tcp",80]}"#])
    );
}

#[test]
fn a_refused_element_among_many_of_one_set_is_named_and_nothing_applies() {
    let ns = Netns::new();
    ns.nft(SKELETON);
    let ips: Vec<String> = (1..=50).map(|i| format!("10.96.1.{i}")).collect();
    let mut fill = Batch::default();
    for ip in &ips {
        fill.changes.push(vip(Verb::Add, ip, 80));
    }
    // The deletions share one message; one of them is not there.
    let mut empty = Batch::default();
    for ip in &ips[..25] {
        empty.changes.push(vip(Verb::Delete, ip, 80));
    }
    empty.changes.push(vip(Verb::Delete, "10.96.1.99", 80));
    for ip in &ips[25..] {
        empty.changes.push(vip(Verb::Delete, ip, 80));
    }
    let (filled, emptied) = ns.within(|| {
        let mut w = Writer::default();
        (w.apply(&fill), w.apply(&empty))
    });
    assert_eq!(filled.expect("the fill applies"), 1);
    let err = emptied.expect_err("deleting a missing element fails");
    let text = err.to_string();
    assert!(
        text.starts_with("`delete element inet synltest vip4 { 10.96.1.99 . tcp . 80 }`"),
        "{text}"
    );
    assert!(!err.state_unknown(), "{err:?}");
    assert_eq!(ns.elements()["vip4"].len(), 50);
}

#[test]
fn a_batch_larger_than_one_send_is_split_and_all_of_it_applies() {
    let ns = Netns::new();
    ns.nft(SKELETON);
    let mut batch = Batch::default();
    for i in 0..3000u32 {
        let ip = IpAddr::from((0x0a60_0000 + i).to_be_bytes()).to_string();
        batch.changes.push(vip(Verb::Add, &ip, 80));
    }
    let parts = ns
        .within(|| {
            let mut w = Writer {
                max_send: Some(64 * 1024),
                ..Writer::default()
            };
            w.apply(&batch)
        })
        .expect("split batch applies");
    assert!(parts > 1, "{parts} transaction(s)");
    assert_eq!(ns.elements()["vip4"].len(), 3000);
}

#[test]
fn replies_lost_to_a_full_receive_buffer_make_the_outcome_unknown() {
    let ns = Netns::new();
    ns.nft(SKELETON);
    // Thousands of refused elements: one error reply each, far more than
    // a tiny receive buffer holds, so the kernel drops some (ENOBUFS).
    let mut batch = Batch::default();
    for i in 0..4000u32 {
        let ip = IpAddr::from((0x0a61_0000 + i).to_be_bytes()).to_string();
        batch.changes.push(vip(Verb::Delete, &ip, 80));
    }
    let (first, then) = ns.within(|| {
        let mut w = Writer {
            rcvbuf: Some(4096),
            ..Writer::default()
        };
        let first = w.apply(&batch);
        // A fresh socket afterwards: the writer keeps working.
        w.rcvbuf = None;
        let mut ok = Batch::default();
        ok.changes.push(vip(Verb::Add, "10.96.0.13", 80));
        (first, w.apply(&ok))
    });
    let err = first.expect_err("a batch of refused elements fails");
    assert!(err.state_unknown(), "{err:?}");
    then.expect("the next batch applies");
    assert_eq!(
        ns.elements()["vip4"],
        set_of(&[r#"{"concat":["10.96.0.13","tcp",80]}"#])
    );
}
