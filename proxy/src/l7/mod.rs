//! L7: per-request balancing for Service ports that opt in (appProtocol
//! `http`, `kubernetes.io/ws`, `kubernetes.io/h2c`, `grpc`, or the
//! `switchyard.dev/protocol` annotation). The worker that accepted the
//! connection terminates HTTP/1.1 or h2c with hyper, asks the bound policy
//! for an endpoint per request (ABI v1 mode 1, with the request's
//! attributes readable through `request_attr`), and sends the request on
//! a pooled, kept-alive (HTTP/1.1) or multiplexed (HTTP/2) connection.
//!
//! | file | one idea |
//! | --- | --- |
//! | `attrs.rs` | request attributes for policies (pure, fuzzable) |
//! | `server.rs` | one client connection: protocol detection, timeouts |
//! | `conn.rs` | a connection's Service target, re-resolved per snapshot |
//! | `forward.rs` | one request: pick, retry, send, account |
//! | `rewrite.rs` | hop-by-hop headers, request target per upstream protocol |
//! | `pool.rs` | per-worker upstream connections |
//! | `upgrade.rs` | websocket and other upgrades, joined as L4 |
//! | `body.rs` | the response body; local failure answers (503/502/504, gRPC) |
//! | `metrics.rs` | per-Service request metrics |
//! | `exec.rs` | hyper's executor on the worker's thread |
//! | `companion.rs` | the epoll thread that serves an io_uring worker's L7 connections |

pub mod attrs;
mod body;
mod companion;
mod conn;
mod exec;
mod forward;
pub mod metrics;
mod pool;
mod rewrite;
mod server;
mod upgrade;

pub use companion::{Handoff, spawn as spawn_companion};
pub use metrics::L7Metrics;
pub use pool::ConnectError;
pub(crate) use server::{adopt, adopt_std, serve};
