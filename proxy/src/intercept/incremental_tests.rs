//! What the interceptor derives from a table patched change by change
//! must equal what it derives from the same table whole: the set elements
//! (route delta applied to the installed elements), the steering
//! endpoints (`EndpointCounts`), the source ranges (in the elements) and
//! the kernel plan (`Planner`), over
//! random sequences of new, edited and deleted Services.

use std::path::Path;
use std::sync::Arc;

use super::elements::Elements;
use super::endpoint_counts::EndpointCounts;
use super::kernel::replies::{ProxyEndpoints, gate_elements, gate_step};
use super::kernel::{self, Choices, Planner, Shared, plan};
use crate::catalog::datapath::DatapathMode;
use crate::catalog::{Assembly, NodeContext, Replaced, ServiceTable, TranslatedService};
use crate::policy::Bindings;
use crate::policy::kernel_tables::TableCache;
use crate::sources::manifest::parse;

fn random_service(rng: &mut fastrand::Rng, name: &str) -> TranslatedService {
    let endpoints: Vec<String> = (0..rng.usize(0..4))
        .map(|_| {
            format!(
                "- addresses: [\"10.0.0.{}\"]\n  conditions: {{ready: true}}\n",
                rng.u8(1..7)
            )
        })
        .collect();
    let annotations = if rng.u8(0..4) == 0 {
        "  annotations: {switchyard.dev/datapath: proxy}\n"
    } else {
        ""
    };
    let ranges = [
        "",
        "  loadBalancerSourceRanges: [10.0.0.0/8]\n",
        "  loadBalancerSourceRanges: [192.168.0.0/16, 10.1.0.0/16]\n",
    ][rng.usize(0..3)];
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n{annotations}\
         spec:\n  type: LoadBalancer\n{ranges}  clusterIP: 10.96.0.{}\n  ports:\n  - {{port: {}, nodePort: {}}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: 192.0.2.{}}}]}}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
         metadata:\n  name: {name}-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         {}ports: [{{port: 8080}}]\n",
        rng.u8(1..9),
        [80, 443][rng.usize(0..2)],
        30000 + u32::from(rng.u8(0..6)),
        rng.u8(1..5),
        if endpoints.is_empty() {
            "endpoints: []\n".to_owned()
        } else {
            format!("endpoints:\n{}", endpoints.concat())
        },
    );
    let (m, problems) = parse(&text, Path::new("t.yaml"));
    assert!(problems.is_empty(), "{problems:?}");
    let slices: Vec<_> = m.slices.iter().collect();
    crate::catalog::translate_service(&m.services[0], &slices, &NodeContext::default())
        .service
        .expect("proxied")
}

#[test]
fn patched_tables_give_the_elements_endpoints_and_plan_of_whole_ones() {
    let bindings = Bindings::new();
    let (mut patched, mut on_kernel, mut restricted, mut stepped) = (0, 0, 0, 0);
    // Steps where the reply gate and the proxy path's endpoints were both
    // non-empty.
    let mut gated = 0;
    for seed in 0..25 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut assembly = Assembly::new(1);
        let mut current = std::collections::BTreeMap::new();
        assembly.whole(std::iter::empty());
        let mut previous = Arc::new(assembly.table().clone());
        let mut installed = Elements::from_table(&previous);
        let mut counts = EndpointCounts::default();
        counts.update(None, &previous);
        let mut planner = Planner::default();
        let mut cache = TableCache::new(None, Default::default());
        planner.update(&previous, &bindings, true, &mut cache, DatapathMode::Auto);
        // The interceptor's state with the kernel datapath on.
        let mut k_installed = Elements::from_table(&previous);
        let mut k_elements = kernel::elements(planner.plan());
        let mut k_plan = planner.plan().clone();
        let mut shared = Shared::of(&k_plan);
        let mut proxy_eps = ProxyEndpoints::of(&previous, &k_installed);
        let mut gate = gate_elements(&shared, &proxy_eps);
        for step in 0..120 {
            let names: std::collections::BTreeSet<String> = (0..rng.usize(1..3))
                .map(|_| format!("s{}", rng.u8(0..10)))
                .collect();
            let mut before = Vec::new();
            for name in &names {
                let old = if rng.u8(0..5) == 0 {
                    current.remove(name)
                } else {
                    current.insert(name.clone(), random_service(&mut rng, name))
                };
                before.push((name.clone(), old));
            }
            let changes: Vec<Replaced<'_>> = before
                .iter()
                .map(|(name, old)| (old.as_ref(), current.get(name)))
                .collect();
            assembly.update(&changes, || current.values().collect());
            let table = Arc::new(assembly.table().clone());
            let at = format!("seed {seed} step {step}");
            patched += usize::from(table.changed_since(&previous).is_some());

            let delta = installed.delta(&previous, &table, &[], None);
            installed.apply(&delta);
            assert_eq!(installed, Elements::from_table(&table), "{at}");
            restricted += installed.source_ranges.restricted.len();

            counts.update(Some(&previous), &table);
            let mut whole = EndpointCounts::default();
            whole.update(None, &table);
            assert_eq!(counts.keys(), whole.keys(), "{at}");

            planner.update(&table, &bindings, false, &mut cache, DatapathMode::Auto);
            let mut fresh = TableCache::new(None, Default::default());
            let (want_plan, want_choices) = plan(
                &table,
                &bindings,
                &mut fresh,
                DatapathMode::Auto,
                &Choices::new(),
            );
            assert_eq!(planner.plan(), &want_plan, "{at}");
            assert_eq!(planner.choices(), &want_choices, "{at}");
            let kernel = want_choices
                .values()
                .filter(|c| c.datapath == crate::catalog::datapath::Datapath::Kernel)
                .count();
            assert_eq!(
                planner.counts(),
                (kernel, want_choices.len() - kernel),
                "{at}"
            );
            on_kernel += kernel;

            // The kernel step, when the planner names what moved and the
            // table was patched; otherwise the sets are computed whole.
            let plan_now = planner.plan();
            match (planner.keys(), table.changed_since(&previous)) {
                (Some(keys), Some(change)) => {
                    let d = k_installed.delta(&previous, &table, &[], Some(plan_now));
                    // The reply gate, as the interceptor steps it.
                    let (s, _) = gate_step(
                        &mut proxy_eps,
                        &mut shared,
                        (&previous, &table, change),
                        (&k_installed, &d),
                        (&k_plan, plan_now, keys),
                    );
                    k_installed.apply(&d);
                    // The gate's elements apart: `k_elements` are the
                    // plan's.
                    let mut s = s;
                    let gated = |e: &kernel::Element| {
                        e.set.starts_with("kepx") || e.set.starts_with("kepsh")
                    };
                    let have: std::collections::BTreeSet<_> = s
                        .have
                        .elements
                        .iter()
                        .filter(|e| gated(e))
                        .cloned()
                        .collect();
                    let want: std::collections::BTreeSet<_> = s
                        .want
                        .elements
                        .iter()
                        .filter(|e| gated(e))
                        .cloned()
                        .collect();
                    s.have.elements.retain(|e| !gated(e));
                    s.want.elements.retain(|e| !gated(e));
                    k_elements.apply(&s);
                    for e in have.difference(&want) {
                        assert!(gate.remove(e), "{at}: {e:?} deleted but not there");
                    }
                    for e in want.difference(&have) {
                        assert!(gate.insert(e.clone()), "{at}: {e:?} added twice");
                    }
                    stepped += 1;
                }
                _ => {
                    k_installed = Elements::from_table(&table).without_kernel(plan_now);
                    k_elements = kernel::elements(plan_now);
                    shared = Shared::of(plan_now);
                    proxy_eps = ProxyEndpoints::of(&table, &k_installed);
                    gate = gate_elements(&shared, &proxy_eps);
                }
            }
            k_plan = plan_now.clone();
            assert_eq!(
                k_installed,
                Elements::from_table(&table).without_kernel(plan_now),
                "{at}"
            );
            assert_eq!(k_elements, kernel::elements(plan_now), "{at}");
            assert_eq!(shared, Shared::of(plan_now), "{at}");
            let whole_eps = ProxyEndpoints::of(&table, &k_installed);
            assert_eq!(proxy_eps, whole_eps, "{at}");
            assert_eq!(gate, gate_elements(&shared, &whole_eps), "{at}");
            gated += usize::from(!gate.is_empty() && !proxy_eps.is_empty());
            previous = table;
        }
    }
    assert!(
        patched > 100 && on_kernel > 0 && restricted > 0 && stepped > 100 && gated > 0,
        "{patched} {on_kernel} {restricted} {stepped} {gated}"
    );
}

/// A table built whole names no predecessor: readers compare everything.
#[test]
fn a_table_built_whole_has_no_change_record() {
    let table = ServiceTable::default();
    assert!(table.changed_since(&ServiceTable::default()).is_none());
}
