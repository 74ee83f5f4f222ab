//! The store's unit tests.

/// Request headers in table-driven cases.
type Hdrs<'a> = &'a [(&'a str, &'a str)];
use super::*;
use http::Request;
use http_body_util::Full;

const ACCOUNT: &str = "AUTH_test";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

fn new_store(max_file_size: u64) -> (tempfile::TempDir, SwiftStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SwiftStore::new(dir.path().to_path_buf(), max_file_size);
    store.create_account(ACCOUNT);
    (dir, store)
}

/// `target` is the raw path after `/v1/<account>`, optionally with `?query`.
async fn call(store: &SwiftStore, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let (rest, query) = match target.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (target, None),
    };
    let mut builder = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = store.handle(req, ACCOUNT, rest, query).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

async fn put(store: &SwiftStore, target: &str, body: &[u8]) -> Reply {
    let len = body.len().to_string();
    call(store, "PUT", target, &[("content-length", len.as_str())], body).await
}

async fn get(store: &SwiftStore, target: &str) -> Reply {
    call(store, "GET", target, &[], b"").await
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

#[tokio::test]
async fn put_get_round_trip_with_etag() {
    let (_dir, store) = new_store(1 << 20);
    let r = put(&store, "/default/hello.txt", b"hello world").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let etag = md5_hex(b"hello world");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.header("x-trans-id").is_some_and(|id| id.starts_with("tx")));
    assert_eq!(r.header("x-trans-id"), r.header("x-openstack-request-id"));

    let r = get(&store, "/default/hello.txt").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("content-length"), Some("11"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("last-modified").is_some_and(|d| d.ends_with(" GMT")));

    let r = call(&store, "HEAD", "/default/hello.txt", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("11"));
    assert!(r.body.is_empty());

    let quoted = format!("\"{etag}\"");
    let cases: [(&str, &str, StatusCode); 5] = [
        ("if-none-match", etag.as_str(), StatusCode::NOT_MODIFIED),
        ("if-none-match", quoted.as_str(), StatusCode::NOT_MODIFIED),
        ("if-none-match", "other", StatusCode::OK),
        ("if-match", "other", StatusCode::PRECONDITION_FAILED),
        ("if-match", quoted.as_str(), StatusCode::OK),
    ];
    for (name, value, expected) in cases {
        let r = call(&store, "GET", "/default/hello.txt", &[(name, value)], b"").await;
        assert_eq!(r.status, expected, "{name}: {value}");
    }

    assert_eq!(store.bytes_used(ACCOUNT), 11);
    assert_eq!(store.bytes_used("AUTH_unknown"), 0);
}

#[tokio::test]
async fn etag_mismatch_is_422_and_keeps_the_old_object() {
    let (_dir, store) = new_store(1 << 20);
    assert_eq!(put(&store, "/default/o", b"v1").await.status, StatusCode::CREATED);
    let good = md5_hex(b"v2");
    let quoted = format!("\"{good}\"");
    let upper = good.to_ascii_uppercase();
    let cases: [(&str, StatusCode, &str); 4] = [
        ("0123456789abcdef0123456789abcdef", StatusCode::UNPROCESSABLE_ENTITY, "v1"),
        (quoted.as_str(), StatusCode::CREATED, "v2"),
        (upper.as_str(), StatusCode::CREATED, "v2"),
        ("nonsense", StatusCode::UNPROCESSABLE_ENTITY, "v2"),
    ];
    for (etag, expected, content) in cases {
        let r = call(&store, "PUT", "/default/o", &[("content-length", "2"), ("etag", etag)], b"v2").await;
        assert_eq!(r.status, expected, "etag {etag}");
        assert_eq!(get(&store, "/default/o").await.text(), content);
    }
}

#[tokio::test]
async fn length_rules_and_size_limit() {
    let (dir, store) = new_store(10);
    let cases: [(Hdrs, &[u8], u16); 6] = [
        (&[], b"abc", 411),
        (&[("content-length", "11")], b"0123456789a", 413),
        (&[("transfer-encoding", "chunked")], b"0123456789a", 413),
        (&[("content-length", "5")], b"abc", 499),
        (&[("content-length", "x")], b"abc", 400),
        (&[("transfer-encoding", "chunked")], b"0123456789", 201),
    ];
    for (headers, body, expected) in cases {
        let r = call(&store, "PUT", "/default/o", headers, body).await;
        assert_eq!(r.status.as_u16(), expected, "{headers:?}");
    }
    assert_eq!(get(&store, "/default/o").await.text(), "0123456789");
    // Only the one stored version is left; refused uploads removed their temp files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let r = put(&store, "/nowhere/o", b"x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ranges() {
    let (_dir, store) = new_store(1 << 20);
    put(&store, "/default/digits", b"0123456789").await;
    let cases: [(&str, u16, Option<&str>, Option<&str>); 9] = [
        ("bytes=0-3", 206, Some("0123"), Some("bytes 0-3/10")),
        ("bytes=7-", 206, Some("789"), Some("bytes 7-9/10")),
        ("bytes=-2", 206, Some("89"), Some("bytes 8-9/10")),
        ("bytes=5-100", 206, Some("56789"), Some("bytes 5-9/10")),
        ("bytes=-20", 206, Some("0123456789"), Some("bytes 0-9/10")),
        ("bytes=10-", 416, None, Some("bytes */10")),
        ("bytes=-0", 416, None, Some("bytes */10")),
        ("bytes=0-1,4-5", 200, Some("0123456789"), None),
        ("bytes=5-2", 200, Some("0123456789"), None),
    ];
    for (range, status, body, content_range) in cases {
        let r = call(&store, "GET", "/default/digits", &[("range", range)], b"").await;
        assert_eq!(r.status.as_u16(), status, "{range}");
        if let Some(body) = body {
            assert_eq!(r.text(), body, "{range}");
            assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()));
        }
        assert_eq!(r.header("content-range"), content_range, "{range}");
    }
}

#[tokio::test]
async fn listings() {
    let (_dir, store) = new_store(1 << 20);
    assert_eq!(call(&store, "PUT", "/list", &[], b"").await.status, StatusCode::CREATED);
    for name in ["d", "a/2", "b", "c/x/y", "a/1"] {
        assert_eq!(put(&store, &format!("/list/{name}"), b"x").await.status, StatusCode::CREATED);
    }
    let cases: [(&str, u16, &str); 12] = [
        ("", 200, "a/1\na/2\nb\nc/x/y\nd\n"),
        ("prefix=a/", 200, "a/1\na/2\n"),
        ("delimiter=/", 200, "a/\nb\nc/\nd\n"),
        ("delimiter=/&marker=a/", 200, "b\nc/\nd\n"),
        ("prefix=c/&delimiter=/", 200, "c/x/\n"),
        ("marker=b", 200, "c/x/y\nd\n"),
        ("end_marker=b", 200, "a/1\na/2\n"),
        ("limit=2", 200, "a/1\na/2\n"),
        ("limit=2&marker=a/2", 200, "b\nc/x/y\n"),
        ("reverse=true&limit=2", 200, "d\nc/x/y\n"),
        ("prefix=zz", 204, ""),
        ("limit=10001", 412, "Maximum limit is 10000"),
    ];
    for (query, status, body) in cases {
        let r = get(&store, &format!("/list?{query}")).await;
        assert_eq!(r.status.as_u16(), status, "{query}");
        assert_eq!(r.text(), body, "{query}");
    }

    let r = get(&store, "/list/?format=json&delimiter=/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-container-object-count"), Some("5"));
    assert_eq!(r.header("x-container-bytes-used"), Some("5"));
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let entries = doc.as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0], serde_json::json!({ "subdir": "a/" }));
    let object = entries[1].as_object().unwrap();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, ["hash", "last_modified", "bytes", "name", "content_type"]);
    assert_eq!(object["name"], "b");
    assert_eq!(object["hash"], md5_hex(b"x"));
    assert_eq!(object["bytes"], 1);
    let stamp = object["last_modified"].as_str().unwrap();
    assert_eq!(stamp.len(), 26, "{stamp}");
    assert_eq!(&stamp[10..11], "T");

    let r = call(&store, "GET", "/list?prefix=zz", &[("accept", "application/json")], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "[]");

    let r = get(&store, "/list?format=xml&limit=1").await;
    assert!(r.text().contains("<container name=\"list\"><object><name>a/1</name>"), "{}", r.text());

    let r = get(&store, "").await;
    assert_eq!(r.text(), "default\ndefault_segments\nlist\n");
    let r = get(&store, "/?format=json&prefix=l").await;
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc[0]["name"], "list");
    assert_eq!(doc[0]["count"], 5);
    let r = call(&store, "HEAD", "", &[], b"").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("x-account-container-count"), Some("3"));
    assert_eq!(r.header("x-account-object-count"), Some("5"));
    assert_eq!(r.header("x-account-bytes-used"), Some("5"));
}

#[tokio::test]
async fn names_are_decoded_once_and_kept_verbatim() {
    let (_dir, store) = new_store(1 << 20);
    let r = put(&store, "/default/a%20b/%C3%BC%2Fc//d/", b"odd").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(put(&store, "/default/plus+sign", b"p").await.status, StatusCode::CREATED);

    assert_eq!(get(&store, "/default/a b/ü/c//d/").await.text(), "odd");
    assert_eq!(get(&store, "/default/a%20b/%C3%BC/c//d/").await.text(), "odd");
    assert_eq!(get(&store, "/default/a b/ü/c/d/").await.status, StatusCode::NOT_FOUND);

    let r = get(&store, "/default/?format=json").await;
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let names: Vec<&str> = doc.as_array().unwrap().iter().map(|entry| entry["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a b/ü/c//d/", "plus+sign"]);
    // In queries `+` is a space, `%2B` a plus.
    assert_eq!(get(&store, "/default?prefix=plus%2B").await.text(), "plus+sign\n");
    assert_eq!(get(&store, "/default?prefix=plus+").await.status, StatusCode::NO_CONTENT);
    assert_eq!(get(&store, "/default?prefix=a+b").await.text(), "a b/ü/c//d/\n");

    let long_ok = format!("/default/{}", "n".repeat(1024));
    let long_bad = format!("/default/{}", "n".repeat(1025));
    let long_container = format!("/{}", "c".repeat(257));
    let cases: [(&str, &str, u16); 6] = [
        ("PUT", "/default/bad%FF", 412),
        ("PUT", "/default/nul%00x", 412),
        ("GET", "/bad%FF", 412),
        ("PUT", long_ok.as_str(), 201),
        ("PUT", long_bad.as_str(), 400),
        ("PUT", long_container.as_str(), 400),
    ];
    for (method, target, expected) in cases {
        let r = call(&store, method, target, &[("content-length", "1")], b"x").await;
        assert_eq!(r.status.as_u16(), expected, "{method} {}", &target[..target.len().min(30)]);
    }
}

#[tokio::test]
async fn dynamic_large_objects() {
    let (_dir, store) = new_store(1 << 20);
    put(&store, "/default_segments/big/00000002", b"def").await;
    put(&store, "/default_segments/big/00000001", b"abc").await;
    put(&store, "/default_segments/bigger", b"zzz").await;
    let r = call(
        &store,
        "PUT",
        "/default/big",
        &[("content-length", "0"), ("x-object-manifest", "default_segments/big/")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let joined = format!("{}{}", md5_hex(b"abc"), md5_hex(b"def"));
    let dlo_etag = format!("\"{}\"", md5_hex(joined.as_bytes()));
    let r = get(&store, "/default/big").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "abcdef");
    assert_eq!(r.header("etag"), Some(dlo_etag.as_str()));
    assert_eq!(r.header("content-length"), Some("6"));
    assert_eq!(r.header("x-object-manifest"), Some("default_segments/big/"));

    let r = call(&store, "HEAD", "/default/big", &[], b"").await;
    assert_eq!(r.header("content-length"), Some("6"));

    let r = call(&store, "GET", "/default/big", &[("range", "bytes=2-4")], b"").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), "cde");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/6"));

    let r = get(&store, "/default/big?multipart-manifest=get").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(md5_hex(b"").as_str()));

    // Copying a DLO yields a plain object holding the concatenation.
    let r = call(&store, "COPY", "/default/big", &[("destination", "default/flat")], b"").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = get(&store, "/default/flat").await;
    assert_eq!(r.text(), "abcdef");
    assert_eq!(r.header("etag"), Some(md5_hex(b"abcdef").as_str()));
    assert_eq!(r.header("x-object-manifest"), None);

    let r = call(&store, "PUT", "/default/slo?multipart-manifest=put", &[("content-length", "2")], b"[]").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn server_side_copies() {
    let (_dir, store) = new_store(1 << 20);
    let r = call(
        &store,
        "PUT",
        "/default/src",
        &[("content-length", "4"), ("content-type", "text/plain"), ("x-object-meta-color", "red")],
        b"data",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let r = call(&store, "COPY", "/default/src", &[("destination", "default/dst")], b"").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("x-copied-from"), Some("default/src"));
    assert_eq!(r.header("etag"), Some(md5_hex(b"data").as_str()));

    let r = call(
        &store,
        "PUT",
        "/default/dst2",
        &[("x-copy-from", "/default/src"), ("content-length", "0"), ("x-object-meta-color", "blue")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // The source goes away; the copies do not depend on its file.
    assert_eq!(call(&store, "DELETE", "/default/src", &[], b"").await.status, StatusCode::NO_CONTENT);
    let cases = [("/default/dst", "red"), ("/default/dst2", "blue")];
    for (target, color) in cases {
        let r = get(&store, target).await;
        assert_eq!(r.status, StatusCode::OK, "{target}");
        assert_eq!(r.text(), "data");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x-object-meta-color"), Some(color), "{target}");
    }

    let failures: [(&str, &str, Hdrs, u16); 5] = [
        ("COPY", "/default/src", &[("destination", "default/x")], 404),
        ("COPY", "/default/dst", &[], 412),
        ("COPY", "/default/dst", &[("destination", "nowhere/x")], 404),
        ("PUT", "/default/y", &[("x-copy-from", "justone"), ("content-length", "0")], 412),
        (
            "PUT",
            "/default/y",
            &[("x-copy-from", "default/dst"), ("x-copy-from-account", "AUTH_other"), ("content-length", "0")],
            403,
        ),
    ];
    for (method, target, headers, expected) in failures {
        let r = call(&store, method, target, headers, b"").await;
        assert_eq!(r.status.as_u16(), expected, "{method} {target} {headers:?}");
    }
}

#[tokio::test]
async fn container_lifecycle_and_metadata() {
    let (_dir, store) = new_store(1 << 20);
    let steps: [(&str, &str, Hdrs, u16); 12] = [
        ("PUT", "/tmp", &[("x-container-meta-owner", "me")], 201),
        ("PUT", "/tmp/", &[], 202),
        ("PUT", "/tmp/o", &[("content-length", "0")], 201),
        ("DELETE", "/tmp", &[], 409),
        ("POST", "/tmp/o", &[("x-object-meta-a", "1")], 202),
        ("DELETE", "/tmp/o", &[], 204),
        ("DELETE", "/tmp/o", &[], 404),
        ("POST", "/tmp/o", &[], 404),
        ("DELETE", "/tmp", &[], 204),
        ("DELETE", "/tmp", &[], 404),
        ("PUT", "/tmp/o", &[("content-length", "0")], 404),
        ("PATCH", "/default/o", &[], 405),
    ];
    for (method, target, headers, expected) in steps {
        let r = call(&store, method, target, headers, b"").await;
        assert_eq!(r.status.as_u16(), expected, "{method} {target}");
    }

    call(&store, "PUT", "/meta", &[("x-container-meta-owner", "me")], b"").await;
    let r = call(&store, "HEAD", "/meta", &[], b"").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("x-container-meta-owner"), Some("me"));
    assert_eq!(r.header("x-container-object-count"), Some("0"));
    call(&store, "POST", "/meta", &[("x-remove-container-meta-owner", "x")], b"").await;
    let r = call(&store, "HEAD", "/meta", &[], b"").await;
    assert_eq!(r.header("x-container-meta-owner"), None);

    assert_eq!(
        call(&store, "POST", "", &[("x-account-meta-temp-url-key", "k")], b"").await.status,
        StatusCode::NO_CONTENT
    );
    let r = call(&store, "HEAD", "/", &[], b"").await;
    assert_eq!(r.header("x-account-meta-temp-url-key"), Some("k"));

    // Object POST replaces the whole user metadata set.
    call(
        &store,
        "PUT",
        "/default/m",
        &[("content-length", "0"), ("x-object-meta-a", "1"), ("x-object-meta-b", "2")],
        b"",
    )
    .await;
    call(&store, "POST", "/default/m", &[("x-object-meta-b", "3"), ("content-type", "application/directory")], b"")
        .await;
    let r = call(&store, "HEAD", "/default/m", &[], b"").await;
    assert_eq!(r.header("x-object-meta-a"), None);
    assert_eq!(r.header("x-object-meta-b"), Some("3"));
    assert_eq!(r.header("content-type"), Some("application/directory"));

    let r = call(&store, "PUT", "/default/n", &[("content-length", "0"), ("if-none-match", "*")], b"").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = call(&store, "PUT", "/default/n", &[("content-length", "0"), ("if-none-match", "*")], b"").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
}

#[test]
fn info_document() {
    let store = SwiftStore::new(std::env::temp_dir(), 5_368_709_122);
    let doc: serde_json::Value = serde_json::from_str(&store.info_json()).unwrap();
    assert_eq!(doc["swift"]["max_file_size"], 5_368_709_122u64);
    assert_eq!(doc["swift"]["container_listing_limit"], 10000);
    assert!(doc.get("slo").is_none());
    assert!(doc.get("tempauth").is_some());
}

#[test]
fn http_dates() {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_345_438);
    let text = http_date(t);
    assert_eq!(text, "Sun, 22 Nov 2026 11:03:58 GMT");
    let value = HeaderValue::from_str(&text).unwrap();
    assert_eq!(parse_http_date(&value), Some(1_795_345_438));
}
