//! A Swift-like upstream that answers v1.0 auth with its own storage URL and echoes every
//! storage request back (method, raw target, headers as JSON), with hop-by-hop headers and an
//! absolute Location of its own in the response: for header-rule tests. Under `/plain/`, the
//! response's `Connection` names no other field.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use swiftgate::body::{self, Body};
use swiftgate::server::Handler;

pub const TOKEN: &str = "AUTH_tkecho";

pub struct Echo {
    origin: String,
    /// Put before `/v1` in the storage URL (a proxy server mounted under a path).
    prefix: &'static str,
}

impl Handler for Echo {
    async fn handle(&self, req: Request<Incoming>, _peer: Arc<swiftgate::server::Peer>) -> Response<Body> {
        if req.uri().path() == "/auth/v1.0" {
            return super::v1_auth_answer(&format!("{}{}", self.origin, self.prefix), "AUTH_echo", TOKEN);
        }
        let mut headers = serde_json::Map::new();
        for (name, value) in req.headers() {
            headers.insert(name.as_str().to_owned(), value.to_str().unwrap_or("?").into());
        }
        let doc = serde_json::json!({
            "method": req.method().as_str(),
            "target": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
            "headers": headers,
        });
        let mut resp = body::json(StatusCode::OK, doc.to_string());
        let h = resp.headers_mut();
        // Under `/plain/`, no `Connection` naming a field (the proxy's fast path takes those).
        if !req.uri().path().contains("/plain/") {
            h.insert("connection", "x-resp-hop".parse().unwrap());
            h.insert("x-resp-hop", "secret".parse().unwrap());
        }
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-object-meta-kept", "yes".parse().unwrap());
        h.insert("location", format!("{}/v1/AUTH_echo/c/moved", self.origin).parse().unwrap());
        h.insert("content-location", "https://elsewhere.example/v1/x".parse().unwrap());
        resp
    }
}

pub async fn start() -> super::Served {
    start_under("").await
}

/// An echo whose storage URL is `<origin><prefix>/v1/AUTH_echo`.
pub async fn start_under(prefix: &'static str) -> super::Served {
    super::serve(move |origin| Echo { origin, prefix }).await
}
