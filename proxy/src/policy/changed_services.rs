//! Which Services changed between two service tables, by their port
//! `Arc`s: the incremental translation keeps an untouched Service's
//! `Arc`s, so a pointer compare per port says whether it moved, without
//! looking inside.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::catalog::{ServiceKey, ServicePort, ServiceTable, Services};

/// The Services that changed from `before` to `after`: the change record
/// when `after` was patched from `before`, else [`changed`].
pub fn between(before: &ServiceTable, after: &ServiceTable) -> Vec<ServiceKey> {
    match after.changed_since(before) {
        Some(c) => {
            let mut keys = c.services.clone();
            keys.sort();
            keys.dedup();
            keys
        }
        None => changed(&before.services, &after.services),
    }
}

/// The Services added, removed, or whose ports are not the same `Arc`s in
/// `after` as in `before`, in key order. One merge walk over both tables.
pub fn changed(before: &Services, after: &Services) -> Vec<ServiceKey> {
    let mut out = Vec::new();
    let mut b = before.iter().peekable();
    let mut a = after.iter().peekable();
    loop {
        let order = match (b.peek(), a.peek()) {
            // The same port `Arc`s belong to the same Service, so the keys
            // are equal: skipping their compare spares four string reads
            // (cache misses, at 10k Services) for every untouched Service.
            (Some((_, pb)), Some((_, pa))) if !pb.is_empty() && same_ports(pb, pa) => {
                b.next();
                a.next();
                continue;
            }
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((kb, _)), Some((ka, _))) => kb.cmp(ka),
        };
        match order {
            Ordering::Less => {
                if let Some((key, _)) = b.next() {
                    out.push(key.clone());
                }
            }
            Ordering::Greater => {
                if let Some((key, _)) = a.next() {
                    out.push(key.clone());
                }
            }
            Ordering::Equal => {
                if let (Some((key, pb)), Some((_, pa))) = (b.next(), a.next())
                    && !same_ports(pb, pa)
                {
                    out.push(key.clone());
                }
            }
        }
    }
    out
}

fn same_ports(before: &[Arc<ServicePort>], after: &[Arc<ServicePort>]) -> bool {
    before.len() == after.len() && before.iter().zip(after).all(|(b, a)| Arc::ptr_eq(b, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::{self, key};

    fn port(name: &str) -> Arc<ServicePort> {
        Arc::new(fixtures::port(name))
    }

    #[test]
    fn added_removed_and_retranslated_services_and_nothing_else() {
        let kept = vec![port("kept")];
        let before: Services = [
            (key("gone"), vec![port("gone")]),
            (key("kept"), kept.clone()),
            (key("moved"), vec![port("moved")]),
        ]
        .into_iter()
        .collect();
        let after: Services = [
            (key("kept"), kept),
            // Equal contents in a new Arc: a new translation, looked at.
            (key("moved"), vec![port("moved")]),
            (key("new"), vec![port("new")]),
        ]
        .into_iter()
        .collect();
        let names: Vec<String> = changed(&before, &after)
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["gone", "moved", "new"]);
        assert!(changed(&after, &after).is_empty());
    }
}
