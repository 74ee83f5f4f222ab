//! Micro-benchmarks of what every storage request runs through: the gateway-token check, the
//! account path check, the credential fast path, the header clean-up both ways, the cached
//! key check.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use swiftgate::clock::SystemClock;
use swiftgate::config::ResolvedUser;
use swiftgate::front::{TokenIssuer, TokenKeys, Users};
use swiftgate::provider::{CredentialSource, ProviderError, SwiftCredentials, Usage};
use swiftgate::proxy::{strip_request_headers, strip_response_headers, Target};
use swiftgate::secret::Secret;
use swiftgate::tokens::{RenewPolicy, TokenManager};

#[derive(Debug)]
struct Fixed;

#[async_trait::async_trait]
impl CredentialSource for Fixed {
    async fn fetch(&self) -> Result<SwiftCredentials, ProviderError> {
        Ok(SwiftCredentials {
            token: Secret::new("AUTH_tk0123456789abcdef"),
            endpoint: "https://lb1040.hubic.ovh.net/v1/AUTH_47e7e0fe42913821a6365ad2e220bcc5".into(),
            expires: SystemTime::now() + Duration::from_secs(86400),
        })
    }
    async fn usage(&self, _creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
        Ok(Usage { used: 0, quota: 0 })
    }
}

fn hot(c: &mut Criterion) {
    let issuer = TokenIssuer::new(Duration::from_secs(86400), TokenKeys::random(), vec!["alice".into()]);
    let (token, _) = issuer.issue(0, SystemTime::now());
    c.bench_function("gateway token verify", |b| b.iter(|| issuer.verify(black_box(&token), SystemTime::now())));

    let creds = futures_lite_block(Fixed.fetch()).unwrap();
    let target = Target::parse(&creds).unwrap();
    let path = "/v1/AUTH_47e7e0fe42913821a6365ad2e220bcc5/default/some/deep/object%20name.bin";
    c.bench_function("account path check", |b| b.iter(|| target.covers(black_box(path))));

    // What python-swiftclient sends with a GET, and what Swift answers to it.
    let request = headers(&[
        ("host", "localhost:8080"),
        ("user-agent", "python-swiftclient-4.6.0"),
        ("accept-encoding", "gzip, deflate"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-auth-token", "AUTH_tk0123456789abcdef0123456789abcdef"),
    ]);
    let response = headers(&[
        ("content-length", "4096"),
        ("accept-ranges", "bytes"),
        ("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT"),
        ("etag", "0123456789abcdef0123456789abcdef"),
        ("x-timestamp", "1763719200.00000"),
        ("content-type", "application/octet-stream"),
        ("x-trans-id", "tx0123456789abcdef0123-0063f1e2d3"),
        ("x-openstack-request-id", "tx0123456789abcdef0123-0063f1e2d3"),
        ("date", "Sat, 21 Nov 2026 10:00:00 GMT"),
    ]);
    let strips = [
        ("strip request headers", request, strip_request_headers as fn(&mut HeaderMap)),
        ("strip response headers", response, strip_response_headers),
    ];
    for (name, fields, strip) in strips {
        c.bench_function(name, |b| b.iter_batched_ref(|| fields.clone(), strip, BatchSize::SmallInput));
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let manager = Arc::new(TokenManager::new(
        [("a".to_owned(), Arc::new(Fixed) as Arc<dyn CredentialSource>)],
        Arc::new(SystemClock),
        RenewPolicy::default(),
    ));
    rt.block_on(manager.credentials("a")).unwrap();
    c.bench_function("cached credentials", |b| b.iter(|| rt.block_on(manager.credentials(black_box("a"))).unwrap()));

    let hash = swiftgate::front::hash_key("key").unwrap();
    let users = Users::new(&[ResolvedUser { name: "u".into(), key_hash: hash, account: "a".into() }]);
    let here = std::net::IpAddr::from([127, 0, 0, 1]);
    rt.block_on(users.verify_index("u", "key", here)).unwrap();
    c.bench_function("cached key check (warm v1.0 auth)", |b| {
        b.iter(|| rt.block_on(users.verify_index(black_box("u"), black_box("key"), here)).unwrap())
    });
}

fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    map
}

/// Runs a ready future to completion without a runtime.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

criterion_group!(benches, hot);
criterion_main!(benches);
