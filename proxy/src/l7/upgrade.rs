//! HTTP/1.1 upgrades (websocket): the request is picked like any other,
//! sent on a connection of its own (an upgraded connection can never go
//! back to the pool), and once the backend answers 101 both sides are
//! joined byte for byte, as an L4 connection would be.

use std::rc::Rc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::http::{Request, Response, StatusCode, Version, header};
use hyper_util::rt::TokioIo;

use super::body::ProxyBody;
use super::conn::{Conn, Target};
use super::forward::{Answer, no_endpoint, report};
use super::metrics::ErrorReason;
use super::pool;
use crate::policy::Outcome;

/// An HTTP/1.1 request asking to switch protocols.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub async fn handle(
    conn: &Rc<Conn>,
    target: &Rc<Target>,
    mut req: Request<Incoming>,
) -> Result<Answer, (ErrorReason, String)> {
    let endpoints = target.resolved.route.endpoints();
    if endpoints.is_empty() {
        return Err(no_endpoint(target));
    }
    let decision = {
        let pick = conn.pick_request(target, &[]);
        let (parts, body) = req.into_parts();
        let mut head = Some(parts);
        let d = conn
            .worker
            .decider()
            .borrow_mut()
            .pick_request(&pick, &mut head);
        let Some(parts) = head else {
            return Err(no_endpoint(target));
        };
        req = Request::from_parts(parts, body);
        d.ok_or_else(|| no_endpoint(target))?
    };
    let Some(addr) = endpoints.get(decision.index).map(|e| e.addr) else {
        return Err(no_endpoint(target));
    };
    let start = Instant::now();
    let failed = |reason, message: String| {
        let after = start.elapsed();
        report(conn, target, &[], decision, addr, Outcome::Failed { after });
        (reason, message)
    };
    let stream = match pool::connect(addr, conn.dial).await {
        Ok(s) => s,
        Err(e) => return Err(failed(ErrorReason::Connect, e.to_string())),
    };
    let (mut sender, upstream) = match http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(e) => return Err(failed(ErrorReason::Connect, e.to_string())),
    };
    tokio::task::spawn_local(async move {
        let _ = upstream.with_upgrades().await;
    });
    let client_side = hyper::upgrade::on(&mut req);
    let mut resp = match sender.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => return Err(failed(ErrorReason::Upstream, e.to_string())),
    };
    report(
        conn,
        target,
        &[],
        decision,
        addr,
        Outcome::Connected {
            latency: start.elapsed(),
        },
    );
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: an ordinary response, streamed back.
        return Ok(Answer::Upstream(resp, decision, addr));
    }
    let backend_side = hyper::upgrade::on(&mut resp);
    let (worker, resolved) = (conn.worker.clone(), target.resolved.clone());
    let name = target.name();
    tokio::task::spawn_local(async move {
        match tokio::try_join!(client_side, backend_side) {
            Ok((client, backend)) => {
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                    tracing::debug!(service = %name, error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(service = %name, error = %e, "upgrade did not complete"),
        }
        worker.release(&resolved, decision, addr);
    });
    let (parts, _) = resp.into_parts();
    Ok(Answer::Ready(Response::from_parts(
        parts,
        ProxyBody::Local(None),
    )))
}
