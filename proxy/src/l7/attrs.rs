//! Request attributes as a policy sees them through `request_attr` (ABI v1):
//! method, authority, path, header, scheme. Pure functions over a request
//! head, borrowed, so the host answers a policy's question without copying
//! or serialising the header map. `parse_head` + `lookup` is the fuzz
//! target's path from raw bytes to an answer.

use hyper::http::request::Parts;
use hyper::http::{HeaderName, Request, header};

/// `request_attr` kinds (ABI.md).
pub const METHOD: i32 = 0;
pub const AUTHORITY: i32 = 1;
pub const PATH: i32 = 2;
pub const HEADER: i32 = 3;
pub const SCHEME: i32 = 4;

/// Most headers `parse_head` accepts: a head with more is refused, as the
/// server would refuse it.
pub const MAX_HEADERS: usize = 100;

/// The value of one attribute, borrowed from the request; `None` when the
/// request has no such attribute or `kind` is unknown. The authority is the
/// URI's (HTTP/2 `:authority`, absolute-form HTTP/1) or else the `Host`
/// header; the path includes the query; the scheme is `http` unless the
/// URI says otherwise (we only terminate clear text). A header name is
/// matched case-insensitively; with several values the first one counts.
pub fn lookup<'a>(parts: &'a Parts, kind: i32, name: &[u8]) -> Option<&'a [u8]> {
    match kind {
        METHOD => Some(parts.method.as_str().as_bytes()),
        AUTHORITY => match parts.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => parts.headers.get(header::HOST).map(|v| v.as_bytes()),
        },
        PATH => Some(match parts.uri.path_and_query() {
            Some(pq) => pq.as_str().as_bytes(),
            None => parts.uri.path().as_bytes(),
        }),
        HEADER => {
            // HeaderName::from_bytes lower-cases into a stack buffer for
            // names up to 64 bytes; no allocation for ordinary names.
            let name = HeaderName::from_bytes(name).ok()?;
            parts.headers.get(&name).map(|v| v.as_bytes())
        }
        SCHEME => Some(parts.uri.scheme_str().unwrap_or("http").as_bytes()),
        _ => None,
    }
}

/// Copies `value` into `out` the way `request_attr` does: at most
/// `out.len()` bytes, and returns the full length.
pub fn copy_out(value: &[u8], out: &mut [u8]) -> usize {
    let n = value.len().min(out.len());
    out[..n].copy_from_slice(&value[..n]);
    value.len()
}

/// An HTTP/1.x request head (request line and headers, up to the blank
/// line) as `Parts`; `None` when it is not a complete, valid head. For
/// fuzzing and tests: the server parses with hyper, which is stricter.
pub fn parse_head(bytes: &[u8]) -> Option<Parts> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut builder = Request::builder()
        .method(req.method?)
        .uri(req.path?)
        .version(match req.version? {
            0 => hyper::Version::HTTP_10,
            _ => hyper::Version::HTTP_11,
        });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder.body(()).ok().map(|r| r.into_parts().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(head: &str) -> Parts {
        parse_head(head.as_bytes()).expect("valid head in the test")
    }

    fn attr(p: &Parts, kind: i32, name: &str) -> Option<String> {
        lookup(p, kind, name.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn http1_origin_form() {
        let p = parts(
            "POST /api/v1/items?x=1 HTTP/1.1\r\nHost: shop.example\r\nX-Canary: 1\r\nX-Canary: 2\r\n\r\n",
        );
        assert_eq!(attr(&p, METHOD, "").as_deref(), Some("POST"));
        assert_eq!(attr(&p, AUTHORITY, "").as_deref(), Some("shop.example"));
        assert_eq!(attr(&p, PATH, "").as_deref(), Some("/api/v1/items?x=1"));
        assert_eq!(attr(&p, SCHEME, "").as_deref(), Some("http"));
        assert_eq!(attr(&p, HEADER, "x-canary").as_deref(), Some("1"));
        assert_eq!(attr(&p, HEADER, "X-CANARY").as_deref(), Some("1"));
        assert_eq!(attr(&p, HEADER, "x-missing"), None);
        assert_eq!(attr(&p, HEADER, "bad name"), None);
        assert_eq!(attr(&p, HEADER, ""), None);
        assert_eq!(attr(&p, 5, ""), None);
        assert_eq!(attr(&p, -1, ""), None);
    }

    #[test]
    fn uri_authority_wins_over_host() {
        let p = parts("GET http://a.example:8080/p HTTP/1.1\r\nHost: b.example\r\n\r\n");
        assert_eq!(attr(&p, AUTHORITY, "").as_deref(), Some("a.example:8080"));
        assert_eq!(attr(&p, PATH, "").as_deref(), Some("/p"));
    }

    #[test]
    fn no_host_no_authority() {
        let p = parts("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(attr(&p, AUTHORITY, ""), None);
        assert_eq!(attr(&p, PATH, "").as_deref(), Some("/"));
    }

    #[test]
    fn copy_out_truncates_and_reports_full_length() {
        let mut out = [0u8; 3];
        assert_eq!(copy_out(b"hello", &mut out), 5);
        assert_eq!(&out, b"hel");
        assert_eq!(copy_out(b"hello", &mut []), 5);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_head(b"\x00\x01\x02").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").is_none());
    }
}
