//! What changes between the client's hop and the backend's: hop-by-hop
//! headers go (RFC 9110 §7.6.1; HTTP/2 refuses them outright), the request
//! target takes the form the upstream protocol needs, and the backend
//! learns the client's address (pooled connections leave from the node).

use std::net::SocketAddr;

use hyper::http::request::Parts;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::http::{HeaderMap, HeaderValue, Uri, Version, header};

use crate::catalog::L7Protocol;

const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// `te: trailers` stays: gRPC needs it and HTTP/2 allows exactly that.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.remove(header::CONNECTION)
        && let Ok(list) = conn.to_str()
    {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !name.eq_ignore_ascii_case("te") {
                headers.remove(name);
            }
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

/// Prepares a client's request head for the backend at `addr`.
/// Idempotent: a request handed back unsent may go through it again.
pub fn request(parts: &mut Parts, protocol: L7Protocol, addr: SocketAddr) {
    strip_hop_by_hop(&mut parts.headers);
    match protocol {
        L7Protocol::Http1 => {
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(header::HOST)
                && let Some(a) = parts.uri.authority()
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                // An HTTP/2 client's :authority becomes the Host header.
                parts.headers.insert(header::HOST, v);
            }
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                let pq = parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                parts.uri = Uri::from(pq);
            }
        }
        L7Protocol::H2c => {
            parts.version = Version::HTTP_2;
            if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
                parts.uri = absolute(&parts.uri, &parts.headers, addr);
            }
            // HTTP/2 carries the authority as a pseudo-header.
            parts.headers.remove(header::HOST);
        }
    }
}

/// `http://<authority>/<path>` for an HTTP/2 backend: the request's own
/// authority (URI, then Host), else the backend's address.
fn absolute(uri: &Uri, headers: &HeaderMap, addr: SocketAddr) -> Uri {
    let authority = uri
        .authority()
        .cloned()
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        })
        .or_else(|| Authority::try_from(addr.to_string()).ok());
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = authority;
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The client's address as an `x-forwarded-for` value, made once per
/// connection.
pub fn forwarded_for(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A backend's response head on its way to the client.
pub fn response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::attrs::parse_head;

    fn parts(head: &str) -> Parts {
        parse_head(head.as_bytes()).expect("valid head")
    }

    const BACKEND: &str = "10.1.0.2:8080";

    #[test]
    fn forwarded_for_is_the_client_address() {
        assert_eq!(
            forwarded_for("10.0.0.9:5555".parse().expect("addr")),
            "10.0.0.9"
        );
        assert_eq!(
            forwarded_for("[fd00::9]:5555".parse().expect("addr")),
            "fd00::9"
        );
    }

    #[test]
    fn rewriting_twice_changes_nothing_more() {
        for protocol in [L7Protocol::Http1, L7Protocol::H2c] {
            let mut p = parts("GET /x HTTP/1.1\r\nHost: api.shop\r\nConnection: close\r\n\r\n");
            request(&mut p, protocol, BACKEND.parse().expect("addr"));
            let once = (p.uri.clone(), p.version, p.headers.clone());
            request(&mut p, protocol, BACKEND.parse().expect("addr"));
            assert_eq!((p.uri.clone(), p.version, p.headers.clone()), once);
        }
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut p = parts(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Keep: 1\r\n\r\n",
        );
        strip_hop_by_hop(&mut p.headers);
        assert!(p.headers.get("x-secret").is_none());
        assert!(p.headers.get("keep-alive").is_none());
        assert!(p.headers.get("connection").is_none());
        assert_eq!(p.headers["te"], "trailers");
        assert_eq!(p.headers["x-keep"], "1");
        let mut p = parts("GET / HTTP/1.1\r\nTE: gzip\r\n\r\n");
        strip_hop_by_hop(&mut p.headers);
        assert!(p.headers.get("te").is_none());
    }

    #[test]
    fn http2_upstream_gets_an_absolute_uri() {
        let mut p = parts("GET /x?y=1 HTTP/1.1\r\nHost: api.shop\r\n\r\n");
        request(&mut p, L7Protocol::H2c, BACKEND.parse().expect("addr"));
        assert_eq!(p.uri.to_string(), "http://api.shop/x?y=1");
        assert_eq!(p.version, Version::HTTP_2);
        assert!(p.headers.get("host").is_none());
        let mut p = parts("GET / HTTP/1.0\r\n\r\n");
        request(&mut p, L7Protocol::H2c, BACKEND.parse().expect("addr"));
        assert_eq!(p.uri.to_string(), "http://10.1.0.2:8080/");
    }

    #[test]
    fn http1_upstream_gets_origin_form_and_host() {
        let mut p = parts("GET http://api.shop/x HTTP/1.1\r\n\r\n");
        request(&mut p, L7Protocol::Http1, BACKEND.parse().expect("addr"));
        assert_eq!(p.uri.to_string(), "/x");
        assert_eq!(p.headers["host"], "api.shop");
        assert_eq!(p.version, Version::HTTP_11);
    }
}
