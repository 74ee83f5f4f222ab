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

mod accounts;
mod conditions;
mod errors;
mod files;
mod listing;
mod names;
mod objects;
mod replies;

use accounts::*;
use conditions::*;
use errors::*;
use files::*;
use listing::*;
use names::*;
use replies::*;

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

#[cfg(test)]
mod tests;
