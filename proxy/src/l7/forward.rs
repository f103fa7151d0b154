//! One HTTP request: a policy pick (mode 1, request head lent to the
//! policy), a pooled backend connection, the request sent on, the response
//! streamed back. Connect failures and requests a stale pooled connection
//! handed back unsent are retried on another endpoint, at most
//! `connectAttempts` picks: neither has reached a backend, so a retry is
//! safe whatever the method.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::http::{Request, Response};

use super::body::{Finish, ProxyBody, failure, is_grpc};
use super::conn::{Conn, Target};
use super::metrics::ErrorReason;
use super::pool;
use super::rewrite;
use super::upgrade;
use crate::policy::{Decision, Outcome};

/// Ends one request's accounting when its response is over.
pub struct Done {
    conn: Rc<Conn>,
    target: Rc<Target>,
    start: Instant,
    /// The pick whose live `active` count the request holds.
    picked: Option<(Decision, SocketAddr)>,
    finished: bool,
}

impl Done {
    pub fn new(conn: Rc<Conn>, target: Rc<Target>, start: Instant) -> Self {
        conn.started();
        target.metrics.active_streams.inc();
        Self {
            conn,
            target,
            start,
            picked: None,
            finished: false,
        }
    }
}

impl Finish for Done {
    fn finish(&mut self, broken: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let m = &self.target.metrics;
        m.active_streams.dec();
        m.latency.observe(self.start.elapsed().as_secs_f64());
        if broken {
            m.error(ErrorReason::UpstreamReset);
        }
        if let Some((decision, endpoint)) = self.picked.take() {
            self.conn
                .worker
                .release(&self.target.resolved, decision, endpoint);
        }
        self.conn.ended();
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        // The handler was dropped mid-way (client gone): still give back
        // the stream count and the endpoint's live count.
        self.finish(false);
    }
}

/// What a request got: a backend's response (with the pick that holds the
/// endpoint's live count until the body ends), or a complete answer.
pub enum Answer {
    Upstream(Response<Incoming>, Decision, SocketAddr),
    Ready(Response<ProxyBody>),
}

type Failed = (ErrorReason, String);

pub async fn handle(
    conn: Rc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    let Some(target) = conn.target() else {
        // The Service port vanished while the connection was open.
        return Ok(failure(
            ErrorReason::NoEndpoint,
            grpc,
            "the Service of this connection no longer exists".into(),
        ));
    };
    let mut done = Done::new(conn.clone(), target.clone(), start);
    let answer = if upgrade::is_upgrade(&req) {
        upgrade::handle(&conn, &target, req).await
    } else {
        proxy(&conn, &target, req).await
    };
    let resp = match answer {
        Ok(Answer::Upstream(mut resp, decision, addr)) => {
            done.picked = Some((decision, addr));
            rewrite::response(resp.headers_mut());
            target.metrics.status(resp.status().as_u16());
            let (parts, inner) = resp.into_parts();
            return Ok(Response::from_parts(
                parts,
                ProxyBody::upstream(inner, Box::new(done)),
            ));
        }
        Ok(Answer::Ready(resp)) => resp,
        Err((reason, message)) => {
            target.metrics.error(reason);
            crate::logging::rate_limited_warn(&format!("l7:{}", target.name()), || {
                tracing::warn!(service = %target.name(), client = %conn.client, %message, "L7 request failed");
            });
            failure(reason, grpc, message)
        }
    };
    target.metrics.status(resp.status().as_u16());
    done.finish(false);
    Ok(resp)
}

async fn proxy(
    conn: &Rc<Conn>,
    target: &Rc<Target>,
    req: Request<Incoming>,
) -> Result<Answer, Failed> {
    let endpoints = target.resolved.route.endpoints();
    if endpoints.is_empty() {
        return Err(no_endpoint(target));
    }
    let attempts = (conn.worker.cfg.connect_attempts as usize)
        .min(endpoints.len())
        .max(1);
    let (parts, body) = req.into_parts();
    let mut head: Option<Parts> = Some(parts);
    let mut body = Some(body);
    let mut tried: Vec<usize> = Vec::new();
    let mut fresh = false;
    let mut last = String::new();
    for _ in 0..attempts {
        let decision = {
            let pick = conn.pick_request(target, &tried);
            conn.worker
                .decider()
                .borrow_mut()
                .pick_request(&pick, &mut head)
        };
        let Some(decision) = decision else { break };
        let addr = endpoints[decision.index].addr;
        let sent_at = Instant::now();
        let failed = |tried: &[usize]| {
            let after = sent_at.elapsed();
            report(
                conn,
                target,
                tried,
                decision,
                addr,
                Outcome::Failed { after },
            );
        };
        let sender = match pool::checkout(addr, target.protocol, conn.dial, fresh).await {
            Ok(sender) => sender,
            Err(e) => {
                failed(&tried);
                target.metrics.error(ErrorReason::Connect);
                tracing::debug!(service = %target.name(), endpoint = %addr, error = %e, "L7 upstream connect failed");
                last = e.to_string();
                tried.push(decision.index);
                fresh = false;
                continue;
            }
        };
        let (Some(mut parts), Some(b)) = (head.take(), body.take()) else {
            break;
        };
        rewrite::request(&mut parts, target.protocol, &conn.forwarded_for, addr);
        let timeout = conn.worker.cfg.l7.response_timeout.0;
        match tokio::time::timeout(timeout, sender.send(Request::from_parts(parts, b))).await {
            Ok(Ok(resp)) => {
                let latency = sent_at.elapsed();
                report(
                    conn,
                    target,
                    &tried,
                    decision,
                    addr,
                    Outcome::Connected { latency },
                );
                return Ok(Answer::Upstream(resp, decision, addr));
            }
            Ok(Err(mut e)) => {
                failed(&tried);
                if let Some(unsent) = e.take_message() {
                    // A pooled connection that had closed: the request
                    // never left; a new connection may take it.
                    let (p, b) = unsent.into_parts();
                    head = Some(p);
                    body = Some(b);
                    tried.push(decision.index);
                    fresh = true;
                    last = e.into_error().to_string();
                    continue;
                }
                let e = e.into_error();
                return Err((
                    ErrorReason::Upstream,
                    format!("backend {addr} of {} failed: {e}", target.name()),
                ));
            }
            Err(_) => {
                failed(&tried);
                return Err((
                    ErrorReason::Timeout,
                    format!(
                        "backend {addr} of {} did not answer within {timeout:?}",
                        target.name()
                    ),
                ));
            }
        }
    }
    if tried.is_empty() {
        return Err(no_endpoint(target));
    }
    Err((
        ErrorReason::Connect,
        format!(
            "no backend of {} could be reached ({} tried; last error: {last})",
            target.name(),
            tried.len()
        ),
    ))
}

pub fn no_endpoint(target: &Target) -> Failed {
    (
        ErrorReason::NoEndpoint,
        format!("no endpoint is available for Service {}", target.name()),
    )
}

/// Tells the policy and the live statistics how the request went.
pub fn report(
    conn: &Conn,
    target: &Target,
    tried: &[usize],
    decision: Decision,
    addr: SocketAddr,
    outcome: Outcome,
) {
    let pick = conn.pick_request(target, tried);
    conn.worker
        .decider()
        .borrow_mut()
        .outcome(&pick, decision, addr, outcome);
}
