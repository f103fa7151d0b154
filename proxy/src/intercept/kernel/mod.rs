//! The kernel datapath in nftables: Service ports whose policy gave a slot
//! table are executed by DNAT in the NAT hooks (kube-proxy's cost), not
//! diverted to the proxy. `rules.rs`: the fixed chains and maps;
//! `elements.rs`: their contents, a pure function of the tables.

pub mod conntrack;
pub mod elements;
pub mod fast;
pub mod gate;
pub mod plan;
pub mod replies;
pub mod rules;
pub mod step;
#[cfg(test)]
mod sync_tests;
pub mod verdicts;
pub mod wire;

pub use elements::{
    Element, KernelElements, KernelPlan, KernelPort, drain_commands, drain_node_port_commands,
    elements,
};
pub use plan::{Choices, Planner, plan};
pub use step::{KernelKeys, Shared, Step, step};
pub use wire::{
    EncodeError, drain_batch, drain_node_port_batch, fill_batches, moved_batch,
    moved_node_port_batch,
};
