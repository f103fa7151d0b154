//! The service table kept assembled across changes. A change to Services
//! that share no frontend, NodePort or health-check port with any other
//! Service removes their old entries and inserts their new ones: work in
//! proportion to the change, on persistent maps, so that the table
//! published next shares every untouched entry with the last. When a
//! changed Service shares a claim, which Service keeps it depends on all
//! of them (the older wins), and the table is assembled whole by
//! [`super::assemble`], the one place that rule is written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::build::{TranslatedService, assemble};
use super::problem::Problem;
use super::table::{Frontend, Protocol, ServiceTable, TableChange};

/// One Service's change: its translation before (`None`: new, or not
/// proxied) and after (`None`: gone, or no longer proxied).
pub type Replaced<'a> = (Option<&'a TranslatedService>, Option<&'a TranslatedService>);

/// A key of the table that only one Service may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Claimed {
    Vip(Frontend),
    NodePort(Protocol, u16),
    HealthCheck(u16),
}

fn claims(t: &TranslatedService) -> HashSet<Claimed> {
    let vips = t.vips.iter().map(|c| Claimed::Vip(c.key));
    let node_ports = t
        .node_ports
        .iter()
        .map(|c| Claimed::NodePort(c.key.0, c.key.1));
    let health = t.health_check.map(Claimed::HealthCheck);
    vips.chain(node_ports).chain(health).collect()
}

#[derive(Debug)]
pub struct Assembly {
    table: ServiceTable,
    /// How many translated Services claim each key, whether the table
    /// holds them or a conflict left them out.
    claimants: HashMap<Claimed, u32>,
    next_revision: u64,
}

impl Assembly {
    /// `first_revision` names the first table: distinct assemblies should
    /// start far apart (the daemon starts at a random one).
    pub fn new(first_revision: u64) -> Self {
        Self {
            table: ServiceTable::default(),
            claimants: HashMap::new(),
            next_revision: first_revision.max(1),
        }
    }

    /// The table as last assembled or patched.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    fn revision(&mut self) -> u64 {
        let r = self.next_revision;
        self.next_revision = self.next_revision.wrapping_add(1).max(1);
        r
    }

    fn count(&mut self, t: &TranslatedService, up: bool) {
        for c in claims(t) {
            let n = self.claimants.entry(c).or_insert(0);
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
            if *n == 0 {
                self.claimants.remove(&c);
            }
        }
    }

    /// Assembles every translation from scratch; returns the conflicts.
    pub fn whole<'a>(
        &mut self,
        all: impl IntoIterator<Item = &'a TranslatedService>,
    ) -> Vec<Problem> {
        let all: Vec<&TranslatedService> = all.into_iter().collect();
        self.claimants.clear();
        for t in &all {
            self.count(t, true);
        }
        let out = assemble(all);
        self.table = out.table;
        self.table.revision = self.revision();
        self.table.changes = None;
        out.problems
    }

    /// Applies the changes of one sync. Patches the table when no changed
    /// Service shares a claim with another Service; otherwise assembles
    /// `all` (every translation, after the changes) whole and returns its
    /// conflicts.
    pub fn update<'a>(
        &mut self,
        changes: &[Replaced<'_>],
        all: impl FnOnce() -> Vec<&'a TranslatedService>,
    ) -> Vec<Problem> {
        for &(old, new) in changes {
            if let Some(old) = old {
                self.count(old, false);
            }
            if let Some(new) = new {
                self.count(new, true);
            }
        }
        let alone = changes.iter().all(|&(old, new)| self.alone(old, new));
        if !alone {
            return self.whole(all());
        }
        let mut change = TableChange {
            from: self.table.revision,
            ..TableChange::default()
        };
        for &(old, new) in changes {
            if let Some(old) = old {
                self.remove(old, &mut change);
            }
            if let Some(new) = new {
                self.insert(new, &mut change);
            }
        }
        change.frontends.sort();
        change.frontends.dedup();
        change.node_ports.sort();
        change.node_ports.dedup();
        change.source_ranges.sort();
        change.source_ranges.dedup();
        self.table.revision = self.revision();
        self.table.changes = Some(Arc::new(change));
        Vec::new()
    }

    /// After the counts moved: every key `old` or `new` claims is `new`'s
    /// alone, so no other Service's place in the table depends on it.
    fn alone(&self, old: Option<&TranslatedService>, new: Option<&TranslatedService>) -> bool {
        let want = new.map(claims).unwrap_or_default();
        let have = old.map(claims).unwrap_or_default();
        want.union(&have).all(|c| {
            let n = self.claimants.get(c).copied().unwrap_or(0);
            n == u32::from(want.contains(c))
        })
    }

    fn remove(&mut self, t: &TranslatedService, change: &mut TableChange) {
        let table = &mut self.table;
        for claim in &t.vips {
            table.frontends.remove(&claim.key);
            change.frontends.push(claim.key);
        }
        for claim in &t.node_ports {
            table.node_ports.remove(&claim.key);
            change.node_ports.push(claim.key);
        }
        if let Some(port) = t.health_check
            && table.health_checks.get(&port) == Some(&t.key)
        {
            table.health_checks.remove(&port);
        }
        for (frontend, _) in &t.source_ranges {
            table.source_ranges.remove(frontend);
            change.source_ranges.push(*frontend);
        }
        table.services.remove(&t.key);
        change.services.push(t.key.clone());
    }

    /// The same entries `assemble` gives a Service without conflicts.
    fn insert(&mut self, t: &TranslatedService, change: &mut TableChange) {
        let table = &mut self.table;
        for claim in &t.vips {
            table.frontends.insert(claim.key, claim.route.clone());
            change.frontends.push(claim.key);
        }
        for claim in &t.node_ports {
            table.node_ports.insert(claim.key, claim.route.clone());
            change.node_ports.push(claim.key);
        }
        if let Some(port) = t.health_check {
            table.health_checks.insert(port, t.key.clone());
        }
        for (frontend, ranges) in &t.source_ranges {
            table.source_ranges.insert(*frontend, Arc::clone(ranges));
            change.source_ranges.push(*frontend);
        }
        table.services.insert(t.key.clone(), t.ports.clone());
        if change.services.last() != Some(&t.key) {
            change.services.push(t.key.clone());
        }
    }
}
