//! A kernel-path sync's gate and verdict steps, driven from real
//! Services through the planner as `Interceptor::sync` drives them: the
//! reply gate (`replies.rs`) for an endpoint shared by a kernel and a
//! proxied Service and for a move, and the kept verdict elements
//! (`verdicts.rs`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::elements::{Element, KernelPlan};
use super::replies::*;
use super::step::Shared;
use super::verdicts::{Verdicts, is_verdict};
use crate::catalog::datapath::DatapathMode;
use crate::catalog::{Assembly, NodeContext, Replaced, TranslatedService};
use crate::catalog::{Protocol, ServiceTable};
use crate::intercept::elements::Elements;
use crate::intercept::kernel::Planner;
use crate::intercept::netlink::Verb;
use crate::policy::Bindings;
use crate::policy::kernel_tables::TableCache;

/// A ClusterIP Service `name` on 10.96.0.`ip`:80 → 10.0.0.`ep`:8080
/// (`ep` 0: no endpoints).
fn service(name: &str, ip: u8, datapath: &str, ep: u8) -> TranslatedService {
    let endpoints = if ep == 0 {
        "endpoints: []\n".to_owned()
    } else {
        format!("endpoints:\n- addresses: [\"10.0.0.{ep}\"]\n  conditions: {{ready: true}}\n")
    };
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n  \
         annotations: {{switchyard.dev/datapath: {datapath}}}\n\
         spec:\n  clusterIP: 10.96.0.{ip}\n  ports:\n  - {{port: 80}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
         metadata:\n  name: {name}-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         {endpoints}ports: [{{port: 8080}}]\n"
    );
    let (m, problems) = crate::sources::manifest::parse(&text, Path::new("t.yaml"));
    assert!(problems.is_empty(), "{problems:?}");
    let slices: Vec<_> = m.slices.iter().collect();
    crate::catalog::translate_service(&m.services[0], &slices, &NodeContext::default())
        .service
        .expect("proxied")
}

/// The interceptor's state, stepped as `sync` steps it.
struct Node {
    assembly: Assembly,
    table: Arc<ServiceTable>,
    planner: Planner,
    cache: TableCache,
    proxy: Elements,
    plan: KernelPlan,
    shared: Shared,
    endpoints: ProxyEndpoints,
    /// The Services by name.
    services: std::collections::BTreeMap<String, TranslatedService>,
    verdicts: Verdicts,
    /// The verdict-map changes of the last step.
    verdict_changes: Vec<String>,
}

/// A step's reply gate: `kepx` deleted and added, `kepmoved` added.
type Gate = (Vec<String>, Vec<String>, Vec<String>);

impl Node {
    fn new(list: &[(&str, TranslatedService)]) -> Self {
        let services: std::collections::BTreeMap<_, _> = list
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect();
        let mut assembly = Assembly::new(1);
        assembly.whole(services.values());
        let table = Arc::new(assembly.table().clone());
        let mut planner = Planner::default();
        let mut cache = TableCache::new(None, Default::default());
        let bindings = Bindings::new();
        planner.update(&table, &bindings, true, &mut cache, DatapathMode::Auto);
        let plan = planner.plan().clone();
        let proxy = Elements::from_table(&table).without_kernel(&plan);
        let shared = Shared::of(&plan);
        let endpoints = ProxyEndpoints::of(&table, &proxy);
        let verdicts = Verdicts::of(&plan);
        Node {
            assembly,
            table,
            planner,
            cache,
            proxy,
            plan,
            shared,
            endpoints,
            services,
            verdicts,
            verdict_changes: Vec::new(),
        }
    }

    /// The endpoints whose replies skip the socket rule (`kepx`).
    fn gate(&self) -> BTreeSet<Element> {
        self.gate_set("kepx")
    }

    /// The gate's elements in the sets named `prefix`4/6.
    fn gate_set(&self, prefix: &str) -> BTreeSet<Element> {
        gate_elements(&self.shared, &self.endpoints)
            .into_iter()
            .filter(|e| e.set.strip_suffix(['4', '6']) == Some(prefix))
            .collect()
    }

    /// Replaces Service `name` by `new`.
    fn change(&mut self, name: &str, new: &TranslatedService) -> Gate {
        let old = self.services.insert(name.to_owned(), new.clone());
        let changes: Vec<Replaced<'_>> = vec![(old.as_ref(), Some(new))];
        let services = &self.services;
        self.assembly
            .update(&changes, || services.values().collect());
        let table = Arc::new(self.assembly.table().clone());
        let bindings = Bindings::new();
        self.planner.update(
            &table,
            &bindings,
            false,
            &mut self.cache,
            DatapathMode::Auto,
        );
        let keys = self.planner.keys().expect("stepped").clone();
        let plan = self.planner.plan().clone();
        let change = table.changed_since(&self.table).expect("patched");
        let d = self.proxy.delta(&self.table, &table, &[], Some(&plan));
        let (mut k, gone) = gate_step(
            &mut self.endpoints,
            &mut self.shared,
            (&self.table, &table, change),
            (&self.proxy, &d),
            (&self.plan, &plan, &keys),
        );
        self.verdicts = self.verdicts.step(
            &plan,
            &keys,
            &table,
            &mut k.have.elements,
            &mut k.want.elements,
        );
        let moved: Vec<String> = moved_batch("sy", gone, 3600)
            .changes
            .iter()
            .map(ToString::to_string)
            .collect();
        let batch = k.want.diff_batch(&k.have, "sy").expect("encodes");
        let named = |verb: Verb| -> Vec<String> {
            batch
                .changes
                .iter()
                .filter(|c| c.verb == verb && c.set.starts_with("kepx"))
                .map(ToString::to_string)
                .collect()
        };
        let gate = (named(Verb::Delete), named(Verb::Add), moved);
        self.verdict_changes = batch
            .changes
            .iter()
            .filter(|c| matches!(&*c.set, "kfront4" | "kfront6" | "knp4" | "knp6"))
            .map(ToString::to_string)
            .collect();
        self.proxy.apply(&d);
        self.table = table;
        self.plan = plan;
        assert_eq!(self.endpoints, ProxyEndpoints::of(&self.table, &self.proxy));
        // Every kernel frontend's verdict is installed.
        let wanted = super::elements::elements(&self.plan);
        let kept = Verdicts::default().whole(
            &KernelPlan::default(),
            &self.table,
            &mut BTreeSet::new(),
            &mut BTreeSet::new(),
        );
        assert!(kept.is_empty());
        for e in wanted.elements.iter().filter(|e| is_verdict(e)) {
            let mut have = BTreeSet::new();
            let mut want = BTreeSet::new();
            let _ = self
                .verdicts
                .whole(&self.plan, &self.table, &mut have, &mut want);
            assert!(have.contains(e), "{e:?} not installed");
        }
        assert_eq!(
            gate_elements(&self.shared, &self.endpoints),
            gate_elements(&Shared::of(&self.plan), &self.endpoints)
        );
        gate
    }
}

const EP: &str = "10.0.0.1 . tcp . 8080";

#[test]
fn an_endpoint_a_proxied_service_shares_stays_behind_the_socket_rule() {
    let kernel = service("a", 1, "kernel", 1);
    let proxied = service("b", 2, "proxy", 1);
    let mut node = Node::new(&[("a", kernel), ("b", proxied.clone())]);
    assert_eq!(node.plan.vips.len(), 1, "a is on the kernel path");
    assert!(
        node.shared
            .serves("10.0.0.1:8080".parse().expect("ep"), Protocol::Tcp)
    );
    assert!(
        node.gate().is_empty(),
        "b's upstream replies need our socket"
    );
    assert_eq!(
        node.gate_set("kepsh")
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        [EP],
        "a's endpoint, which b shares, meets the socket rule"
    );

    // b's endpoint moves away: a's replies skip the socket lookup,
    // but only after b's proxied connections had an hour.
    let elsewhere = service("b", 2, "proxy", 2);
    let (deleted, added, moved) = node.change("b", &elsewhere);
    assert!(deleted.is_empty());
    assert_eq!(added, [format!("add element inet sy kepx4 {{ {EP} }}")]);
    assert_eq!(
        moved,
        [format!(
            "add element inet sy kepmoved4 {{ {EP} timeout 3600s }}"
        )]
    );

    // And back: out of the gate again; the endpoint b leaves now
    // (no kernel frontend's) is timed all the same.
    let (deleted, added, moved) = node.change("b", &proxied);
    assert_eq!(
        deleted,
        [format!("delete element inet sy kepx4 {{ {EP} }}")]
    );
    assert!(added.is_empty());
    assert_eq!(
        moved,
        ["add element inet sy kepmoved4 { 10.0.0.2 . tcp . 8080 timeout 3600s }"]
    );
}

#[test]
fn a_frontend_moving_proxy_to_kernel_puts_its_endpoints_in_the_gate_after_an_hour() {
    let proxied = service("b", 2, "proxy", 1);
    let mut node = Node::new(&[("b", proxied.clone())]);
    assert!(node.plan.is_empty() && node.gate().is_empty());
    // An annotation edit moves b to the kernel path.
    let moved_to_kernel = service("b", 2, "kernel", 1);
    let (deleted, added, moved) = node.change("b", &moved_to_kernel);
    assert!(deleted.is_empty());
    assert_eq!(added, [format!("add element inet sy kepx4 {{ {EP} }}")]);
    // The proxied connections from before the move keep the socket
    // rule (`kepmoved`), as the frontend's requests do (`kmoved`).
    assert_eq!(
        moved,
        [format!(
            "add element inet sy kepmoved4 {{ {EP} timeout 3600s }}"
        )]
    );
    // Kernel → proxy: the endpoint leaves the gate at once.
    let (deleted, added, moved) = node.change("b", &proxied);
    assert_eq!(
        deleted,
        [format!("delete element inet sy kepx4 {{ {EP} }}")]
    );
    assert!(added.is_empty() && moved.is_empty());
}

#[test]
fn a_frontend_back_on_its_chain_adds_no_verdict_element() {
    let one = service("a", 1, "kernel", 1);
    let mut node = Node::new(&[("a", one.clone())]);
    assert_eq!(node.verdicts.len(), 1);
    // 1 → 0 endpoints: off the kernel path, its verdict element stays
    // (the reject sets and the `kvip` gate decide).
    node.change("a", &service("a", 1, "kernel", 0));
    assert!(node.plan.is_empty());
    assert_eq!(node.verdict_changes, Vec::<String>::new());
    assert_eq!(node.verdicts.len(), 1);
    // 0 → 1: the same chain, no verdict element added (no validation of
    // the table at commit).
    node.change("a", &one);
    assert_eq!(node.plan.vips.len(), 1);
    assert_eq!(node.verdict_changes, Vec::<String>::new());
    // Moved to the proxy and back: the same.
    node.change("a", &service("a", 1, "proxy", 1));
    assert!(node.plan.is_empty());
    assert!(node.verdict_changes.is_empty());
    node.change("a", &one);
    assert!(node.verdict_changes.is_empty());
}

#[test]
fn a_verdict_goes_with_its_frontend_or_its_chain() {
    let one = service("a", 1, "kernel", 1);
    let mut node = Node::new(&[("a", one.clone())]);
    // Another ClusterIP: the old frontend leaves the table, its element
    // goes; the new one gets its own.
    node.change("a", &service("a", 2, "kernel", 1));
    assert_eq!(
        node.verdict_changes,
        [
            "delete element inet sy kfront4 { 10.96.0.1 . tcp . 80 }",
            "add element inet sy kfront4 { 10.96.0.2 . tcp . 80 : goto kd4_seq_1 }",
        ]
    );
    // With no endpoints and another ClusterIP: nothing of the old kept.
    node.change("a", &service("a", 3, "kernel", 0));
    assert_eq!(
        node.verdict_changes,
        ["delete element inet sy kfront4 { 10.96.0.2 . tcp . 80 }"]
    );
    assert!(node.verdicts.is_empty());
}
