//! The HubiC emulator's built-in object store: a small, single-node OpenStack Swift that the
//! emulator hands out as its storage endpoint, so local runs and end-to-end tests need no real
//! Swift cluster.
//!
//! It copies the Swift behaviour that clients depend on: once-decoded paths, listing parameters
//! and formats, status codes, unquoted MD5 ETags, single byte ranges, conditional requests,
//! dynamic large objects (DLO) and server-side copy. Metadata lives in memory and object bytes
//! in one file per object version under a data directory. It is not a gateway and not a full
//! Swift: it checks no tokens (the caller has), forgets everything on restart, and has no SLO,
//! versioning, expiry, ACL enforcement, bulk operations or multi-range responses.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use md5::{Digest, Md5};
use percent_encoding::{percent_decode, percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use crate::body::{self, Body, BoxError};

/// Swift's `MAX_OBJECT_NAME_LENGTH` (bytes).
const MAX_OBJECT_NAME_LENGTH: usize = 1024;
/// Swift's `MAX_CONTAINER_NAME_LENGTH` (bytes).
const MAX_CONTAINER_NAME_LENGTH: usize = 256;
/// Swift's `MAX_META_NAME_LENGTH` (bytes after the `X-…-Meta-` prefix).
const MAX_META_NAME_LENGTH: usize = 128;
/// Swift's `MAX_META_VALUE_LENGTH` (bytes).
const MAX_META_VALUE_LENGTH: usize = 256;
/// Swift's `CONTAINER_LISTING_LIMIT`: the default and the maximum `limit`.
const LISTING_LIMIT: usize = 10_000;
/// Size of the `Bytes` chunks an object GET is streamed in.
const CHUNK_SIZE: usize = 64 * 1024;
/// Upload write buffer; request frames are small, and one blocking write per frame is wasteful.
const WRITE_BUFFER: usize = 256 * 1024;
/// How often a read or copy is retried when a concurrent overwrite removed the file it found.
const OPEN_ATTEMPTS: usize = 3;
/// Containers every HubiC account has (hubic-api.md §4.4).
const DEFAULT_CONTAINERS: [&str; 2] = ["default", "default_segments"];
/// The version string `/info` reports.
const SWIFT_VERSION: &str = "2.30.1-swiftgate-emulator";
/// Prefix of user metadata headers on objects.
const OBJECT_META: &str = "x-object-meta-";
/// Body of Swift's 412 for names that are not valid UTF-8 or contain NUL.
const INVALID_NAME: &str = "Invalid UTF8 or contains NULL";
/// Body of a 412 from a failed `If-Match` / `If-Unmodified-Since`.
const PRECONDITION_TEXT: &str = "A precondition for this request was not met.";

// Header names as text: a `const HeaderName` of a custom name would hold an atomic (clippy's
// `declare_interior_mutable_const`), so names are built where they are inserted.
const X_TIMESTAMP: &str = "x-timestamp";
const X_OBJECT_MANIFEST: &str = "x-object-manifest";

/// What Python's `urllib.parse.quote(name, safe='/')` leaves alone, for `X-Copied-From`.
const COPIED_FROM_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// An in-memory Swift account/container/object tree whose object bytes live in files.
pub struct SwiftStore {
    data_dir: PathBuf,
    max_file_size: u64,
    // std Mutex on purpose: it guards only lookups and pointer swaps. Every slow step
    // (streaming, copying, unlinking) works on file paths taken out of the map, so the guard is
    // never held across an `.await`.
    accounts: Mutex<BTreeMap<String, Account>>,
}

struct Account {
    containers: BTreeMap<String, Container>,
    meta: BTreeMap<String, HeaderValue>,
    created: SystemTime,
}

impl Account {
    fn object_count(&self) -> usize {
        self.containers.values().map(|c| c.objects.len()).sum()
    }

    fn bytes_used(&self) -> u64 {
        self.containers.values().map(Container::bytes_used).sum()
    }
}

struct Container {
    objects: BTreeMap<String, ObjectRecord>,
    meta: BTreeMap<String, HeaderValue>,
    created: SystemTime,
}

impl Container {
    fn new(created: SystemTime) -> Self {
        Container { objects: BTreeMap::new(), meta: BTreeMap::new(), created }
    }

    fn bytes_used(&self) -> u64 {
        self.objects.values().map(|o| o.size).sum()
    }
}

/// One stored object version. The file is written once and never modified, which is what makes
/// hard-link copies and lock-free reads safe.
#[derive(Clone)]
struct ObjectRecord {
    file: PathBuf,
    size: u64,
    etag: String,
    content_type: String,
    last_modified: SystemTime,
    /// Lower-cased full header names (`x-object-meta-…`).
    user_meta: BTreeMap<String, HeaderValue>,
    content_encoding: Option<HeaderValue>,
    content_disposition: Option<HeaderValue>,
    /// The raw `X-Object-Manifest` value, as the client sent it.
    manifest: Option<HeaderValue>,
}

/// Which metadata headers a POST/PUT on an account or container sets and removes.
struct MetaKind {
    set: &'static str,
    remove: &'static str,
    /// Non-meta headers Swift stores the same way (container ACLs, versioning, sync).
    extra: &'static [&'static str],
}

const ACCOUNT_META: MetaKind = MetaKind { set: "x-account-meta-", remove: "x-remove-account-meta-", extra: &[] };

const CONTAINER_META: MetaKind = MetaKind {
    set: "x-container-meta-",
    remove: "x-remove-container-meta-",
    extra: &[
        "x-container-read",
        "x-container-write",
        "x-versions-location",
        "x-history-location",
        "x-container-sync-to",
        "x-container-sync-key",
    ],
};

/// Why a storage request failed; turned into a Swift-style reply in [`StoreError::into_response`].
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("conflict")]
    Conflict,
    #[error("length required")]
    LengthRequired,
    #[error("precondition failed: {0}")]
    PreconditionFailed(&'static str),
    #[error("request entity too large")]
    TooLarge,
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable(u64),
    #[error("etag mismatch")]
    EtagMismatch,
    #[error("client disconnected")]
    ClientDisconnect,
    #[error("storage i/o failed: {0}")]
    Io(#[from] io::Error),
}

impl StoreError {
    /// The one place errors become HTTP: status, Swift's stock body, and the extra header some
    /// statuses need.
    fn into_response(self) -> Response<Body> {
        match self {
            StoreError::NotFound => body::html(
                StatusCode::NOT_FOUND,
                "<html><h1>Not Found</h1><p>The resource could not be found.</p></html>",
            ),
            StoreError::BadRequest(msg) => body::text(StatusCode::BAD_REQUEST, msg),
            StoreError::Forbidden => body::html(
                StatusCode::FORBIDDEN,
                "<html><h1>Forbidden</h1><p>Access was denied to this resource.</p></html>",
            ),
            StoreError::MethodNotAllowed(allow) => {
                let mut resp = body::html(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "<html><h1>Method Not Allowed</h1><p>The method is not allowed for this resource.</p></html>",
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                resp
            }
            StoreError::Conflict => body::html(
                StatusCode::CONFLICT,
                "<html><h1>Conflict</h1><p>There was a conflict when trying to complete your request.</p></html>",
            ),
            StoreError::LengthRequired => body::html(
                StatusCode::LENGTH_REQUIRED,
                "<html><h1>Length Required</h1><p>Length Required</p></html>",
            ),
            StoreError::PreconditionFailed(msg) => body::text(StatusCode::PRECONDITION_FAILED, msg),
            StoreError::TooLarge => body::html(
                StatusCode::PAYLOAD_TOO_LARGE,
                "<html><h1>Request Entity Too Large</h1><p>The body of your request was too large for this server.</p></html>",
            ),
            StoreError::RangeNotSatisfiable(size) => {
                let mut resp = body::html(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "<html><h1>Requested Range Not Satisfiable</h1><p>The Range requested is not available.</p></html>",
                );
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                resp
            }
            StoreError::EtagMismatch => body::html(
                StatusCode::UNPROCESSABLE_ENTITY,
                "<html><h1>Unprocessable Entity</h1><p>Unable to process the contained instructions</p></html>",
            ),
            StoreError::ClientDisconnect => body::html(
                // 499 is Swift's own code for a client that went away mid-upload.
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "<html><h1>Client Disconnect</h1><p>The client was disconnected during request.</p></html>",
            ),
            StoreError::Io(err) => {
                tracing::warn!(cause = %err, "emulated object store i/o failed");
                if err.kind() == io::ErrorKind::StorageFull {
                    body::html(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "<html><h1>Insufficient Storage</h1><p>There was not enough space to save the resource.</p></html>",
                    )
                } else {
                    body::html(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "<html><h1>Internal Error</h1><p>The server has either erred or is incapable of performing the requested operation.</p></html>",
                    )
                }
            }
        }
    }
}

/// What the request path names.
enum Target {
    Account,
    Container(String),
    Object(String, String),
}

impl SwiftStore {
    /// data_dir exists and is writable; objects larger than max_file_size are refused with 413.
    pub fn new(data_dir: PathBuf, max_file_size: u64) -> Self {
        SwiftStore { data_dir, max_file_size, accounts: Mutex::new(BTreeMap::new()) }
    }

    /// Creates the account if missing, with containers `default` and `default_segments`.
    pub fn create_account(&self, account: &str) {
        let mut accounts = self.lock();
        if accounts.contains_key(account) {
            return;
        }
        let now = SystemTime::now();
        let containers = DEFAULT_CONTAINERS.iter().map(|name| ((*name).to_owned(), Container::new(now))).collect();
        accounts.insert(account.to_owned(), Account { containers, meta: BTreeMap::new(), created: now });
    }

    /// Bytes used by the account (sum of object sizes), 0 if unknown.
    pub fn bytes_used(&self, account: &str) -> u64 {
        self.lock().get(account).map(Account::bytes_used).unwrap_or(0)
    }

    /// The JSON document for GET /info.
    pub fn info_json(&self) -> String {
        // No `slo` key: clients such as swiftclient ≥ 4.3 switch to SLO uploads when it is
        // advertised, and the emulator only implements DLO.
        serde_json::json!({
            "swift": {
                "version": SWIFT_VERSION,
                "max_file_size": self.max_file_size,
                "max_object_name_length": MAX_OBJECT_NAME_LENGTH,
                "container_listing_limit": LISTING_LIMIT,
                "max_meta_value_length": MAX_META_VALUE_LENGTH
            },
            "tempauth": {}
        })
        .to_string()
    }

    /// Serves one authenticated storage request. `account` is e.g. "AUTH_0123...", already checked
    /// by the caller; `rest` is the RAW (still percent-encoded) path after `/v1/<account>`: "" or "/"
    /// for the account, "/<container>" or "/<container>/" for a container, "/<container>/<object...>"
    /// for an object (object names may contain '/', '//', trailing '/'); `query` the raw query string.
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        account: &str,
        rest: &str,
        query: Option<&str>,
    ) -> http::Response<crate::body::Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let (parts, payload) = req.into_parts();
        let mut resp = match self.route(&parts, payload, account, rest, query).await {
            Ok(resp) => resp,
            Err(err) => err.into_response(),
        };
        if matches!(resp.status(), StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
            *resp.body_mut() = body::empty();
        }
        if let Ok(value) = HeaderValue::from_str(&new_trans_id()) {
            resp.headers_mut().insert(HeaderName::from_static("x-trans-id"), value.clone());
            resp.headers_mut().insert(HeaderName::from_static("x-openstack-request-id"), value);
        }
        resp
    }

    async fn route<B>(
        &self,
        parts: &Parts,
        payload: B,
        account: &str,
        rest: &str,
        query: Option<&str>,
    ) -> Result<Response<Body>, StoreError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let target = parse_target(rest)?;
        let params = query.map(|q| body::form_pairs(q.as_bytes())).unwrap_or_default();
        self.create_account(account);
        match target {
            Target::Account => match parts.method.as_str() {
                "GET" | "HEAD" => self.get_account(parts, account, &params),
                "POST" => self.post_account(parts, account),
                _ => Err(StoreError::MethodNotAllowed("GET, HEAD, POST")),
            },
            Target::Container(container) => match parts.method.as_str() {
                "GET" | "HEAD" => self.get_container(parts, account, &container, &params),
                "PUT" => self.put_container(parts, account, &container),
                "POST" => self.post_container(parts, account, &container),
                "DELETE" => self.delete_container(account, &container),
                _ => Err(StoreError::MethodNotAllowed("DELETE, GET, HEAD, POST, PUT")),
            },
            Target::Object(container, object) => match parts.method.as_str() {
                "GET" | "HEAD" => self.get_object(parts, account, &container, &object, &params).await,
                "PUT" => self.put_object(parts, payload, account, &container, &object, &params).await,
                "POST" => self.post_object(parts, account, &container, &object),
                "DELETE" => self.delete_object(account, &container, &object).await,
                "COPY" => self.copy_method(parts, account, &container, &object, &params).await,
                _ => Err(StoreError::MethodNotAllowed("COPY, DELETE, GET, HEAD, POST, PUT")),
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Account>> {
        // Every update under the lock is a single insert, remove or field assignment, so a
        // panic elsewhere cannot leave the tree half-changed; poisoning carries no information.
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- accounts ---------------------------------------------------------------------------

    fn get_account(
        &self,
        parts: &Parts,
        account: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, StoreError> {
        let query = if parts.method == Method::HEAD { None } else { Some(ListQuery::parse(params, &parts.headers)?) };
        let (headers, rows) = {
            let accounts = self.lock();
            let acct = accounts.get(account).ok_or(StoreError::NotFound)?;
            let rows: Vec<Row> = match &query {
                Some(q) => select(&acct.containers, q)
                    .into_iter()
                    .map(|pick| match pick {
                        Pick::Item(name, c) => Row::Container {
                            name: name.to_owned(),
                            count: c.objects.len(),
                            bytes: c.bytes_used(),
                            last_modified: c.created,
                        },
                        Pick::Subdir(dir) => Row::Subdir(dir),
                    })
                    .collect(),
                None => Vec::new(),
            };
            (account_headers(acct), rows)
        };
        Ok(match query {
            None => reply(StatusCode::NO_CONTENT, headers),
            Some(q) => render_listing(&rows, q.format, Owner::Account(account), headers),
        })
    }

    fn post_account(&self, parts: &Parts, account: &str) -> Result<Response<Body>, StoreError> {
        validate_meta(&parts.headers, ACCOUNT_META.set)?;
        {
            let mut accounts = self.lock();
            let acct = accounts.get_mut(account).ok_or(StoreError::NotFound)?;
            apply_meta(&mut acct.meta, &parts.headers, &ACCOUNT_META);
        }
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    // ---- containers -------------------------------------------------------------------------

    fn get_container(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, StoreError> {
        let query = if parts.method == Method::HEAD { None } else { Some(ListQuery::parse(params, &parts.headers)?) };
        let (headers, rows) = {
            let accounts = self.lock();
            let cont = accounts.get(account).and_then(|a| a.containers.get(container)).ok_or(StoreError::NotFound)?;
            let rows: Vec<Row> = match &query {
                Some(q) => select(&cont.objects, q)
                    .into_iter()
                    .map(|pick| match pick {
                        Pick::Item(name, rec) => Row::Object {
                            name: name.to_owned(),
                            hash: rec.etag.clone(),
                            bytes: rec.size,
                            content_type: rec.content_type.clone(),
                            last_modified: rec.last_modified,
                        },
                        Pick::Subdir(dir) => Row::Subdir(dir),
                    })
                    .collect(),
                None => Vec::new(),
            };
            (container_headers(cont), rows)
        };
        Ok(match query {
            None => reply(StatusCode::NO_CONTENT, headers),
            Some(q) => render_listing(&rows, q.format, Owner::Container(container), headers),
        })
    }

    fn put_container(&self, parts: &Parts, account: &str, container: &str) -> Result<Response<Body>, StoreError> {
        validate_meta(&parts.headers, CONTAINER_META.set)?;
        let created = {
            let mut accounts = self.lock();
            let acct = accounts.get_mut(account).ok_or(StoreError::NotFound)?;
            match acct.containers.get_mut(container) {
                Some(existing) => {
                    apply_meta(&mut existing.meta, &parts.headers, &CONTAINER_META);
                    false
                }
                None => {
                    let mut fresh = Container::new(SystemTime::now());
                    apply_meta(&mut fresh.meta, &parts.headers, &CONTAINER_META);
                    acct.containers.insert(container.to_owned(), fresh);
                    true
                }
            }
        };
        let status = if created { StatusCode::CREATED } else { StatusCode::ACCEPTED };
        Ok(reply(status, zero_length()))
    }

    fn post_container(&self, parts: &Parts, account: &str, container: &str) -> Result<Response<Body>, StoreError> {
        validate_meta(&parts.headers, CONTAINER_META.set)?;
        {
            let mut accounts = self.lock();
            let cont =
                accounts.get_mut(account).and_then(|a| a.containers.get_mut(container)).ok_or(StoreError::NotFound)?;
            apply_meta(&mut cont.meta, &parts.headers, &CONTAINER_META);
        }
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    fn delete_container(&self, account: &str, container: &str) -> Result<Response<Body>, StoreError> {
        {
            let mut accounts = self.lock();
            let acct = accounts.get_mut(account).ok_or(StoreError::NotFound)?;
            let cont = acct.containers.get(container).ok_or(StoreError::NotFound)?;
            if !cont.objects.is_empty() {
                return Err(StoreError::Conflict);
            }
            acct.containers.remove(container);
        }
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    // ---- objects: reads ---------------------------------------------------------------------

    async fn get_object(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        object: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, StoreError> {
        let head = parts.method == Method::HEAD;
        let manifest_get = body::form_get(params, "multipart-manifest") == Some("get");
        let mut attempt = 1;
        loop {
            let view = self.view_object(account, container, object, manifest_get)?;
            let mut headers = object_headers(&view);
            let last_modified = unix_seconds_ceil(view.last_modified);
            if let Precondition::NotModified = evaluate_conditions(&parts.headers, &view.etag, last_modified)? {
                return Ok(reply(StatusCode::NOT_MODIFIED, headers));
            }
            if head {
                // HEAD carries the real length with no body (swift-protocol.md §3.13).
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(view.size));
                return Ok(reply(StatusCode::OK, headers));
            }
            let (status, start, len) = match parse_range(&parts.headers, view.size)? {
                ByteRange::Whole => (StatusCode::OK, 0, view.size),
                ByteRange::Span(first, last) => {
                    if let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", view.size)) {
                        headers.insert(header::CONTENT_RANGE, value);
                    }
                    (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
                }
            };
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            match open_stream(slice_pieces(&view.pieces, start, len)).await {
                Ok(stream) => {
                    let mut resp = Response::new(stream);
                    *resp.status_mut() = status;
                    *resp.headers_mut() = headers;
                    return Ok(resp);
                }
                // A concurrent PUT replaced the object and unlinked the file we were given:
                // look again rather than fail a read of an object that exists.
                Err(err) if err.kind() == io::ErrorKind::NotFound && attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Snapshots an object (and, for a DLO, its segment list) under the lock.
    fn view_object(
        &self,
        account: &str,
        container: &str,
        object: &str,
        manifest_get: bool,
    ) -> Result<ObjectView, StoreError> {
        let accounts = self.lock();
        let acct = accounts.get(account).ok_or(StoreError::NotFound)?;
        let record = acct.containers.get(container).and_then(|c| c.objects.get(object)).ok_or(StoreError::NotFound)?;
        let manifest = if manifest_get { None } else { record.manifest.as_ref() };
        let Some(manifest) = manifest else {
            return Ok(ObjectView {
                record: record.clone(),
                etag: record.etag.clone(),
                size: record.size,
                last_modified: record.last_modified,
                pieces: vec![Piece { path: record.file.clone(), offset: 0, len: record.size }],
                dlo: false,
            });
        };
        let segments = dlo_segments(acct, manifest);
        let mut hasher = Md5::new();
        let mut size = 0u64;
        let mut last_modified = record.last_modified;
        let mut pieces = Vec::with_capacity(segments.len());
        for segment in segments {
            hasher.update(segment.etag.as_bytes());
            size = size.saturating_add(segment.size);
            last_modified = last_modified.max(segment.last_modified);
            pieces.push(Piece { path: segment.file.clone(), offset: 0, len: segment.size });
        }
        Ok(ObjectView {
            record: record.clone(),
            // Swift quotes large-object ETags (swift-protocol.md §3.4); clients rely on the
            // quotes to tell them apart from a plain MD5.
            etag: format!("\"{}\"", hex::encode(hasher.finalize())),
            size,
            last_modified,
            pieces,
            dlo: true,
        })
    }

    // ---- objects: writes --------------------------------------------------------------------

    async fn put_object<B>(
        &self,
        parts: &Parts,
        payload: B,
        account: &str,
        container: &str,
        object: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, StoreError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let headers = &parts.headers;
        if body::form_get(params, "multipart-manifest") == Some("put") {
            return Err(StoreError::BadRequest("SLO not supported by the emulator"));
        }
        // Everything that can reject the request is decided before the body is polled, so a
        // client using `Expect: 100-continue` never uploads into a refusal.
        let exists = self.object_exists(account, container, object)?;
        if let Some(value) = headers.get(header::IF_NONE_MATCH) {
            if value.as_bytes().trim_ascii() != b"*" {
                return Err(StoreError::BadRequest("If-None-Match only supports *"));
            }
            if exists {
                return Err(StoreError::PreconditionFailed(PRECONDITION_TEXT));
            }
        }
        validate_meta(headers, OBJECT_META)?;
        validate_manifest(headers)?;
        let declared = declared_length(headers)?;
        if let Some(source) = headers.get("x-copy-from") {
            let (src_container, src_object) =
                parse_copy_path(source, "X-Copy-From header must be of the form <container name>/<object name>")?;
            check_same_account(headers, "x-copy-from-account", account)?;
            if declared.unwrap_or(0) > 0 {
                return Err(StoreError::BadRequest("Copy requests require a zero byte body"));
            }
            return self
                .copy_object(
                    headers,
                    account,
                    (src_container.as_str(), src_object.as_str()),
                    (container, object),
                    params,
                )
                .await;
        }
        let chunked = is_chunked(headers);
        if declared.is_none() && !chunked {
            return Err(StoreError::LengthRequired);
        }
        if declared.is_some_and(|len| len > self.max_file_size) {
            return Err(StoreError::TooLarge);
        }

        let mut spool = Spool::create(&self.data_dir).await?;
        let mut payload = payload;
        loop {
            // Matched in its own statement so the body's error value is never kept across the
            // write's `.await` below.
            let frame = match payload.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    let err: BoxError = err.into();
                    tracing::debug!(cause = %err, "object upload aborted by the client");
                    return Err(StoreError::ClientDisconnect);
                }
            };
            // Trailers carry nothing Swift stores.
            if let Ok(data) = frame.into_data() {
                spool.write(&data, self.max_file_size).await?;
            }
        }
        if let (Some(len), false) = (declared, chunked) {
            if spool.size < len {
                return Err(StoreError::ClientDisconnect);
            }
            if spool.size > len {
                return Err(StoreError::BadRequest("Request body longer than Content-Length"));
            }
        }
        let spooled = spool.finish().await?;
        if let Some(expected) = headers.get(header::ETAG) {
            let expected = String::from_utf8_lossy(expected.as_bytes());
            if !expected.trim().trim_matches('"').eq_ignore_ascii_case(&spooled.etag) {
                return Err(StoreError::EtagMismatch);
            }
        }
        let staged = self.promote(spooled.guard).await?;
        let record = ObjectRecord {
            file: staged.path.clone(),
            size: spooled.size,
            etag: spooled.etag,
            content_type: content_type_of(headers).unwrap_or_else(|| "application/octet-stream".to_owned()),
            last_modified: SystemTime::now(),
            user_meta: object_meta_from(headers),
            content_encoding: headers.get(header::CONTENT_ENCODING).cloned(),
            content_disposition: headers.get(header::CONTENT_DISPOSITION).cloned(),
            manifest: headers.get(X_OBJECT_MANIFEST).cloned(),
        };
        let mut out = zero_length();
        put_str(&mut out, header::ETAG, &record.etag);
        put_str(&mut out, header::LAST_MODIFIED, &http_date(record.last_modified));
        self.commit(account, container, object, staged, record).await?;
        Ok(reply(StatusCode::CREATED, out))
    }

    /// `COPY` with `Destination`: the mirror image of a PUT with `X-Copy-From`.
    async fn copy_method(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        object: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, StoreError> {
        let headers = &parts.headers;
        let destination =
            headers.get("destination").ok_or(StoreError::PreconditionFailed("Destination header required"))?;
        let (dst_container, dst_object) =
            parse_copy_path(destination, "Destination header must be of the form <container name>/<object name>")?;
        check_same_account(headers, "destination-account", account)?;
        validate_meta(headers, OBJECT_META)?;
        validate_manifest(headers)?;
        self.copy_object(headers, account, (container, object), (dst_container.as_str(), dst_object.as_str()), params)
            .await
    }

    async fn copy_object(
        &self,
        headers: &HeaderMap,
        account: &str,
        (src_container, src_object): (&str, &str),
        (dst_container, dst_object): (&str, &str),
        params: &[(String, String)],
    ) -> Result<Response<Body>, StoreError> {
        let manifest_get = body::form_get(params, "multipart-manifest") == Some("get");
        let mut attempt = 1;
        let (view, staged, size, etag) = loop {
            let view = self.view_object(account, src_container, src_object, manifest_get)?;
            self.object_exists(account, dst_container, dst_object)?;
            let copied = if view.dlo {
                // Swift copies a DLO as the concatenation of its segments, a plain object.
                match self.spool_pieces(&view.pieces).await {
                    Ok(spooled) => match self.promote(spooled.guard).await {
                        Ok(staged) => Ok((staged, spooled.size, spooled.etag)),
                        Err(err) => Err(err),
                    },
                    Err(err) => Err(err),
                }
            } else {
                self.link_copy(&view.record.file)
                    .await
                    .map(|staged| (staged, view.record.size, view.record.etag.clone()))
            };
            match copied {
                Ok((staged, size, etag)) => break (view, staged, size, etag),
                // The source was overwritten between the snapshot and the link: take a new one.
                Err(StoreError::Io(err)) if err.kind() == io::ErrorKind::NotFound && attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        };
        let source = &view.record;
        let mut user_meta =
            if header_is_true(headers.get("x-fresh-metadata")) { BTreeMap::new() } else { source.user_meta.clone() };
        user_meta.extend(object_meta_from(headers));
        let record = ObjectRecord {
            file: staged.path.clone(),
            size,
            etag,
            content_type: content_type_of(headers).unwrap_or_else(|| source.content_type.clone()),
            last_modified: SystemTime::now(),
            user_meta,
            content_encoding: headers
                .get(header::CONTENT_ENCODING)
                .cloned()
                .or_else(|| source.content_encoding.clone()),
            content_disposition: headers
                .get(header::CONTENT_DISPOSITION)
                .cloned()
                .or_else(|| source.content_disposition.clone()),
            manifest: if view.dlo {
                None
            } else {
                headers.get(X_OBJECT_MANIFEST).cloned().or_else(|| source.manifest.clone())
            },
        };
        let mut out = zero_length();
        put_str(&mut out, header::ETAG, &record.etag);
        put_str(&mut out, header::LAST_MODIFIED, &http_date(record.last_modified));
        let copied_from = format!(
            "{}/{}",
            utf8_percent_encode(src_container, COPIED_FROM_SET),
            utf8_percent_encode(src_object, COPIED_FROM_SET)
        );
        put_str(&mut out, HeaderName::from_static("x-copied-from"), &copied_from);
        put_str(&mut out, HeaderName::from_static("x-copied-from-account"), account);
        put_str(&mut out, HeaderName::from_static("x-copied-from-last-modified"), &http_date(view.last_modified));
        self.commit(account, dst_container, dst_object, staged, record).await?;
        Ok(reply(StatusCode::CREATED, out))
    }

    fn post_object(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        object: &str,
    ) -> Result<Response<Body>, StoreError> {
        let headers = &parts.headers;
        validate_meta(headers, OBJECT_META)?;
        validate_manifest(headers)?;
        {
            let mut accounts = self.lock();
            let record = accounts
                .get_mut(account)
                .and_then(|a| a.containers.get_mut(container))
                .and_then(|c| c.objects.get_mut(object))
                .ok_or(StoreError::NotFound)?;
            // Swift's fast-POST replaces the whole user metadata set and the "allowed headers"
            // (Content-Encoding, Content-Disposition, X-Object-Manifest); what is not resent is
            // dropped. Content-Type only changes when sent.
            record.user_meta = object_meta_from(headers);
            if let Some(content_type) = content_type_of(headers) {
                record.content_type = content_type;
            }
            record.content_encoding = headers.get(header::CONTENT_ENCODING).cloned();
            record.content_disposition = headers.get(header::CONTENT_DISPOSITION).cloned();
            record.manifest = headers.get(X_OBJECT_MANIFEST).cloned();
        }
        Ok(body::html(
            StatusCode::ACCEPTED,
            "<html><h1>Accepted</h1><p>The request is accepted for processing.</p></html>",
        ))
    }

    async fn delete_object(&self, account: &str, container: &str, object: &str) -> Result<Response<Body>, StoreError> {
        let removed = {
            let mut accounts = self.lock();
            accounts
                .get_mut(account)
                .and_then(|a| a.containers.get_mut(container))
                .and_then(|c| c.objects.remove(object))
                .ok_or(StoreError::NotFound)?
        };
        remove_quietly(&removed.file).await;
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    /// Whether the object exists; `NotFound` when its container does not.
    fn object_exists(&self, account: &str, container: &str, object: &str) -> Result<bool, StoreError> {
        let accounts = self.lock();
        let cont = accounts.get(account).and_then(|a| a.containers.get(container)).ok_or(StoreError::NotFound)?;
        Ok(cont.objects.contains_key(object))
    }

    fn new_object_path(&self) -> PathBuf {
        self.data_dir.join(format!("{}.obj", random_hex()))
    }

    /// Gives a finished upload its final name; the `.tmp` name marks files that never completed.
    async fn promote(&self, spooled: FileGuard) -> Result<FileGuard, StoreError> {
        let target = self.new_object_path();
        tokio::fs::rename(&spooled.path, &target).await?;
        spooled.disarm();
        Ok(FileGuard::new(target))
    }

    /// Copies a stored object file into a new version file.
    async fn link_copy(&self, source: &Path) -> Result<FileGuard, StoreError> {
        let target = self.new_object_path();
        // Version files are never modified after they are written, so a hard link is an
        // instant, safe copy; fall back to copying bytes where links are impossible.
        match tokio::fs::hard_link(source, &target).await {
            Ok(()) => Ok(FileGuard::new(target)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(err.into()),
            Err(_) => {
                let guard = FileGuard::new(target);
                tokio::fs::copy(source, &guard.path).await?;
                Ok(guard)
            }
        }
    }

    /// Concatenates stored pieces into a new temporary file, hashing as it goes.
    async fn spool_pieces(&self, pieces: &[Piece]) -> Result<Spooled, StoreError> {
        let mut spool = Spool::create(&self.data_dir).await?;
        let mut buf = vec![0u8; CHUNK_SIZE];
        for piece in pieces {
            let mut file = File::open(&piece.path).await?;
            if piece.offset > 0 {
                file.seek(io::SeekFrom::Start(piece.offset)).await?;
            }
            let mut reader = file.take(piece.len);
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                spool.write(&buf[..n], self.max_file_size).await?;
            }
        }
        spool.finish().await
    }

    /// Makes `record` the current version of the object and unlinks the version it replaces.
    async fn commit(
        &self,
        account: &str,
        container: &str,
        object: &str,
        staged: FileGuard,
        record: ObjectRecord,
    ) -> Result<(), StoreError> {
        let previous = {
            let mut accounts = self.lock();
            // The container may have been deleted while the body was uploading; `staged` then
            // removes the orphaned file when it drops.
            let cont =
                accounts.get_mut(account).and_then(|a| a.containers.get_mut(container)).ok_or(StoreError::NotFound)?;
            cont.objects.insert(object.to_owned(), record)
        };
        staged.disarm();
        // Readers that already opened the old file keep reading it; later ones find the new one.
        if let Some(previous) = previous {
            remove_quietly(&previous.file).await;
        }
        Ok(())
    }
}

// ---- object files ---------------------------------------------------------------------------

/// Removes its file when dropped unless disarmed, so failed or abandoned uploads (including a
/// request future dropped mid-body) leave nothing behind.
struct FileGuard {
    path: PathBuf,
    armed: bool,
}

impl FileGuard {
    fn new(path: PathBuf) -> Self {
        FileGuard { path, armed: true }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if self.armed {
            // A single unlink: cheap enough to do synchronously, and a drop cannot await.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A temporary file being filled, with the running size and MD5.
struct Spool {
    file: BufWriter<File>,
    hasher: Md5,
    size: u64,
    guard: FileGuard,
}

/// A completely written temporary file.
struct Spooled {
    guard: FileGuard,
    size: u64,
    etag: String,
}

impl Spool {
    async fn create(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(format!("{}.tmp", random_hex()));
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await?;
        Ok(Spool {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            hasher: Md5::new(),
            size: 0,
            guard: FileGuard::new(path),
        })
    }

    async fn write(&mut self, data: &[u8], limit: u64) -> Result<(), StoreError> {
        self.size = self.size.saturating_add(data.len() as u64);
        if self.size > limit {
            return Err(StoreError::TooLarge);
        }
        self.hasher.update(data);
        self.file.write_all(data).await?;
        Ok(())
    }

    async fn finish(mut self) -> Result<Spooled, StoreError> {
        // tokio's File writes in the background; flushing waits until the bytes reached the OS,
        // so a rename and a later open see all of them.
        self.file.flush().await?;
        let Spool { file, hasher, size, guard } = self;
        drop(file);
        Ok(Spooled { guard, size, etag: hex::encode(hasher.finalize()) })
    }
}

async fn remove_quietly(path: &Path) {
    if let Err(err) = tokio::fs::remove_file(path).await {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), cause = %err, "could not remove old object file");
        }
    }
}

// ---- streaming reads ------------------------------------------------------------------------

/// A byte range of one object file.
#[derive(Clone)]
struct Piece {
    path: PathBuf,
    offset: u64,
    len: u64,
}

/// An object as a GET sees it: a plain object is one piece, a DLO one piece per segment.
struct ObjectView {
    record: ObjectRecord,
    etag: String,
    size: u64,
    last_modified: SystemTime,
    pieces: Vec<Piece>,
    dlo: bool,
}

/// The pieces covering `len` bytes from `start` of the concatenation of `pieces`.
fn slice_pieces(pieces: &[Piece], start: u64, len: u64) -> VecDeque<Piece> {
    let end = start.saturating_add(len);
    let mut out = VecDeque::new();
    let mut pos = 0u64;
    for piece in pieces {
        let piece_start = pos;
        let piece_end = pos.saturating_add(piece.len);
        pos = piece_end;
        if piece.len == 0 || piece_end <= start {
            continue;
        }
        if piece_start >= end {
            break;
        }
        let from = start.max(piece_start);
        let to = end.min(piece_end);
        out.push_back(Piece { path: piece.path.clone(), offset: piece.offset + (from - piece_start), len: to - from });
    }
    out
}

type PieceReader = ReaderStream<tokio::io::Take<File>>;

struct PieceStream {
    current: Option<PieceReader>,
    pending: VecDeque<Piece>,
}

async fn open_piece(piece: &Piece) -> io::Result<PieceReader> {
    let mut file = File::open(&piece.path).await?;
    if piece.offset > 0 {
        file.seek(io::SeekFrom::Start(piece.offset)).await?;
    }
    Ok(ReaderStream::with_capacity(file.take(piece.len), CHUNK_SIZE))
}

async fn next_chunk(mut state: PieceStream) -> io::Result<Option<(Bytes, PieceStream)>> {
    loop {
        if let Some(current) = state.current.as_mut() {
            let item = current.next().await;
            match item {
                Some(Ok(bytes)) => return Ok(Some((bytes, state))),
                Some(Err(err)) => return Err(err),
                None => state.current = None,
            }
        }
        match state.pending.pop_front() {
            Some(piece) => state.current = Some(open_piece(&piece).await?),
            None => return Ok(None),
        }
    }
}

/// A body streaming `pieces` one after another, never holding more than a chunk in memory.
async fn open_stream(mut pieces: VecDeque<Piece>) -> io::Result<Body> {
    // The first file is opened before any header goes out, so a file removed by a concurrent
    // overwrite becomes a retry instead of a response cut short.
    let current = match pieces.pop_front() {
        Some(piece) => Some(open_piece(&piece).await?),
        None => None,
    };
    let state = PieceStream { current, pending: pieces };
    let frames = futures_util::stream::try_unfold(state, next_chunk)
        .map(|item| item.map(Frame::data).map_err(|err| Box::new(err) as BoxError));
    // Qualified: StreamBody is both a Body and a Stream, and both extension traits have `boxed`.
    Ok(BodyExt::boxed(StreamBody::new(frames)))
}

/// The objects a DLO manifest `<container>/<prefix>` points at, in name order.
fn dlo_segments<'a>(acct: &'a Account, manifest: &HeaderValue) -> Vec<&'a ObjectRecord> {
    let Some((container, prefix)) = parse_manifest(manifest) else {
        return Vec::new();
    };
    let Some(cont) = acct.containers.get(container.as_str()) else {
        return Vec::new();
    };
    cont.objects
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .take_while(|(name, _)| name.starts_with(prefix.as_str()))
        .map(|(_, record)| record)
        .collect()
}

/// Splits a (percent-encoded) `X-Object-Manifest` value into container and prefix.
fn parse_manifest(value: &HeaderValue) -> Option<(String, String)> {
    let decoded = percent_decode(value.as_bytes()).decode_utf8().ok()?;
    let (container, prefix) = decoded.split_once('/')?;
    if container.is_empty() {
        return None;
    }
    Some((container.to_owned(), prefix.to_owned()))
}

// ---- request parsing ------------------------------------------------------------------------

/// Decodes the path once, as Swift's WSGI layer does, then splits it: `%2F` is a `/`, `//` and a
/// trailing `/` in object names are kept, `+` stays a `+`.
fn parse_target(rest: &str) -> Result<Target, StoreError> {
    let decoded = percent_decode_str(rest).decode_utf8().map_err(|_| StoreError::PreconditionFailed(INVALID_NAME))?;
    if decoded.contains('\0') {
        return Err(StoreError::PreconditionFailed(INVALID_NAME));
    }
    let path: &str = &decoded;
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.is_empty() {
        return Ok(Target::Account);
    }
    let (container, object) = path.split_once('/').unwrap_or((path, ""));
    if container.is_empty() {
        // `/v1/AUTH_x//obj`: Swift's path split fails and the proxy answers 404.
        return Err(StoreError::NotFound);
    }
    if container.len() > MAX_CONTAINER_NAME_LENGTH {
        return Err(StoreError::BadRequest("Container name length longer than 256"));
    }
    if object.is_empty() {
        return Ok(Target::Container(container.to_owned()));
    }
    if object.len() > MAX_OBJECT_NAME_LENGTH {
        return Err(StoreError::BadRequest("Object name length longer than 1024"));
    }
    Ok(Target::Object(container.to_owned(), object.to_owned()))
}

/// Parses an `X-Copy-From` or `Destination` value: `[/]<container>/<object>`, percent-encoded.
fn parse_copy_path(value: &HeaderValue, malformed: &'static str) -> Result<(String, String), StoreError> {
    let decoded =
        percent_decode(value.as_bytes()).decode_utf8().map_err(|_| StoreError::PreconditionFailed(INVALID_NAME))?;
    if decoded.contains('\0') {
        return Err(StoreError::PreconditionFailed(INVALID_NAME));
    }
    let path: &str = &decoded;
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.split_once('/') {
        Some((container, object)) if !container.is_empty() && !object.is_empty() => {
            if container.len() > MAX_CONTAINER_NAME_LENGTH {
                return Err(StoreError::BadRequest("Container name length longer than 256"));
            }
            if object.len() > MAX_OBJECT_NAME_LENGTH {
                return Err(StoreError::BadRequest("Object name length longer than 1024"));
            }
            Ok((container.to_owned(), object.to_owned()))
        }
        _ => Err(StoreError::PreconditionFailed(malformed)),
    }
}

/// Cross-account copies would bypass the caller's token check, so they are refused.
fn check_same_account(headers: &HeaderMap, name: &str, account: &str) -> Result<(), StoreError> {
    match headers.get(name) {
        None => Ok(()),
        Some(value) => {
            let named = percent_decode(value.as_bytes()).decode_utf8_lossy();
            if named.trim() == account {
                Ok(())
            } else {
                Err(StoreError::Forbidden)
            }
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, StoreError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(StoreError::BadRequest("Invalid Content-Length header value")),
    }
}

fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|t| t.trim().eq_ignore_ascii_case("chunked")))
}

fn content_type_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned())
        .filter(|value| !value.is_empty())
}

fn header_is_true(value: Option<&HeaderValue>) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(config_true)
}

/// Swift's `config_true_value`.
fn config_true(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on" | "t" | "y")
}

/// Swift's metadata constraints for headers starting with `prefix`.
fn validate_meta(headers: &HeaderMap, prefix: &str) -> Result<(), StoreError> {
    for (name, value) in headers {
        if let Some(suffix) = name.as_str().strip_prefix(prefix) {
            if suffix.is_empty() {
                return Err(StoreError::BadRequest("Metadata name cannot be empty"));
            }
            if suffix.len() > MAX_META_NAME_LENGTH {
                return Err(StoreError::BadRequest("Metadata name too long; max 128"));
            }
            if value.len() > MAX_META_VALUE_LENGTH {
                return Err(StoreError::BadRequest("Metadata value longer than 256"));
            }
        }
    }
    Ok(())
}

fn validate_manifest(headers: &HeaderMap) -> Result<(), StoreError> {
    match headers.get(X_OBJECT_MANIFEST) {
        Some(value) if parse_manifest(value).is_none() => {
            Err(StoreError::BadRequest("X-Object-Manifest must be in the format container/prefix"))
        }
        _ => Ok(()),
    }
}

/// Sets, replaces and removes account or container metadata; an empty value removes, as in Swift.
fn apply_meta(target: &mut BTreeMap<String, HeaderValue>, headers: &HeaderMap, kind: &MetaKind) {
    for (name, value) in headers {
        let name = name.as_str();
        if let Some(suffix) = name.strip_prefix(kind.remove) {
            target.remove(&format!("{}{}", kind.set, suffix));
        } else if name.starts_with(kind.set) || kind.extra.contains(&name) {
            if value.is_empty() {
                target.remove(name);
            } else {
                target.insert(name.to_owned(), value.clone());
            }
        } else if let Some(rest) = name.strip_prefix("x-remove-") {
            let full = format!("x-{rest}");
            if kind.extra.contains(&full.as_str()) {
                target.remove(&full);
            }
        }
    }
}

fn object_meta_from(headers: &HeaderMap) -> BTreeMap<String, HeaderValue> {
    headers
        .iter()
        .filter(|(name, value)| {
            name.as_str().len() > OBJECT_META.len() && name.as_str().starts_with(OBJECT_META) && !value.is_empty()
        })
        .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
        .collect()
}

// ---- conditional requests and ranges ----------------------------------------------------------

enum Precondition {
    Proceed,
    NotModified,
}

/// RFC 9110 §13.2.2 order: If-Match / If-Unmodified-Since first, then If-None-Match /
/// If-Modified-Since. `etag` may be quoted (large objects); matching ignores the quotes.
fn evaluate_conditions(headers: &HeaderMap, etag: &str, last_modified: i64) -> Result<Precondition, StoreError> {
    let bare = etag.trim_matches('"');
    if let Some(value) = headers.get(header::IF_MATCH) {
        if !etag_list_matches(value, bare) {
            return Err(StoreError::PreconditionFailed(PRECONDITION_TEXT));
        }
    } else if let Some(since) = headers.get(header::IF_UNMODIFIED_SINCE).and_then(parse_http_date) {
        if last_modified > since {
            return Err(StoreError::PreconditionFailed(PRECONDITION_TEXT));
        }
    }
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        if etag_list_matches(value, bare) {
            return Ok(Precondition::NotModified);
        }
    } else if let Some(since) = headers.get(header::IF_MODIFIED_SINCE).and_then(parse_http_date) {
        if last_modified <= since {
            return Ok(Precondition::NotModified);
        }
    }
    Ok(Precondition::Proceed)
}

fn etag_list_matches(value: &HeaderValue, etag: &str) -> bool {
    let Ok(list) = value.to_str() else {
        return false;
    };
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.trim_start_matches("W/").trim_matches('"').eq_ignore_ascii_case(etag)
    })
}

enum ByteRange {
    Whole,
    /// First and last byte, inclusive.
    Span(u64, u64),
}

/// A single `bytes=` range. Syntactically invalid ranges are ignored (200), as Swift does;
/// multi-range requests get the whole object, which RFC 9110 §14.2 allows.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<ByteRange, StoreError> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(ByteRange::Whole);
    };
    let value = value.trim();
    let is_bytes = value.get(..6).is_some_and(|unit| unit.eq_ignore_ascii_case("bytes="));
    if !is_bytes {
        return Ok(ByteRange::Whole);
    }
    let specs: Vec<&str> = value[6..].split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let [spec] = specs.as_slice() else {
        return Ok(ByteRange::Whole);
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(ByteRange::Whole);
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else {
            return Ok(ByteRange::Whole);
        };
        if suffix == 0 || size == 0 {
            return Err(StoreError::RangeNotSatisfiable(size));
        }
        return Ok(ByteRange::Span(size - suffix.min(size), size - 1));
    }
    let Ok(start) = first.parse::<u64>() else {
        return Ok(ByteRange::Whole);
    };
    let end = if last.is_empty() {
        None
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => Some(end),
            _ => return Ok(ByteRange::Whole),
        }
    };
    if start >= size {
        return Err(StoreError::RangeNotSatisfiable(size));
    }
    let end = end.map_or(size - 1, |end| end.min(size - 1));
    Ok(ByteRange::Span(start, end))
}

// ---- listings -------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Format {
    Plain,
    Json,
    Xml,
}

impl Format {
    fn from_accept(headers: &HeaderMap) -> Self {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if accept.contains("application/json") {
            Format::Json
        } else if accept.contains("application/xml") || accept.contains("text/xml") {
            Format::Xml
        } else {
            Format::Plain
        }
    }
}

struct ListQuery {
    format: Format,
    limit: usize,
    marker: Option<String>,
    end_marker: Option<String>,
    prefix: String,
    delimiter: Option<char>,
    reverse: bool,
}

/// A non-empty query parameter (Swift treats `marker=` like no marker).
fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    body::form_get(params, key).filter(|value| !value.is_empty())
}

impl ListQuery {
    fn parse(params: &[(String, String)], headers: &HeaderMap) -> Result<Self, StoreError> {
        let format = match param(params, "format").map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Format::Json,
            Some("xml") => Format::Xml,
            Some("plain") | Some("text") => Format::Plain,
            _ => Format::from_accept(headers),
        };
        // Like Swift's container server: a non-numeric limit is ignored, a too large one refused.
        let limit = match param(params, "limit") {
            Some(value) if value.bytes().all(|b| b.is_ascii_digit()) => match value.parse::<usize>() {
                Ok(limit) if limit <= LISTING_LIMIT => limit,
                _ => return Err(StoreError::PreconditionFailed("Maximum limit is 10000")),
            },
            _ => LISTING_LIMIT,
        };
        let delimiter = match param(params, "delimiter") {
            None => None,
            Some(value) => {
                let mut chars = value.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if (c as u32) <= 254 => Some(c),
                    _ => return Err(StoreError::PreconditionFailed("Bad delimiter")),
                }
            }
        };
        Ok(ListQuery {
            format,
            limit,
            marker: param(params, "marker").map(str::to_owned),
            end_marker: param(params, "end_marker").map(str::to_owned),
            prefix: param(params, "prefix").unwrap_or("").to_owned(),
            delimiter,
            reverse: param(params, "reverse").is_some_and(config_true),
        })
    }
}

enum Pick<'a, V> {
    Item(&'a str, &'a V),
    Subdir(String),
}

/// Applies marker, end_marker, prefix, delimiter, reverse and limit to a name-ordered map.
/// With `reverse`, Swift swaps the roles: `marker` is the upper and `end_marker` the lower bound.
fn select<'a, V>(map: &'a BTreeMap<String, V>, q: &ListQuery) -> Vec<Pick<'a, V>> {
    let mut out = Vec::new();
    if q.limit == 0 {
        return out;
    }
    let prefix = q.prefix.as_str();
    // Only one bound comes from the request, so `range` can never see an inverted range.
    let entries: Box<dyn Iterator<Item = (&'a String, &'a V)> + 'a> = if q.reverse {
        let upper = match q.marker.as_deref() {
            Some(marker) => Bound::Excluded(marker),
            None => Bound::Unbounded,
        };
        Box::new(map.range::<str, _>((Bound::Unbounded, upper)).rev())
    } else {
        let lower = match q.marker.as_deref() {
            Some(marker) if marker >= prefix => Bound::Excluded(marker),
            _ => Bound::Included(prefix),
        };
        Box::new(map.range::<str, _>((lower, Bound::Unbounded)))
    };
    let mut last_subdir: Option<String> = None;
    for (name, value) in entries {
        let name = name.as_str();
        if q.reverse {
            if q.end_marker.as_deref().is_some_and(|end| name <= end) {
                break;
            }
            if !name.starts_with(prefix) {
                if name < prefix {
                    break;
                }
                continue;
            }
        } else {
            if q.end_marker.as_deref().is_some_and(|end| name >= end) {
                break;
            }
            if !name.starts_with(prefix) {
                // Iteration started at the prefix, so anything else is past its range.
                break;
            }
        }
        if let Some(delimiter) = q.delimiter {
            if let Some(at) = name[prefix.len()..].find(delimiter) {
                let subdir = &name[..prefix.len() + at + delimiter.len_utf8()];
                if last_subdir.as_deref() == Some(subdir) {
                    continue;
                }
                last_subdir = Some(subdir.to_owned());
                // Paging with `marker=<last subdir>` must not repeat that subdir.
                if q.marker.as_deref() == Some(subdir) {
                    continue;
                }
                out.push(Pick::Subdir(subdir.to_owned()));
                if out.len() >= q.limit {
                    break;
                }
                continue;
            }
        }
        out.push(Pick::Item(name, value));
        if out.len() >= q.limit {
            break;
        }
    }
    out
}

enum Row {
    Object { name: String, hash: String, bytes: u64, content_type: String, last_modified: SystemTime },
    Container { name: String, count: usize, bytes: u64, last_modified: SystemTime },
    Subdir(String),
}

impl Row {
    fn name(&self) -> &str {
        match self {
            Row::Object { name, .. } | Row::Container { name, .. } | Row::Subdir(name) => name,
        }
    }
}

#[derive(Clone, Copy)]
enum Owner<'a> {
    Account(&'a str),
    Container(&'a str),
}

fn render_listing(rows: &[Row], format: Format, owner: Owner<'_>, headers: HeaderMap) -> Response<Body> {
    let mut resp = match format {
        // Swift answers an empty plain listing with 204 but an empty JSON one with `200 []`.
        Format::Plain if rows.is_empty() => body::status(StatusCode::NO_CONTENT),
        Format::Plain => {
            let mut out = String::new();
            for row in rows {
                out.push_str(row.name());
                out.push('\n');
            }
            body::with_type(StatusCode::OK, "text/plain; charset=utf-8", out)
        }
        Format::Json => body::with_type(StatusCode::OK, "application/json; charset=utf-8", json_listing(rows)),
        Format::Xml => body::with_type(StatusCode::OK, "application/xml; charset=utf-8", xml_listing(rows, owner)),
    };
    resp.headers_mut().extend(headers);
    resp
}

fn json_listing(rows: &[Row]) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| match row {
            Row::Object { name, hash, bytes, content_type, last_modified } => serde_json::json!({
                "hash": hash,
                "last_modified": listing_date(*last_modified),
                "bytes": bytes,
                "name": name,
                "content_type": content_type
            }),
            Row::Container { name, count, bytes, last_modified } => serde_json::json!({
                "name": name,
                "count": count,
                "bytes": bytes,
                "last_modified": listing_date(*last_modified)
            }),
            Row::Subdir(dir) => serde_json::json!({ "subdir": dir }),
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

fn xml_listing(rows: &[Row], owner: Owner<'_>) -> String {
    let (tag, owner_name) = match owner {
        Owner::Account(name) => ("account", name),
        Owner::Container(name) => ("container", name),
    };
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = write!(out, "<{tag} name=\"{}\">", body::escape_html(owner_name));
    for row in rows {
        let _ = match row {
            Row::Object { name, hash, bytes, content_type, last_modified } => write!(
                out,
                "<object><name>{}</name><hash>{}</hash><bytes>{}</bytes><content_type>{}</content_type><last_modified>{}</last_modified></object>",
                body::escape_html(name),
                body::escape_html(hash),
                bytes,
                body::escape_html(content_type),
                listing_date(*last_modified)
            ),
            Row::Container { name, count, bytes, last_modified } => write!(
                out,
                "<container><name>{}</name><count>{}</count><bytes>{}</bytes><last_modified>{}</last_modified></container>",
                body::escape_html(name),
                count,
                bytes,
                listing_date(*last_modified)
            ),
            Row::Subdir(dir) => {
                let dir = body::escape_html(dir);
                write!(out, "<subdir name=\"{dir}\"><name>{dir}</name></subdir>")
            }
        };
    }
    let _ = write!(out, "</{tag}>");
    out
}

// ---- response headers -----------------------------------------------------------------------

fn reply(status: StatusCode, headers: HeaderMap) -> Response<Body> {
    let mut resp = body::status(status);
    *resp.headers_mut() = headers;
    resp
}

/// Headers of a bodiless 201/202, which Swift sends with an explicit zero length.
fn zero_length() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers
}

/// Inserts a header built from stored text; text no header can carry is left out, not panicked on.
fn put_str(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
        headers.insert(name, value);
    }
}

fn put_meta(headers: &mut HeaderMap, meta: &BTreeMap<String, HeaderValue>) {
    for (name, value) in meta {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.insert(name, value.clone());
        }
    }
}

fn account_headers(acct: &Account) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("x-account-container-count"), HeaderValue::from(acct.containers.len()));
    headers.insert(HeaderName::from_static("x-account-object-count"), HeaderValue::from(acct.object_count()));
    headers.insert(HeaderName::from_static("x-account-bytes-used"), HeaderValue::from(acct.bytes_used()));
    put_str(&mut headers, HeaderName::from_static(X_TIMESTAMP), &x_timestamp(acct.created));
    put_meta(&mut headers, &acct.meta);
    headers
}

fn container_headers(cont: &Container) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("x-container-object-count"), HeaderValue::from(cont.objects.len()));
    headers.insert(HeaderName::from_static("x-container-bytes-used"), HeaderValue::from(cont.bytes_used()));
    headers.insert(HeaderName::from_static("x-storage-policy"), HeaderValue::from_static("Policy-0"));
    put_str(&mut headers, HeaderName::from_static(X_TIMESTAMP), &x_timestamp(cont.created));
    put_meta(&mut headers, &cont.meta);
    headers
}

/// Everything a GET/HEAD/304 of the object carries except Content-Length and Content-Range.
fn object_headers(view: &ObjectView) -> HeaderMap {
    let record = &view.record;
    let mut headers = HeaderMap::new();
    put_str(&mut headers, header::CONTENT_TYPE, &record.content_type);
    put_str(&mut headers, header::ETAG, &view.etag);
    put_str(&mut headers, header::LAST_MODIFIED, &http_date(view.last_modified));
    put_str(&mut headers, HeaderName::from_static(X_TIMESTAMP), &x_timestamp(record.last_modified));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    put_meta(&mut headers, &record.user_meta);
    if let Some(value) = &record.content_encoding {
        headers.insert(header::CONTENT_ENCODING, value.clone());
    }
    if let Some(value) = &record.content_disposition {
        headers.insert(header::CONTENT_DISPOSITION, value.clone());
    }
    if let Some(value) = &record.manifest {
        headers.insert(HeaderName::from_static(X_OBJECT_MANIFEST), value.clone());
    }
    headers
}

// ---- time and ids ---------------------------------------------------------------------------

/// Whole seconds, rounded up as Swift does for Last-Modified, so a client that stores the header
/// and sends it back in If-Modified-Since gets a 304.
fn unix_seconds_ceil(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX).saturating_add(i64::from(d.subsec_nanos() > 0)),
        Err(_) => 0,
    }
}

/// `Sun, 22 Nov 2026 11:03:58 GMT`.
fn http_date(t: SystemTime) -> String {
    OffsetDateTime::from_unix_timestamp(unix_seconds_ceil(t))
        .ok()
        .and_then(|dt| {
            dt.format(format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Unix seconds of an IMF-fixdate header; other (obsolete) date forms are ignored.
fn parse_http_date(value: &HeaderValue) -> Option<i64> {
    let text = value.to_str().ok()?;
    PrimitiveDateTime::parse(
        text.trim(),
        format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"),
    )
    .ok()
    .map(|dt| dt.assume_utc().unix_timestamp())
}

/// `2026-11-22T11:03:58.123456`, the listing format.
fn listing_date(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]"))
        .unwrap_or_default()
}

/// Swift's `X-Timestamp`: seconds with five decimals.
fn x_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:05}", d.as_secs(), d.subsec_micros() / 10)
}

/// `tx` + 21 hex digits + `-` + hex Unix time, Swift's transaction id shape.
fn new_trans_id() -> String {
    let random: u128 = rand::random();
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("tx{:021x}-{:010x}", random >> 44, secs)
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
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
}
