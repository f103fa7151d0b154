//! Template policy (copy, rename the package, edit `pick`): round robin, skipping endpoints
//! tried for this connection and, while others are left, those that failed < `avoidMs` ago.

use switchyard_policy::{Context, Endpoints, Policy, config, export_policy};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    avoid_ms: Option<u32>,
}

pub struct Template {
    avoid_ms: u32,
    next: usize,
}

impl Policy for Template {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        let avoid_ms = config.avoid_ms.unwrap_or(10_000);
        Ok(Template { avoid_ms, next: 0 })
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        let n = endpoints.len();
        let mut untried = (0..n)
            .map(|k| (self.next + k) % n)
            .filter(|&i| !ctx.tried(i));
        let failed = |i: usize| endpoints.get(i).failed_within_ms(self.avoid_ms);
        let first = untried.clone().next()?;
        let choice = untried.find(|&i| !failed(i)).unwrap_or(first);
        self.next = choice + 1;
        Some(choice)
    }
}

export_policy!(Template);

#[cfg(test)]
mod tests;
