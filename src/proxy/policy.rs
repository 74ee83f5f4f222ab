//! The proxy's policy: what crosses the gateway and what does not, said once for both engines.
//!
//! The hyper engine ([`super::forward`]) and the fast engine ([`super::fast`]) are drivers:
//! they frame bytes, hold connections and wait on sockets, and ask this module every question
//! whose answer a client or an upstream could tell apart:
//! - which request and answer header fields cross, and which the gateway adds;
//! - how an absolute `Location` pointing at upstream is rewritten to the gateway;
//! - how a body is kept for a replay or held behind `100 Continue`;
//! - when an upstream `401` renews the token and retries, and when a dead parked connection
//!   sends the request again;
//! - which timeout bounds which wait;
//! - the Swift-style error answers the gateway gives in upstream's stead.
//!
//! Nothing here allocates on the way of an ordinary request, formats, or locks.

use std::time::Duration;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::config::ProxySettings;
use crate::target::Target;

/// The client's gateway token (also the upstream token's field).
pub const X_AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");
/// The older name of [`X_AUTH_TOKEN`], still sent by some clients.
pub const X_STORAGE_TOKEN: HeaderName = HeaderName::from_static("x-storage-token");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The least life a token must have left to start a request with; a request is not retried
/// once upstream has accepted it, and some (bulk delete, SLO) use the token for seconds.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(2);

/// Longest time spent reading and discarding a rejected upload.
pub const DRAIN_TIME: Duration = Duration::from_secs(60);

/// Most bytes read and discarded from a rejected upload.
pub const DRAIN_LIMIT: u64 = 256 * 1024 * 1024;

/// How often a request goes again after the parked connection it went on turned out dead. A
/// worker parks a handful of connections per origin, and a fresh one ends the series.
const RESENDS: u32 = 4;

/// `Some` of the literal that `$name` equals, as a `&'static str`, so a header can be removed
/// by it without cloning the (possibly allocated) name found in the map.
macro_rules! one_of {
    ($name:expr, $($n:literal)|+) => {
        match $name {
            $($n => Some($n),)+
            _ => None,
        }
    };
}

/// Hop-by-hop header fields (RFC 9110 §7.6.1): never forwarded, either way.
fn hop_by_hop(name: &str) -> Option<&'static str> {
    one_of!(name, "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "transfer-encoding" | "upgrade")
}

/// Further request fields that never travel upstream: the gateway's own token and its users'
/// credentials (v1.0 auth headers, Basic), `Host` and `Expect` (set by the gateway), proxy
/// credentials, and every client-supplied field that claims to say who the client is or which
/// address it used, which upstream might believe (the gateway sends `X-Forwarded-For` and
/// `X-Forwarded-Proto` of its own).
fn dropped_from_requests(name: &str) -> Option<&'static str> {
    one_of!(
        name,
        "proxy-authorization"
            | "authorization"
            | "x-auth-user"
            | "x-auth-key"
            | "x-storage-user"
            | "x-storage-pass"
            | "host"
            | "expect"
            | "x-auth-token"
            | "x-storage-token"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-server"
            | "x-forwarded-prefix"
            | "x-forwarded-ssl"
            | "x-forwarded-scheme"
            | "x-original-forwarded-for"
            | "x-real-ip"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
    )
}

/// Fields the gateway reads for the request's framing, whose `_` spelling must not reach
/// upstream either: a WSGI server reads `Content_Length` as `Content-Length`'s variable.
fn framing(name: &str) -> Option<&'static str> {
    one_of!(name, "content-length")
}

/// Maps a field-name byte to how the gateway compares names: ASCII letters in lower case, and
/// `_` as `-`, since a WSGI server (Swift's) maps both to the same `HTTP_…` variable.
const NORMAL: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            c @ b'A'..=b'Z' => c + 32,
            b'_' => b'-',
            c => c,
        };
        b += 1;
    }
    table
};

/// `name` as the gateway compares request field names (see [`NORMAL`]), in `into`, if it fits:
/// no field the gateway strips or reads is longer than 32 bytes.
pub fn normalized<'a>(name: &str, into: &'a mut [u8; 32]) -> Option<&'a str> {
    mapped(name, into, |b| NORMAL[usize::from(b)])
}

/// `name` in ASCII lower case, in `into`, if it fits: how answer fields and the fields that frame
/// a request are compared, where `_` is not `-`.
pub fn lowered<'a>(name: &str, into: &'a mut [u8; 32]) -> Option<&'a str> {
    mapped(name, into, |b| b.to_ascii_lowercase())
}

/// `name` with each byte passed through `map`, which changes ASCII bytes into ASCII bytes only,
/// in `into`. Every header line goes through here, so it does not validate again what `name`
/// already is: checking the copy as UTF-8 cost a tenth of the fast engine's own instructions.
#[inline(always)]
fn mapped<'a>(name: &str, into: &'a mut [u8; 32], map: impl Fn(u8) -> u8) -> Option<&'a str> {
    let into = into.get_mut(..name.len())?;
    for (to, &from) in into.iter_mut().zip(name.as_bytes()) {
        *to = map(from);
    }
    // SAFETY: `into` is `name`, valid UTF-8, with ASCII bytes replaced by ASCII bytes (both maps
    // leave bytes of 0x80 and above alone); an ASCII byte never occurs inside a multi-byte
    // sequence, so the copy is valid UTF-8 too.
    Some(unsafe { std::str::from_utf8_unchecked(into) })
}

/// True when the field name `raw` has a `_`: a field the gateway reads, so written, is an alias
/// that is not read and never crosses.
pub fn underscored(raw: &str) -> bool {
    raw.as_bytes().contains(&b'_')
}

/// Further answer fields that never reach the client.
fn dropped_from_answers(name: &str) -> Option<&'static str> {
    one_of!(name, "proxy-authenticate")
}

/// True when a client's request field whose name is `name` once [`normalized`] goes upstream
/// as sent. `_` counts as `-` here, so `X_Auth_Token` and `X_Forwarded_For` stay behind too.
/// `raw` is the name as sent: `Content_Length` stays behind, but not `Content-Length`.
pub fn request_field_crosses(name: &str, raw: &str) -> bool {
    hop_by_hop(name).is_none()
        && dropped_from_requests(name).is_none()
        && !(framing(name).is_some() && underscored(raw))
}

/// True when an upstream answer's field named `name` (in lower case) reaches the client.
pub fn answer_field_crosses(name: &str) -> bool {
    hop_by_hop(name).is_none() && dropped_from_answers(name).is_none()
}

/// Removes from a client's request what never travels upstream (see [`strip`]), and the `_`
/// spellings of those fields and of the framing ones (see [`request_field_crosses`]).
pub fn strip_request_headers(headers: &mut HeaderMap) {
    strip_underscored(headers, dropped_from_requests);
    strip(headers, dropped_from_requests);
}

/// Removes from upstream's answer what never reaches the client (see [`strip`]).
pub fn strip_response_headers(headers: &mut HeaderMap) {
    strip(headers, dropped_from_answers);
}

/// Removes the hop-by-hop fields, those that `Connection` names, and those `extra` picks.
/// Each pass finds one name to remove among the names present: a request carries a handful
/// and loses one or two, so this allocates nothing unless `Connection` lists fields (looking
/// up every name that might have to go cost more than the rest of a request's header work, and
/// collecting the names to remove cost an allocation, and another for each that was cloned).
fn strip(headers: &mut HeaderMap, extra: fn(&str) -> Option<&'static str>) {
    // What `Connection` lists goes first, while it is still there to say what it lists.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let name = name.as_str();
                headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|token| token.trim().eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    while let Some(name) = headers.keys().find_map(|name| hop_by_hop(name.as_str()).or_else(|| extra(name.as_str()))) {
        headers.remove(name);
    }
}

/// Removes the fields whose name, with `_` read as `-` (see [`NORMAL`]), is one [`strip`]
/// removes or the gateway frames the request by. A field name with `_` is rare, so the common
/// case costs a scan of the names.
fn strip_underscored(headers: &mut HeaderMap, extra: fn(&str) -> Option<&'static str>) {
    if !headers.keys().any(|name| underscored(name.as_str())) {
        return;
    }
    let mut into = [0u8; 32];
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|name| underscored(name.as_str()))
        .filter(|name| {
            normalized(name.as_str(), &mut into)
                .is_some_and(|n| hop_by_hop(n).or_else(|| extra(n)).or_else(|| framing(n)).is_some())
        })
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
}

/// True for the methods the gateway forwards: every one but `TRACE` and `TRACK`, which an
/// upstream may answer by echoing the request, the upstream token included, and `CONNECT`,
/// which asks for a tunnel. Swift's own methods (`GET`, `HEAD`, `PUT`, `POST`, `DELETE`,
/// `COPY`, `OPTIONS`) and any extension method a middleware may serve pass.
pub fn method_forwarded(method: &http::Method) -> bool {
    !matches!(method.as_str(), "TRACE" | "TRACK" | "CONNECT")
}

/// The answer to a method the gateway does not forward (see [`method_forwarded`]).
pub fn method_refused() -> Response<Body> {
    let mut resp = body::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, COPY, OPTIONS"));
    resp
}

/// The client's gateway token among a request's fields: `X-Auth-Token`, else `X-Storage-Token`.
pub fn client_token(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(X_AUTH_TOKEN).or_else(|| headers.get(X_STORAGE_TOKEN))
}

/// How a request's body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// There is none.
    Bodiless,
    /// At most the replay buffer: sent as it comes and kept meanwhile, so that a `401` can
    /// send it again.
    Kept,
    /// Larger, or of unknown length: sent with `Expect: 100-continue` and held back until
    /// upstream answers `100`, so that a `401` (which Swift sends before `100`) costs no byte.
    Gated,
}

/// Which wait a timeout bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Connecting, sending the head, and the answer's head after the whole body is sent. An
    /// upload has no total time limit: this starts once its body is sent.
    AnswerHead,
    /// Upstream's `100 Continue`, after which the body goes anyway (RFC 9110 lets a client stop
    /// waiting).
    Continue,
    /// A body's next chunk, in either direction.
    Idle,
}

/// Why an upstream attempt produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made.
    Unreachable,
    /// The connection failed before a complete answer head arrived.
    Broken,
    /// A reused connection was closed by upstream without a byte of answer; see
    /// [`Policy::resends`].
    Stale,
    /// No answer head within the header timeout.
    Timeout,
    /// The client's body could not be read: malformed chunked framing (a size of `-5`, `0x5`,
    /// an overlong one), or the client broke off. The client's fault, so `400`, and upstream,
    /// which got part of a body, sees its request end without one.
    ClientBody,
    /// The client's body went idle for the idle timeout: `408`, as Swift answers it.
    ClientIdle,
}

impl Failure {
    /// The Swift-style error page the client gets.
    pub fn response(self) -> Response<Body> {
        let (status, page) = self.page();
        body::html(status, page)
    }

    /// The status and HTML page of [`response`](Self::response).
    pub fn page(self) -> (StatusCode, String) {
        let (status, what) = match self {
            Failure::Unreachable => (StatusCode::SERVICE_UNAVAILABLE, "upstream storage is unreachable"),
            Failure::Broken | Failure::Stale => (StatusCode::BAD_GATEWAY, "upstream storage failed to answer"),
            Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream storage did not answer in time"),
            Failure::ClientBody => (StatusCode::BAD_REQUEST, "the request's body was malformed or broke off"),
            Failure::ClientIdle => (StatusCode::REQUEST_TIMEOUT, "the request's body stopped coming"),
        };
        let reason = status.canonical_reason().unwrap_or("Error");
        (status, format!("<html><h1>{reason}</h1><p>{what}.</p></html>"))
    }
}

/// Swift's answer to a path that is not UTF-8, as it gives it. hyper's parser refuses such a
/// request target with `400` before any handler runs; the fast engine reads heads first and
/// answers this instead (see `docs/proxy.md`).
pub const INVALID_PATH: (StatusCode, &str) = (StatusCode::PRECONDITION_FAILED, "Invalid UTF8 or contains NULL");

/// What `Connection` field values ask for: to close, to keep alive (which the answer repeats,
/// as Swift's does), and whether they name anything else (fields to drop).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `close` was named.
    pub close: bool,
    /// `keep-alive` was named.
    pub keep_alive: bool,
    /// Some other option was named.
    pub others: bool,
}

impl ConnectionOptions {
    /// These options with what the field value `value` names.
    pub fn with(mut self, value: &[u8]) -> ConnectionOptions {
        for option in value.split(|&b| b == b',') {
            let option = option.trim_ascii();
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !option.is_empty() {
                self.others = true;
            }
        }
        self
    }

    /// These options, if they name nothing but `close` and `keep-alive` (the fast engine
    /// leaves fields to drop to the hyper engine).
    pub fn only_known(self) -> Option<ConnectionOptions> {
        (!self.others).then_some(self)
    }

    /// Keep-alive asked for, and not close: Swift then says `Connection: keep-alive` in its
    /// answer, and so do both engines.
    pub fn keeps_alive(self) -> bool {
        self.keep_alive && !self.close
    }
}

/// Whether the client's `Connection` fields ask to keep the connection (see
/// [`ConnectionOptions::keeps_alive`]).
pub fn asks_keep_alive(headers: &HeaderMap) -> bool {
    let values = headers.get_all(header::CONNECTION);
    values.iter().fold(ConnectionOptions::default(), |o, v| o.with(v.as_bytes())).keeps_alive()
}

/// True unless `Transfer-Encoding` names a coding other than `chunked`. hyper takes
/// `gzip, chunked` apart as chunked and hands over the compressed bytes: sent on, they would be
/// stored as the object's content. Swift answers such a request with [`unknown_coding`].
pub fn only_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .all(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The answer to a transfer coding other than `chunked`, as Swift gives it.
pub fn unknown_coding() -> Response<Body> {
    body::text(StatusCode::NOT_IMPLEMENTED, "transfer codings other than chunked are not implemented\n")
}

/// The answer to a storage request for `path`, which the account's storage path (`target`)
/// does not cover, as Swift answers such paths: `404` when the path starts with an empty
/// segment (`//v1/AUTH_x`), `412 Bad URL` when it names no account (`/v1`), else `403`, for a
/// gateway token used on another account's path.
pub fn misdirected(path: &str, target: &Target) -> Response<Body> {
    if path.starts_with("//") {
        body::html(StatusCode::NOT_FOUND, "<html><h1>Not Found</h1><p>The resource could not be found.</p></html>")
    } else if target.path.strip_prefix(path).is_some_and(|rest| rest.starts_with('/') || path.ends_with('/')) {
        body::text(StatusCode::PRECONDITION_FAILED, "Bad URL")
    } else {
        body::text(StatusCode::FORBIDDEN, "this token is not valid for that account\n")
    }
}

/// The proxy's settings, and what follows from them and from the gateway's public address.
#[derive(Debug)]
pub struct Policy {
    settings: ProxySettings,
    /// The gateway's `scheme://host[:port]`, no path.
    public_origin: String,
    forwarded_proto: HeaderValue,
    expect_continue: HeaderValue,
}

impl Policy {
    /// The policy of a gateway answering as `public_url`.
    pub fn new(settings: ProxySettings, public_url: &str) -> Policy {
        let proto = if public_url.starts_with("https://") { "https" } else { "http" };
        Policy {
            settings,
            public_origin: public_url.trim_end_matches('/').to_owned(),
            forwarded_proto: HeaderValue::from_static(proto),
            expect_continue: HeaderValue::from_static("100-continue"),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// The gateway's `scheme://host[:port]`.
    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }

    /// Hands `add` each field the gateway adds to a request it sends to `target`, beside
    /// those of [`request_field_crosses`]: `Expect` for a [`Replay::Gated`] body, `Host`, the
    /// upstream token when the request is `authenticated` (an anonymous one goes without), and
    /// the forwarding fields, `forwarded_for` being the client's address. Each comes as its
    /// name, the same name as the bytes a head is written with, and its value.
    #[inline]
    pub fn add_fields<'a>(
        &'a self,
        target: &'a Target,
        forwarded_for: &'a HeaderValue,
        replay: Replay,
        authenticated: bool,
        mut add: impl FnMut(HeaderName, &'static [u8], &'a HeaderValue),
    ) {
        if replay == Replay::Gated {
            add(header::EXPECT, b"expect", &self.expect_continue);
        }
        add(header::HOST, b"host", &target.host);
        if authenticated {
            add(X_AUTH_TOKEN, b"x-auth-token", &target.token);
        }
        add(X_FORWARDED_FOR, b"x-forwarded-for", forwarded_for);
        add(X_FORWARDED_PROTO, b"x-forwarded-proto", &self.forwarded_proto);
    }

    /// How a body goes upstream, given whether there is one and its declared length.
    pub fn replay(&self, has_body: bool, length: Option<u64>) -> Replay {
        match length {
            _ if !has_body => Replay::Bodiless,
            Some(n) if n <= self.settings.replay_buffer => Replay::Kept,
            _ => Replay::Gated,
        }
    }

    /// How much of a body an attempt keeps for a replay: the replay buffer on the first, nothing
    /// on the retry (there is no second one).
    pub fn replay_budget(&self, retried: bool) -> u64 {
        if retried {
            0
        } else {
            self.settings.replay_buffer
        }
    }

    /// Whether an upstream answer of `status` renews the upstream token and sends the request
    /// again: a `401`, on an account whose credentials can be renewed (`renewable`; anonymous
    /// requests and static tokens cannot), on the first attempt, when the whole request can
    /// still be sent (`replayable`: no body, or all of it kept or unsent). Every other `401`
    /// reaches the client.
    pub fn renews(&self, status: u16, renewable: bool, retried: bool, replayable: bool) -> bool {
        status == 401 && renewable && !retried && replayable
    }

    /// Whether a request goes again on another connection after the parked one it went on
    /// closed without a byte of answer (upstream's keep-alive timeout raced it): when its
    /// method is idempotent and none of its body left (`body_sent` false), for at most a few
    /// times. A `POST` that upstream may have acted on before closing is not sent twice.
    pub fn resends(&self, method: &http::Method, body_sent: bool, resent: u32) -> bool {
        method.is_idempotent() && !body_sent && resent < RESENDS
    }

    /// How long `wait` may last.
    pub fn timeout(&self, wait: Wait) -> Duration {
        match wait {
            Wait::AnswerHead => self.settings.header_timeout,
            Wait::Continue => self.settings.expect_timeout,
            Wait::Idle => self.settings.idle_timeout,
        }
    }

    /// An absolute location upstream wrote (`Location`, `Content-Location`) made to point at
    /// the gateway, when it points at `target`'s origin.
    pub fn relocated(&self, location: &str, target: &Target) -> Option<String> {
        let rest = location.strip_prefix(&*target.origin)?;
        // The origin must end there: `https://up.example.evil/` is not `https://up.example`.
        (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then(|| format!("{}{rest}", self.public_origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_removes_exactly_what_must_not_be_forwarded() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Foo"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "listed in Connection"),
            ("te", "trailers"),
            ("host", "gateway:8080"),
            ("x-auth-token", "AUTH_gateway"),
            ("x-storage-token", "AUTH_gateway"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("proxy-authorization", "Basic eA=="),
            ("authorization", "Basic dTprZXk="),
            ("x-auth-user", "alice"),
            ("x-auth-key", "the gateway key"),
            ("x-storage-user", "alice"),
            ("x-storage-pass", "the gateway key"),
            ("x-object-meta-color", "blue"),
            ("content-type", "text/plain"),
            ("x-foobar", "not listed"),
        ] {
            h.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let mut response = h.clone();
        strip_request_headers(&mut h);
        let mut kept: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["content-type", "x-foobar", "x-object-meta-color"]);
        strip_response_headers(&mut response);
        assert!(response.contains_key("x-auth-token") && !response.contains_key("x-foo"));
        assert!(!response.contains_key("connection") && !response.contains_key("te"));
    }

    #[test]
    fn the_line_rules_agree_with_the_map_rules() {
        let mut into = [0u8; 32];
        for name in [
            "x-auth-token",
            "host",
            "te",
            "x-object-meta-a",
            "x_object_meta_a",
            "proxy-authenticate",
            "content-length",
            "content_length",
            "x_auth_token",
            "x_forwarded_for",
            "x-real-ip",
            "true_client_ip",
            "x-forwarded-prefix",
            "transfer_encoding",
            "keep_alive",
        ] {
            let mut map = HeaderMap::new();
            map.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
            let mut answer = map.clone();
            strip_request_headers(&mut map);
            strip_response_headers(&mut answer);
            let normal = normalized(name, &mut into).expect("short");
            assert_eq!(request_field_crosses(normal, name), map.contains_key(name), "{name} in a request");
            if !underscored(name) {
                assert_eq!(answer_field_crosses(name), answer.contains_key(name), "{name} in an answer");
            }
        }
    }

    #[test]
    fn aliases_and_forwarding_claims_stay_behind() {
        let mut into = [0u8; 32];
        for raw in ["X_Auth_Token", "X_Forwarded_For", "X-Real-IP", "True-Client-IP", "Content_Length", "X_Real_Ip"] {
            let normal = normalized(raw, &mut into).expect("short");
            assert!(!request_field_crosses(normal, raw), "{raw}");
        }
        for raw in ["Content-Length", "X_Object_Meta_Color", "X-Object-Meta-Color"] {
            let normal = normalized(raw, &mut into).expect("short");
            assert!(request_field_crosses(normal, raw), "{raw}");
        }
        assert_eq!(normalized("X_Auth-TOKEN", &mut into), Some("x-auth-token"));
        assert_eq!(normalized("X-Métadonnée_Ü", &mut into), Some("x-métadonnée-Ü"));
        assert_eq!(normalized(&"x".repeat(33), &mut into), None);
    }

    #[test]
    fn trace_track_and_connect_are_refused() {
        for (method, forwarded) in
            [("GET", true), ("COPY", true), ("UPDATE", true), ("TRACE", false), ("CONNECT", false)]
        {
            let method = http::Method::from_bytes(method.as_bytes()).expect("a method");
            assert_eq!(method_forwarded(&method), forwarded, "{method}");
        }
    }

    #[test]
    fn bodies_up_to_the_replay_buffer_are_kept_and_larger_ones_gated() {
        let policy = Policy::new(ProxySettings { replay_buffer: 10, ..ProxySettings::default() }, "http://gw");
        assert_eq!(policy.replay(false, Some(0)), Replay::Bodiless);
        assert_eq!(policy.replay(true, Some(10)), Replay::Kept);
        assert_eq!(policy.replay(true, Some(11)), Replay::Gated);
        assert_eq!(policy.replay(true, None), Replay::Gated);
    }

    #[test]
    fn only_a_first_replayable_401_on_a_renewable_account_renews() {
        let policy = Policy::new(ProxySettings::default(), "http://gw");
        assert!(policy.renews(401, true, false, true));
        assert!(!policy.renews(403, true, false, true));
        assert!(!policy.renews(401, false, false, true));
        assert!(!policy.renews(401, true, true, true));
        assert!(!policy.renews(401, true, false, false));
    }

    #[test]
    fn only_idempotent_requests_whose_body_stayed_go_again_on_a_dead_connection() {
        let policy = Policy::new(ProxySettings::default(), "http://gw");
        assert!(policy.resends(&http::Method::GET, false, 0));
        assert!(policy.resends(&http::Method::PUT, false, RESENDS - 1));
        assert!(!policy.resends(&http::Method::PUT, false, RESENDS));
        assert!(!policy.resends(&http::Method::PUT, true, 0));
        assert!(!policy.resends(&http::Method::POST, false, 0));
    }

    #[test]
    fn paths_outside_the_account_get_swifts_answers() {
        let target = target_of("https://up.example/v1/AUTH_a");
        for (path, status) in [
            ("//v1/AUTH_a", StatusCode::NOT_FOUND),
            ("/v1", StatusCode::PRECONDITION_FAILED),
            ("/v1/", StatusCode::PRECONDITION_FAILED),
            ("/v1/AUTH_b", StatusCode::FORBIDDEN),
            ("/v1/AUTH_ab", StatusCode::FORBIDDEN),
            ("/v", StatusCode::FORBIDDEN),
        ] {
            assert_eq!(misdirected(path, &target).status(), status, "{path}");
        }
    }

    fn target_of(endpoint: &str) -> Target {
        let creds = crate::provider::SwiftCredentials {
            token: crate::secret::Secret::new("tk"),
            endpoint: endpoint.into(),
            expires: std::time::SystemTime::now(),
        };
        Target::parse(&creds).expect("a valid target")
    }

    #[test]
    fn locations_are_rewritten_only_on_the_upstream_origin() {
        let policy = Policy::new(ProxySettings::default(), "https://gw.example/");
        let target = target_of("https://up.example/v1/AUTH_a");
        assert_eq!(policy.relocated("https://up.example/v1/x", &target).as_deref(), Some("https://gw.example/v1/x"));
        assert_eq!(policy.relocated("https://up.example", &target).as_deref(), Some("https://gw.example"));
        assert_eq!(policy.relocated("https://up.example.evil/v1/x", &target), None);
        assert_eq!(policy.relocated("/v1/x", &target), None);
    }
}
