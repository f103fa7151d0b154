//! `http-route`: routes each HTTP request (L7 mode) to a group of
//! endpoints chosen by the first rule its method, authority, path prefix
//! and headers match; round robin within the group.
//!
//! ```json
//! {"routes": [
//!    {"header": "x-canary", "value": "1", "endpoints": "*-canary-*"},
//!    {"pathPrefix": "/api/", "endpoints": "api-*"},
//!    {"method": "POST", "authority": "write.shop", "endpoints": "db-*", "field": "name"}],
//!  "default": "*"}
//! ```
//!
//! * A rule matches when every condition it has holds: `method` (exact),
//!   `authority` (a glob against the `Host`/`:authority`, port included),
//!   `pathPrefix`, `header` (present; with `value`, equal to it).
//!   `endpoints` is a glob against each endpoint's `field` (`name`, the
//!   Pod name, by default; `node` or `zone`).
//! * Requests no rule matches, and every L4 connection, go to the
//!   `default` group (a glob, default `*`).
//! * If the chosen group has no endpoint left (none match, or all were
//!   tried), the request goes to any untried endpoint: a routing table
//!   never refuses traffic. Set `"strict": true` to answer "no choice"
//!   instead (the host then falls back to its round robin).
//!
//! EndpointSlices do not carry Pod labels, so groups are named by Pod name
//! (`web-canary-*`), node or zone, as in the `canary` policy.

use serde::Deserialize;
use switchyard_policy::glob::Glob;
use switchyard_policy::{
    Attr, Context, Endpoint, Endpoints, Policy, config, export_policy, select,
};

/// Longest path prefix compared without allocating.
const PATH_BUF: usize = 512;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    #[default]
    Name,
    Node,
    Zone,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteConfig {
    method: Option<String>,
    authority: Option<String>,
    path_prefix: Option<String>,
    header: Option<String>,
    value: Option<String>,
    endpoints: String,
    #[serde(default)]
    field: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    routes: Vec<RouteConfig>,
    default: Option<String>,
    #[serde(default)]
    default_field: Field,
    #[serde(default)]
    strict: bool,
}

struct Route {
    method: Option<String>,
    authority: Option<Glob>,
    path_prefix: Option<String>,
    header: Option<String>,
    value: Option<String>,
    endpoints: Glob,
    field: Field,
}

pub struct HttpRoute {
    routes: Vec<Route>,
    default: Glob,
    default_field: Field,
    strict: bool,
    /// Endpoint indices per route, then the default group last.
    groups: Vec<Vec<u32>>,
    cursors: Vec<usize>,
    any_cursor: usize,
}

fn field_of<'a>(e: &'a Endpoint<'_>, field: Field) -> &'a str {
    match field {
        Field::Name => e.name(),
        Field::Node => e.node(),
        Field::Zone => e.zone(),
    }
}

impl Route {
    fn matches(&self, ctx: &Context) -> bool {
        if let Some(m) = &self.method
            && !ctx.attr_is(Attr::Method, m)
        {
            return false;
        }
        if let Some(a) = &self.authority {
            match ctx.authority() {
                Some(auth) if a.matches(&auth) => {}
                _ => return false,
            }
        }
        if let Some(prefix) = &self.path_prefix {
            let mut buf = [0u8; PATH_BUF];
            match ctx.attr(Attr::Path, &mut buf) {
                Some(n) if n >= prefix.len() && prefix.len() <= buf.len() => {
                    if !buf[..prefix.len()].eq(prefix.as_bytes()) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        if let Some(h) = &self.header {
            let hit = match &self.value {
                Some(v) => ctx.attr_is(Attr::Header(h), v),
                None => ctx.has_header(h),
            };
            if !hit {
                return false;
            }
        }
        true
    }
}

impl HttpRoute {
    /// Endpoint indices of each route's group, and of the default group
    /// (last).
    pub fn groups(&self) -> &[Vec<u32>] {
        &self.groups
    }
}

impl Policy for HttpRoute {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.into_iter().enumerate() {
            if r.value.is_some() && r.header.is_none() {
                return Err(format!(
                    "invalid policy config: routes[{i}].value needs header"
                ));
            }
            if r.header.as_deref() == Some("") {
                return Err(format!(
                    "invalid policy config: routes[{i}].header must not be empty"
                ));
            }
            if r.path_prefix.as_deref().is_some_and(|p| p.len() > PATH_BUF) {
                return Err(format!(
                    "invalid policy config: routes[{i}].pathPrefix is longer than {PATH_BUF} bytes"
                ));
            }
            routes.push(Route {
                method: r.method,
                authority: r.authority.as_deref().map(Glob::new),
                path_prefix: r.path_prefix,
                header: r.header.map(|h| h.to_ascii_lowercase()),
                value: r.value,
                endpoints: Glob::new(&r.endpoints),
                field: r.field,
            });
        }
        let n = routes.len() + 1;
        Ok(HttpRoute {
            routes,
            default: Glob::new(config.default.as_deref().unwrap_or("*")),
            default_field: config.default_field,
            strict: config.strict,
            groups: vec![Vec::new(); n],
            cursors: vec![0; n],
            any_cursor: 0,
        })
    }

    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        for (i, r) in self.routes.iter().enumerate() {
            self.groups[i] = endpoints
                .iter()
                .filter(|e| r.endpoints.matches(field_of(e, r.field)))
                .map(|e| e.index() as u32)
                .collect();
        }
        let last = self.routes.len();
        self.groups[last] = endpoints
            .iter()
            .filter(|e| self.default.matches(field_of(e, self.default_field)))
            .map(|e| e.index() as u32)
            .collect();
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        let group = if ctx.is_l7() {
            self.routes
                .iter()
                .position(|r| r.matches(ctx))
                .unwrap_or(self.routes.len())
        } else {
            self.routes.len()
        };
        let chosen = select::round_robin_in(&mut self.cursors[group], &self.groups[group], ctx);
        if chosen.is_some() || self.strict {
            return chosen;
        }
        select::round_robin(&mut self.any_cursor, endpoints.len(), ctx)
    }
}

export_policy!(HttpRoute);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness, Request};

    /// 0, 1: web; 2: web-canary; 3: api.
    fn fleet() -> Vec<EndpointSpec> {
        vec![
            EndpointSpec::new("10.0.0.1").name("web-a"),
            EndpointSpec::new("10.0.0.2").name("web-b"),
            EndpointSpec::new("10.0.0.3").name("web-canary-c"),
            EndpointSpec::new("10.0.0.4").name("api-d"),
        ]
    }

    const CONFIG: &str = r#"{"routes": [
        {"header": "X-Canary", "value": "1", "endpoints": "*-canary-*"},
        {"pathPrefix": "/api/", "endpoints": "api-*"},
        {"method": "POST", "authority": "write.*", "endpoints": "web-b"}],
        "default": "web-?"}"#;

    fn l7(req: Request) -> Call {
        Call::new().l7(req)
    }

    #[test]
    fn first_matching_rule_wins() {
        let mut h = Harness::<HttpRoute>::with_endpoints(CONFIG, &fleet());
        let canary = l7(Request::get("/api/x").header("x-canary", "1"));
        assert_eq!(h.distribution(10, |_| canary.clone()).counts, [0, 0, 10, 0]);
        let api = l7(Request::get("/api/items?id=1"));
        assert_eq!(h.distribution(10, |_| api.clone()).counts, [0, 0, 0, 10]);
        let write = l7(Request::new("POST", "/").authority("write.shop:80"));
        assert_eq!(h.distribution(10, |_| write.clone()).counts, [0, 10, 0, 0]);
        let other = l7(Request::get("/").header("x-canary", "0"));
        assert_eq!(h.distribution(10, |_| other.clone()).counts, [5, 5, 0, 0]);
    }

    #[test]
    fn l4_connections_use_the_default_group() {
        let mut h = Harness::<HttpRoute>::with_endpoints(CONFIG, &fleet());
        assert_eq!(h.distribution(10, |_| Call::new()).counts, [5, 5, 0, 0]);
    }

    #[test]
    fn a_prefix_must_be_a_prefix() {
        let mut h = Harness::<HttpRoute>::with_endpoints(CONFIG, &fleet());
        for path in ["/ap", "/apix", "/", "/API/"] {
            let call = l7(Request::get(path));
            assert_eq!(h.distribution(4, |_| call.clone()).counts[3], 0, "{path}");
        }
    }

    #[test]
    fn empty_or_tried_group_falls_through_unless_strict() {
        let mut h = Harness::<HttpRoute>::with_endpoints(CONFIG, &fleet()[..2]);
        let api = l7(Request::get("/api/"));
        assert_eq!(h.distribution(10, |_| api.clone()).counts, [5, 5]);
        let strict =
            r#"{"routes": [{"pathPrefix": "/api/", "endpoints": "api-*"}], "strict": true}"#;
        let mut h = Harness::<HttpRoute>::with_endpoints(strict, &fleet()[..2]);
        assert_eq!(h.pick(&api), None);
        let mut h = Harness::<HttpRoute>::with_endpoints(CONFIG, &fleet());
        let retry = l7(Request::get("/api/")).tried(&[3]);
        assert!(h.pick(&retry).is_some_and(|i| i != 3));
    }

    #[test]
    fn config_is_checked() {
        for bad in [
            r#"{"routes": [{"value": "1", "endpoints": "*"}]}"#,
            r#"{"routes": [{"header": "", "endpoints": "*"}]}"#,
            r#"{"routes": [{"pathPrefix": "/"}]}"#,
            r#"{"routes": [], "weights": 1}"#,
        ] {
            assert!(Harness::<HttpRoute>::new(bad).is_err(), "{bad}");
        }
        assert!(Harness::<HttpRoute>::new("{}").is_ok());
    }
}
