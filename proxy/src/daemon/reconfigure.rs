//! Reloading the config file at run time: validate, apply what can change
//! while running, and say plainly which changed settings need a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{Config, ConfigError};

/// Loads the config file and applies the command-line flags on top, the
/// same way as at start.
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub loader: Loader,
    stamp: Option<(Option<SystemTime>, u64)>,
}

/// What a reload of the config file found.
#[derive(Debug, Default)]
pub struct ConfigChange {
    /// The new policy default, when it changed (applied at once).
    pub policy_default: Option<String>,
    /// `policy.allowedSha256` and `policy.maxEndpoints`, when either
    /// changed (applied at once: revoking a module must not wait for a
    /// restart).
    pub policy_limits: Option<(Vec<String>, usize)>,
    /// Changed settings that take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl ConfigSource {
    pub fn new(path: Option<PathBuf>, loader: Loader) -> Self {
        let mut this = Self {
            path,
            loader,
            stamp: None,
        };
        this.stamp = this.read_stamp();
        this
    }

    fn read_stamp(&self) -> Option<(Option<SystemTime>, u64)> {
        let meta = std::fs::metadata(self.path.as_ref()?).ok()?;
        Some((meta.modified().ok(), meta.len()))
    }

    /// True when the file changed since it was last read.
    pub fn changed(&mut self) -> bool {
        let now = self.read_stamp();
        if now != self.stamp {
            self.stamp = now;
            return self.path.is_some();
        }
        false
    }

    /// Loads and compares with the running config. An invalid file changes
    /// nothing.
    pub fn reload(&self, running: &mut Config) -> Result<ConfigChange, ConfigError> {
        let new = (self.loader)()?;
        let mut change = ConfigChange::default();
        if new.policy.default != running.policy.default {
            change.policy_default = Some(new.policy.default.clone());
        }
        if new.policy.allowed_sha256 != running.policy.allowed_sha256
            || new.policy.max_endpoints != running.policy.max_endpoints
        {
            change.policy_limits =
                Some((new.policy.allowed_sha256.clone(), new.policy.max_endpoints));
        }
        let sections: [(&'static str, bool); 8] = [
            ("nodeName", new.node_name != running.node_name),
            ("source", new.source != running.source),
            ("dataplane", new.dataplane != running.dataplane),
            ("intercept", new.intercept != running.intercept),
            ("admin", new.admin != running.admin),
            ("log", new.log != running.log),
            (
                "policy (other than default, allowedSha256, maxEndpoints)",
                {
                    let mut a = new.policy.clone();
                    a.default.clone_from(&running.policy.default);
                    a.allowed_sha256.clone_from(&running.policy.allowed_sha256);
                    a.max_endpoints = running.policy.max_endpoints;
                    a != running.policy
                },
            ),
            ("(none)", false),
        ];
        change.needs_restart = sections
            .iter()
            .filter(|(_, differs)| *differs)
            .map(|(name, _)| *name)
            .collect();
        if let Some(default) = &change.policy_default {
            running.policy.default.clone_from(default);
        }
        if let Some((allowed, max_endpoints)) = &change.policy_limits {
            running.policy.allowed_sha256.clone_from(allowed);
            running.policy.max_endpoints = *max_endpoints;
        }
        Ok(change)
    }
}
