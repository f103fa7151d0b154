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
    let (mut parts, body) = req.into_parts();
    // Once, before any attempt: a retry must not add it twice.
    parts
        .headers
        .append("x-forwarded-for", conn.forwarded_for.clone());
    let mut head: Option<Parts> = Some(parts);
    let mut body = Some(body);
    let mut tried: Vec<usize> = Vec::new();
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
        // The decider answers within this very list; `get` keeps a slip
        // from ever panicking the worker.
        let Some(addr) = endpoints.get(decision.index).map(|e| e.addr) else {
            break;
        };
        let (Some(parts), Some(b)) = (head.take(), body.take()) else {
            break;
        };
        let sent_at = Instant::now();
        let report_as = |tried: &[usize], outcome| {
            report(conn, target, tried, decision, addr, outcome);
        };
        match send(conn, target, addr, Request::from_parts(parts, b)).await {
            Sent::Answered(resp) => {
                let latency = sent_at.elapsed();
                report_as(&tried, Outcome::Connected { latency });
                return Ok(Answer::Upstream(resp, decision, addr));
            }
            Sent::Unsent(req, why) => {
                // Nothing reached this endpoint: another may take it.
                report_as(
                    &tried,
                    Outcome::Failed {
                        after: sent_at.elapsed(),
                    },
                );
                target.metrics.error(ErrorReason::Connect);
                tracing::debug!(service = %target.name(), endpoint = %addr, error = %why, "L7 upstream unreachable; trying another endpoint");
                let (p, b) = req.into_parts();
                head = Some(p);
                body = Some(b);
                tried.push(decision.index);
                last = why;
            }
            Sent::Failed(why) => {
                report_as(
                    &tried,
                    Outcome::Failed {
                        after: sent_at.elapsed(),
                    },
                );
                return Err((
                    ErrorReason::Upstream,
                    format!("backend {addr} of {} failed: {why}", target.name()),
                ));
            }
            Sent::TimedOut(after) => {
                report_as(
                    &tried,
                    Outcome::Failed {
                        after: sent_at.elapsed(),
                    },
                );
                return Err((
                    ErrorReason::Timeout,
                    format!(
                        "backend {addr} of {} did not answer within {after:?}",
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

/// How sending one request to one endpoint went.
enum Sent {
    Answered(Response<Incoming>),
    /// The request never left (connect failed, or no connection would take
    /// it); here it is back.
    Unsent(Request<Incoming>, String),
    /// It may have reached the backend: not retried.
    Failed(String),
    TimedOut(std::time::Duration),
}

/// Sends on a pooled connection; if that one turns out closed before the
/// request left (the backend's keep-alive timeout closed it), once more on
/// a new connection to the same endpoint, which is not the endpoint's
/// fault.
async fn send(conn: &Conn, target: &Target, addr: SocketAddr, req: Request<Incoming>) -> Sent {
    let (mut parts, body) = req.into_parts();
    rewrite::request(&mut parts, target.protocol, addr);
    let mut req = Request::from_parts(parts, body);
    let timeout = conn.worker.cfg.l7.response_timeout.0;
    for fresh in [false, true] {
        let sender = match pool::checkout(addr, target.protocol, conn.dial, fresh).await {
            Ok(sender) => sender,
            Err(e) => return Sent::Unsent(req, e.to_string()),
        };
        let reused = sender.reused();
        match tokio::time::timeout(timeout, sender.send(req)).await {
            Ok(Ok(resp)) => return Sent::Answered(resp),
            Ok(Err(mut e)) => match e.take_message() {
                Some(unsent) if reused && !fresh => req = unsent,
                Some(unsent) => return Sent::Unsent(unsent, e.into_error().to_string()),
                None => return Sent::Failed(e.into_error().to_string()),
            },
            Err(_) => return Sent::TimedOut(timeout),
        }
    }
    Sent::Failed("no connection took the request".into())
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
