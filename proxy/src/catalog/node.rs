//! What this node's own Node object tells the proxy: its addresses, its
//! zone (topology hints), and whether cloud load balancers should still
//! send it traffic (kube-proxy's `nodeEligible`).

use k8s_openapi::api::core::v1::Node;

use super::build::{NodeContext, node_addresses};

/// The taint the cluster autoscaler puts on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// The well-known label with the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The context for `name`, from its Node object when one is known. Without
/// one the node has no addresses and no zone, and is eligible (kube-proxy's
/// default before it has seen its Node).
pub fn node_context(name: Option<String>, node: Option<&Node>) -> NodeContext {
    let Some(node) = node else {
        return NodeContext {
            node_name: name,
            ..NodeContext::default()
        };
    };
    NodeContext {
        node_name: name,
        addresses: node_addresses(node),
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned(),
        ineligible: ineligible(node),
    }
}

/// Why load balancers should drain this node, as kube-proxy 1.28+ decides:
/// it is being deleted, or the autoscaler tainted it for removal.
fn ineligible(node: &Node) -> Option<String> {
    if node.metadata.deletion_timestamp.is_some() {
        return Some("the Node is being deleted (metadata.deletionTimestamp)".into());
    }
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    tainted.then(|| format!("the Node has the {TO_BE_DELETED_TAINT} taint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_yaml::from_str(yaml).expect("test Node")
    }

    #[test]
    fn a_plain_node_is_eligible_with_its_zone_and_addresses() {
        let n = node(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n    topology.kubernetes.io/zone: z1\n\
             status:\n  addresses:\n  - {type: InternalIP, address: 192.0.2.1}\n  - {type: Hostname, address: n1}\n",
        );
        let ctx = node_context(Some("n1".into()), Some(&n));
        assert_eq!(ctx.zone.as_deref(), Some("z1"));
        assert_eq!(ctx.addresses, vec![std::net::IpAddr::from([192, 0, 2, 1])]);
        assert_eq!(ctx.ineligible, None);
    }

    #[test]
    fn deletion_and_the_autoscaler_taint_make_it_ineligible() {
        let deleting = node(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n",
        );
        assert!(node_context(None, Some(&deleting)).ineligible.is_some());
        let tainted = node(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\nspec:\n  taints:\n  - {key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", effect: NoSchedule}\n",
        );
        assert!(node_context(None, Some(&tainted)).ineligible.is_some());
        let other = node(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\nspec:\n  taints:\n  - {key: node.kubernetes.io/unschedulable, effect: NoSchedule}\n",
        );
        assert_eq!(node_context(None, Some(&other)).ineligible, None);
    }
}
