//! A Swift-like upstream that answers v1.0 auth with its own storage URL and echoes every
//! storage request back (method, raw target, headers as JSON), with hop-by-hop headers and an
//! absolute Location of its own in the response: for header-rule tests.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use swiftgate::body::{self, Body};
use swiftgate::server::{self, Handler, ServeOptions};

pub const TOKEN: &str = "AUTH_tkecho";

pub struct Echo {
    origin: String,
}

impl Handler for Echo {
    async fn handle(&self, req: Request<Incoming>, _peer: Arc<swiftgate::server::Peer>) -> Response<Body> {
        if req.uri().path() == "/auth/v1.0" {
            let mut resp = body::status(StatusCode::OK);
            let h = resp.headers_mut();
            h.insert("x-storage-url", format!("{}/v1/AUTH_echo", self.origin).parse().unwrap());
            h.insert("x-auth-token", TOKEN.parse().unwrap());
            h.insert("x-auth-token-expires", "86400".parse().unwrap());
            return resp;
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
        h.insert("connection", "x-resp-hop".parse().unwrap());
        h.insert("x-resp-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-object-meta-kept", "yes".parse().unwrap());
        h.insert("location", format!("{}/v1/AUTH_echo/c/moved", self.origin).parse().unwrap());
        h.insert("content-location", "https://elsewhere.example/v1/x".parse().unwrap());
        resp
    }
}

pub struct RunningEcho {
    pub origin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RunningEcho {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn start() -> RunningEcho {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(listener, Arc::new(Echo { origin: origin.clone() }), ServeOptions::default(), async {
        let _ = rx.await;
    }));
    RunningEcho { origin, stop: Some(tx) }
}
