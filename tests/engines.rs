//! The two proxy engines side by side: generated requests (methods, names, fields, bodies) and
//! upstream answers (statuses, fields, bodies, a `401` that the gateway renews past) go through
//! a gateway on the fast engine and one on hyper's, and upstream must see the same requests and
//! the client the same answers. The case count is fixed and the seed printed, so a failure can
//! be replayed with `SWIFTGATE_ENGINES_SEED`. Broken connections are left to `tests/faults.rs`,
//! which `tests/all.sh` runs on each engine: how much of a broken answer a hyper upstream has
//! sent when it breaks, and so whether a pooled `GET` is sent again, is a matter of timing.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use common::raw::{self, full};
use common::Stack;
use swiftgate::body::Body;
use swiftgate::server::Handler;

/// Generated cases per run: enough to cover every combination's pair a few times over, few
/// enough to stay within seconds.
const CASES: u32 = 48;

/// How the upstream answers one case.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    body_len: usize,
    fields: Vec<(&'static str, &'static str)>,
    /// The case's first request gets `401` (a token refused before its expiry).
    refuse_first: bool,
}

/// One request a client sends, and what upstream answers it.
#[derive(Clone, Debug)]
struct Case {
    method: &'static str,
    name: String,
    query: Option<&'static str>,
    fields: Vec<(&'static str, &'static str)>,
    body_len: usize,
    answer: Answer,
}

/// What upstream saw of one request: method, target, fields (names lower-cased, sorted) and
/// the body.
type Seen = (String, String, Vec<(String, String)>, Bytes);

/// A Swift-like upstream that mints a new token at each v1.0 auth, records every storage
/// request by its `x-case-id` and answers it as the case says.
struct Scripted {
    origin: String,
    tokens: Mutex<u64>,
    answers: Arc<Mutex<BTreeMap<String, Answer>>>,
    seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>>,
}

impl Handler for Scripted {
    async fn handle(&self, req: Request<Incoming>, _peer: Arc<swiftgate::server::Peer>) -> Response<Body> {
        if req.uri().path() == "/auth/v1.0" {
            let n = {
                let mut tokens = self.tokens.lock().unwrap();
                *tokens += 1;
                *tokens
            };
            return common::v1_auth_answer(&self.origin, "AUTH_x", &format!("AUTH_tk{n}"));
        }
        let id = req.headers().get("x-case-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let method = req.method().as_str().to_owned();
        let target = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let mut fields: Vec<(String, String)> = req
            .headers()
            .iter()
            // The token differs by gateway (each renews on its own); the case id by engine.
            .filter(|(name, _)| !matches!(name.as_str(), "x-auth-token" | "x-case-id"))
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or("?").to_owned()))
            .collect();
        fields.sort();
        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let first = {
            let mut seen = self.seen.lock().unwrap();
            let list = seen.entry(id.clone()).or_default();
            list.push((method.clone(), target, fields, body));
            list.len() == 1
        };
        let Some(answer) = self.answers.lock().unwrap().get(id.split(':').next().unwrap_or("")).cloned() else {
            return swiftgate::body::text(StatusCode::BAD_REQUEST, "no such case\n");
        };
        if answer.refuse_first && first {
            return swiftgate::body::text(StatusCode::UNAUTHORIZED, "refused\n");
        }
        let status = StatusCode::from_u16(answer.status).unwrap();
        let bodiless = method == "HEAD" || matches!(answer.status, 204 | 304);
        let data: Vec<u8> = (0..answer.body_len).map(|i| (i % 251) as u8).collect();
        let mut resp =
            swiftgate::body::with_type(status, "application/octet-stream", if bodiless { Vec::new() } else { data });
        if method == "HEAD" && !matches!(answer.status, 204 | 304) {
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, answer.body_len.into());
        }
        for (name, value) in &answer.fields {
            resp.headers_mut().append(*name, value.parse().unwrap());
        }
        resp
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let method = prop_oneof![Just("GET"), Just("HEAD"), Just("PUT"), Just("POST"), Just("DELETE"), Just("COPY")];
    let segment = prop_oneof![
        Just("o"),
        Just("a%20b"),
        Just("%C3%BC%2Fc"),
        Just("x+y"),
        Just("dir/"),
        Just(""),
        Just("deep/er/name.txt"),
        Just("50%25"),
    ];
    let name = proptest::collection::vec(segment, 1..3).prop_map(|parts| parts.join("/"));
    let query = proptest::option::of(prop_oneof![
        Just("format=json"),
        Just("prefix=a&delimiter=/"),
        Just("multipart-manifest=get")
    ]);
    let field = prop_oneof![
        Just(("x-object-meta-colour", "blue")),
        Just(("X-Object-Meta-Mixed-Case", "Kept")),
        Just(("content-type", "text/plain")),
        Just(("x-forwarded-for", "6.6.6.6")),
        Just(("forwarded", "for=6.6.6.6")),
        Just(("te", "trailers")),
        Just(("range", "bytes=0-3")),
        Just(("if-none-match", "\"nope\"")),
        Just(("destination", "c/copied")),
        Just(("x-auth-user", "alice")),
    ];
    let fields = proptest::collection::vec(field, 0..4);
    let body_len = prop_oneof![Just(0usize), Just(1), Just(1500), Just(70_000)];
    let answer_field = prop_oneof![
        Just(("x-object-meta-colour", "red")),
        Just(("X-Trans-Id", "tx0123")),
        Just(("etag", "\"abc\"")),
        Just(("location", "/v1/AUTH_x/c/moved")),
        Just(("keep-alive", "timeout=5")),
    ];
    let answer = (
        prop_oneof![
            Just(200u16),
            Just(201),
            Just(202),
            Just(204),
            Just(304),
            Just(404),
            Just(412),
            Just(500),
            Just(503)
        ],
        prop_oneof![Just(0usize), Just(7), Just(100_000)],
        proptest::collection::vec(answer_field, 0..3),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(status, body_len, fields, refuse_first)| Answer { status, body_len, fields, refuse_first });
    (method, name, query, fields, body_len, answer).prop_map(|(method, name, query, fields, body_len, answer)| {
        // Only uploads carry a body here: a body on a GET is legal but Swift ignores it.
        let body_len = if matches!(method, "PUT" | "POST") { body_len } else { 0 };
        Case { method, name, query, fields, body_len, answer }
    })
}

/// What the client got: status, fields (lower-cased, sorted, without `date`), and the body or,
/// when it broke off, nothing.
type Got = (u16, Vec<(String, String)>, Option<Bytes>);

async fn send(url: &str, token: &str, case: &Case, id: &str) -> Got {
    let mut target = format!("{url}/c/{}", case.name);
    if let Some(q) = case.query {
        target = format!("{target}?{q}");
    }
    let len = case.body_len.to_string();
    let mut fields: Vec<(&str, &str)> = vec![("x-auth-token", token), ("x-case-id", id)];
    fields.extend(case.fields.iter().copied());
    if matches!(case.method, "PUT" | "POST") {
        fields.push(("content-length", &len));
    }
    let body: Vec<u8> = (0..case.body_len).map(|i| (i % 241) as u8).collect();
    let answer = raw::send(case.method, &target, &fields, full(body)).await;
    let mut got: Vec<(String, String)> = answer
        .headers
        .iter()
        .filter(|(name, _)| name.as_str() != "date")
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or("?").to_owned()))
        .collect();
    got.sort();
    (answer.status, got, (!answer.body_failed).then_some(answer.body))
}

#[test]
fn both_engines_send_and_answer_the_same() {
    let seed: [u8; 32] = match std::env::var("SWIFTGATE_ENGINES_SEED") {
        Ok(hex) => {
            hex::decode(hex).ok().and_then(|b| b.try_into().ok()).expect("SWIFTGATE_ENGINES_SEED: 64 hex digits")
        }
        Err(_) => rand::random(),
    };
    println!("engines: {CASES} cases, seed {} (SWIFTGATE_ENGINES_SEED replays it)", hex::encode(seed));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let answers: Arc<Mutex<BTreeMap<String, Answer>>> = Arc::default();
    let seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
    let (upstream, fast, hyper) = runtime.block_on(async {
        let (a, s) = (answers.clone(), seen.clone());
        let upstream =
            common::serve(move |origin| Scripted { origin, tokens: Mutex::new(0), answers: a, seen: s }).await;
        let fast = Stack::swift_v1(&upstream.origin, "scripted", true).await;
        let hyper = Stack::swift_v1(&upstream.origin, "scripted", false).await;
        (upstream, fast, hyper)
    });
    let config = Config { cases: CASES, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let counter = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&case_strategy(), |case| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string();
        answers.lock().unwrap().insert(n.clone(), case.answer.clone());
        let (by_fast, by_hyper) = runtime.block_on(async {
            let by_fast = send(&fast.1, &fast.2, &case, &format!("{n}:fast")).await;
            let by_hyper = send(&hyper.1, &hyper.2, &case, &format!("{n}:hyper")).await;
            (by_fast, by_hyper)
        });
        prop_assert_eq!(&by_fast, &by_hyper, "the client's answers differ");
        let seen = seen.lock().unwrap();
        let (up_fast, up_hyper) = (seen.get(&format!("{n}:fast")), seen.get(&format!("{n}:hyper")));
        prop_assert_eq!(up_fast, up_hyper, "upstream saw different requests");
        Ok(())
    });
    let (by_fast, by_hyper) = (fast.0.gw.fast_answers(), hyper.0.gw.fast_answers());
    drop((fast, hyper, upstream));
    if let Err(e) = result {
        panic!("seed {}: {e}", hex::encode(seed));
    }
    println!("engines: the fast engine answered {by_fast} of the cases itself");
    assert!(by_fast >= u64::from(CASES) / 4, "the fast engine took too few cases to compare: {by_fast}");
    assert_eq!(by_hyper, 0, "the hyper gateway's fast engine is off");
}
