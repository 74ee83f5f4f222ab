//! Heads on the fast path: which requests it takes, and the request and answer heads
//! rewritten in place, line by line, with the fields that never cross left out.

use super::*;

impl FastPath<'_> {
    /// Parses the request head at the start of `buf` and, when the fast path takes it, writes
    /// the head upstream gets into `out` (which holds anything on a decline).
    pub(super) fn look(&self, auth: &impl Authority, buf: &[u8], peer: &Peer, out: &mut Vec<u8>) -> Look {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_REQUEST_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, &mut fields) {
            // hyper answers a head over the limit with 431.
            Ok(httparse::Status::Complete(n)) if n <= crate::server::MAX_HEAD => n,
            Ok(httparse::Status::Partial) if buf.len() < crate::server::MAX_HEAD => return Look::Partial,
            Err(httparse::Error::Token) => return invalid_path(buf),
            _ => return Look::Decline,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Look::Decline };
        let (head_request, put) = match method {
            "GET" => (false, false),
            "HEAD" => (true, false),
            "PUT" => (false, true),
            _ => return Look::Decline,
        };
        // `http` takes a URI of up to 65 534 bytes (414 beyond).
        if target.len() >= usize::from(u16::MAX) {
            return Look::Decline;
        }
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        // Origin form, in the characters `http`'s URI parser accepts unquoted (hyper refuses
        // others with 400, so they go to hyper).
        if !path.starts_with('/') || !target.bytes().all(plain_target_byte) {
            return Look::Decline;
        }
        if !auth.is_storage(path) {
            return own(req.headers, head_len, head_request, method, path);
        }
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut token = None;
        let mut storage_token = None;
        let mut options = ConnectionOptions::default();
        let mut length = None;
        let mut lower = [0u8; 32];
        let mut lines = Lines::new(buf);
        for field in req.headers.iter() {
            let name = policy::normalized(field.name, &mut lower);
            match name {
                // A `_` spelling of a field the gateway reads is not read, and stays behind.
                Some(
                    "content-length" | "transfer-encoding" | "expect" | "upgrade" | "connection" | "x-auth-token"
                    | "x-storage-token",
                ) if policy::underscored(field.name) => {}
                Some("content-length") if put => {
                    let Some(n) = content_length(field.value) else { return Look::Decline };
                    match length {
                        Some(l) if l != n => return Look::Decline,
                        // One `Content-Length` upstream, as hyper sends it.
                        Some(_) => {
                            lines.flush(out);
                            continue;
                        }
                        None => length = Some(n),
                    }
                }
                Some("content-length" | "transfer-encoding" | "expect" | "upgrade") => return Look::Decline,
                Some("connection") => match options.with(field.value).only_known() {
                    Some(o) => options = o,
                    None => return Look::Decline,
                },
                Some("x-auth-token") if token.is_none() => token = Some(field.value),
                Some("x-storage-token") if storage_token.is_none() => storage_token = Some(field.value),
                _ => {}
            }
            if name.is_some_and(|n| !policy::request_field_crosses(n, field.name)) {
                lines.flush(out);
            } else {
                lines.keep(out, field);
            }
        }
        lines.flush(out);
        let Some(token) = token.or(storage_token).and_then(|t| std::str::from_utf8(t).ok()) else {
            return Look::Decline;
        };
        let Some((user, account)) = auth.holder_of(token) else { return Look::Decline };
        let Some(cached) = auth.tokens().ready(account, TOKEN_MARGIN) else { return Look::Decline };
        let target_of = &cached.target;
        if !target_of.covers(path) {
            return Look::Decline;
        }
        let replay = length.map_or(Replay::Bodiless, |len| self.policy.replay(len > 0, Some(len)));
        let upload = match length {
            Some(len) => Some(Upload { len, kept: replay != Replay::Gated }),
            _ if put => return Look::Decline,
            _ => None,
        };
        self.policy.add_fields(target_of, &peer.forwarded_for, replay, true, |_, name, value| {
            push_field(out, name, value.as_bytes());
        });
        out.extend_from_slice(b"\r\n");
        let (close, keep_alive) = (options.close, options.keeps_alive());
        Look::Take(Taken { head_len, head_request, upload, close, keep_alive, user, cached })
    }

    /// The client's answer head from upstream's (`head`), written into `out`, saying
    /// `connection: close` if `close`; `None` for an answer the fast path leaves to the proxy
    /// (see the module's description).
    pub(super) fn client_head(
        &self,
        head: &[u8],
        taken: &Taken,
        close: bool,
        target: &crate::target::Target,
        out: &mut Vec<u8>,
    ) -> Option<Answer> {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, head, &mut fields).ok()?;
        let code = resp.code?;
        // A 401 before an upload's body is declined earlier (see `FastPath::upload`); after it,
        // the proxy could not send the body again either, so it goes to the client.
        if !(200..=599).contains(&code) || self.policy.renews(code, taken.cached.renews, false, taken.replayable()) {
            return None;
        }
        // HTTP/1.0 closes after an answer unless it says otherwise; not worth keeping apart.
        let mut upstream_closes = resp.version != Some(1);
        // hyper's server drops a length from answers that have no body of any kind.
        let no_body = code == 204 || code == 304;
        out.clear();
        // The reason phrase as upstream wrote it, as hyper relays it.
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&[b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8]);
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut length = None;
        let mut dated = false;
        let mut trans_id = None;
        let mut lower = [0u8; 32];
        let mut lines = Lines::new(head);
        for field in resp.headers.iter() {
            let name = policy::lowered(field.name, &mut lower);
            match name {
                Some("x-trans-id") => trans_id = Some(within(head, field.value)),
                Some("transfer-encoding") => return None,
                Some("content-length") => {
                    let n = content_length(field.value)?;
                    match length {
                        Some(l) if l != n => return None,
                        // One `Content-Length`, as hyper writes it.
                        Some(_) => {
                            lines.flush(out);
                            continue;
                        }
                        None => length = Some(n),
                    }
                    if no_body {
                        lines.flush(out);
                        continue;
                    }
                }
                Some("connection") => {
                    upstream_closes |= ConnectionOptions::default().with(field.value).only_known()?.close
                }
                Some("date") => dated = true,
                Some("location" | "content-location") => {
                    if let Some(value) = visible_ascii(field.value).and_then(|v| self.policy.relocated(v, target)) {
                        lines.flush(out);
                        push_field(out, field.name.as_bytes(), value.as_bytes());
                        continue;
                    }
                }
                _ => {}
            }
            if name.is_some_and(|n| !policy::answer_field_crosses(n)) {
                lines.flush(out);
            } else {
                lines.keep(out, field);
            }
        }
        lines.flush(out);
        let body = if taken.head_request || no_body { 0 } else { length? };
        if !dated {
            // hyper's server adds one; Swift always sends its own.
            push_field(out, b"date", httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        }
        if close {
            push_field(out, b"connection", b"close");
        } else if taken.keep_alive {
            push_field(out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        Some(Answer { code, trans_id, body, upstream_closes })
    }
}

/// Whether a request with these fields asks to close its connection, if it has no body (a
/// `Content-Length: 0` counts as none when `zero_length`) and its `Connection` field names
/// nothing but `close` and `keep-alive`; `None` otherwise, for hyper to answer.
fn bodiless(fields: &[httparse::Header<'_>], zero_length: bool) -> Option<bool> {
    let mut close = false;
    let mut lower = [0u8; 32];
    for field in fields {
        match policy::lowered(field.name, &mut lower) {
            Some("content-length") if zero_length && content_length(field.value) == Some(0) => {}
            Some("content-length" | "transfer-encoding" | "expect" | "upgrade") => return None,
            Some("connection") => close |= ConnectionOptions::default().with(field.value).only_known()?.close,
            _ => {}
        }
    }
    Some(close)
}

/// A request for the gateway's own endpoints, if it has no body and its fields all make a
/// `HeaderMap`.
pub(super) fn own(
    fields: &[httparse::Header<'_>],
    head_len: usize,
    head_request: bool,
    method: &str,
    path: &str,
) -> Look {
    let Some(close) = bodiless(fields, false) else { return Look::Decline };
    let mut headers = http::HeaderMap::with_capacity(fields.len());
    for field in fields {
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(field.name.as_bytes()), http::HeaderValue::from_bytes(field.value))
        else {
            return Look::Decline;
        };
        headers.append(name, value);
    }
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return Look::Decline };
    Look::Own(Own { head_len, head_request, close, method, path: path.to_owned(), headers })
}

/// A head httparse refused at its request line (`buf` starts with it): when the only fault is a
/// target that is not UTF-8, and the request has no body, [`Look::InvalidPath`]; else a
/// decline (hyper answers `400`).
pub(super) fn invalid_path(buf: &[u8]) -> Look {
    let Some(line) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() < crate::server::MAX_HEAD { Look::Partial } else { Look::Decline };
    };
    let mut words = buf[..line].strip_suffix(b"\r").unwrap_or(&buf[..line]).split(|&b| b == b' ');
    let (Some(method), Some(target), Some(b"HTTP/1.1"), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Look::Decline;
    };
    if !target.starts_with(b"/")
        || !target.iter().all(|&b| b > b' ' && b != 0x7f)
        || std::str::from_utf8(target).is_ok()
    {
        return Look::Decline;
    }
    // The same head with a plain target, to read the rest of it as for any other request.
    let end = buf.len().min(crate::server::MAX_HEAD);
    let at = method.len() + 1;
    if at + target.len() > end {
        // A request line longer than a head may be: hyper answers it.
        return Look::Decline;
    }
    let mut plain = buf[..end].to_vec();
    for b in &mut plain[at..at + target.len()] {
        if !plain_target_byte(*b) {
            *b = b'x';
        }
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(&plain) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < crate::server::MAX_HEAD => return Look::Partial,
        _ => return Look::Decline,
    };
    let Some(close) = bodiless(req.headers, true) else { return Look::Decline };
    let Ok(method) = http::Method::from_bytes(method) else { return Look::Decline };
    Look::InvalidPath { head_len, method, target: String::from_utf8_lossy(target).into_owned(), close }
}

/// Most bytes of a gateway endpoint's answer the fast path writes (its own answers are a few
/// hundred bytes, upstream's `/info` a few KiB).
pub(super) const OWN_BODY_LIMIT: usize = 1024 * 1024;

/// Answers `own` with what the gateway answers to it, or declines if it has no such answer.
pub(super) async fn answer_own<S, A>(auth: &A, client: &mut S, own: &Own, peer: &Arc<Peer>) -> Exchange
where
    S: AsyncWrite + Unpin,
    A: Authority,
{
    let Some(answer) = auth.head_only(&own.method, &own.path, &own.headers, peer.addr.ip()) else {
        return Exchange::Decline;
    };
    let request = peer.begin_request(auth.kind(&own.path), &own.method, || own.path.clone());
    let (parts, body) = answer.await.into_parts();
    let acting = || parts.extensions.get::<crate::server::Acting>().cloned();
    let mut request = request.answered(parts.status.as_u16(), Engine::Fast, None, acting);
    let Some(body) = collect(body).await else {
        tracing::warn!("an answer of the gateway's could not be read; connection closed");
        return Exchange::Cut;
    };
    let mut head = format!("HTTP/1.1 {}\r\n", parts.status).into_bytes();
    let mut dated = false;
    for (name, value) in &parts.headers {
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
            continue;
        }
        dated |= name == http::header::DATE;
        push_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    push_field(&mut head, b"content-length", body.len().to_string().as_bytes());
    if !dated {
        push_field(&mut head, b"date", httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    }
    if own.close {
        push_field(&mut head, b"connection", b"close");
    }
    head.extend_from_slice(b"\r\n");
    let body = if own.head_request { &[][..] } else { &body[..] };
    request.sent(body.len() as u64);
    match write_two(client, &head, body).await {
        Ok(()) if client.flush().await.is_ok() => Exchange::Done { close: own.close },
        _ => Exchange::Cut,
    }
}

/// `body`, whole, if it ends within [`OWN_BODY_LIMIT`] bytes and
/// [`crate::body::SMALL_BODY_TIME`].
pub(super) async fn collect(mut body: crate::body::Body) -> Option<BytesMut> {
    use http_body_util::BodyExt;
    let read = async {
        let mut whole = BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.ok()?.into_data() {
                if whole.len() + data.len() > OWN_BODY_LIMIT {
                    return None;
                }
                whole.extend_from_slice(&data);
            }
        }
        Some(whole)
    };
    tokio::time::timeout(crate::body::SMALL_BODY_TIME, read).await.ok()?
}

/// Where `part`, a slice of `whole`, lies in it.
fn within(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// The request target of the request line at the start of `head` ("" if there is none).
pub(super) fn request_target(head: &[u8]) -> &str {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    std::str::from_utf8(target).unwrap_or_default()
}

/// A `Content-Length` value: digits only, as hyper reads it.
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `value` as text if it is visible ASCII (with spaces and tabs), as `HeaderValue::to_str`
/// takes it.
pub(super) fn visible_ascii(value: &[u8]) -> Option<&str> {
    value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)).then(|| std::str::from_utf8(value).ok())?
}

/// A request-target byte `http`'s URI parser takes as it is.
pub(super) fn plain_target_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}')
}

/// Copies header lines of a head into an outgoing one as they were written, each run of
/// consecutive kept lines in one copy (four small copies per field were a tenth of the fast
/// path's instructions).
pub(super) struct Lines<'a> {
    pub(super) head: &'a [u8],
    /// The run of kept lines not copied yet: its start and end in `head`.
    pub(super) run: Option<(usize, usize)>,
}

impl<'a> Lines<'a> {
    pub(super) fn new(head: &'a [u8]) -> Self {
        Lines { head, run: None }
    }

    /// Keeps `field`'s line, one that httparse found in `head`. A line that ends in a bare LF
    /// (httparse takes one) is written afresh with CRLF: an upstream that reads only CRLF as a
    /// line's end would otherwise read it and the next as one line, and miss the next field,
    /// perhaps the `Content-Length` that frames the request.
    pub(super) fn keep(&mut self, out: &mut Vec<u8>, field: &httparse::Header<'_>) {
        let Some((start, end)) = self.line(field).filter(|&(_, end)| end >= 2 && self.head[end - 2] == b'\r') else {
            // Not where it should be (never happens with httparse), or not ended by CRLF.
            self.flush(out);
            push_field(out, field.name.as_bytes(), field.value);
            return;
        };
        match &mut self.run {
            Some((_, run_end)) if *run_end == start => *run_end = end,
            _ => {
                self.flush(out);
                self.run = Some((start, end));
            }
        }
    }

    /// Copies the run of kept lines, if any.
    pub(super) fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some((start, end)) = self.run.take() {
            out.extend_from_slice(&self.head[start..end]);
        }
    }

    /// Where `field`'s line lies in `head`, its line ending included: from its name to the
    /// first line feed after its value (httparse leaves none inside a value).
    pub(super) fn line(&self, field: &httparse::Header<'_>) -> Option<(usize, usize)> {
        let base = self.head.as_ptr() as usize;
        let start = (field.name.as_ptr() as usize).checked_sub(base)?;
        let after_name = start + field.name.len();
        let value_end = (field.value.as_ptr() as usize).checked_sub(base).map(|v| v + field.value.len());
        // An empty value may point anywhere: then look from the name on.
        let from = value_end.filter(|&v| !field.value.is_empty() && v >= after_name).unwrap_or(after_name);
        let feed = self.head.get(from..)?.iter().position(|&b| b == b'\n')?;
        Some((start, from + feed + 1))
    }
}

pub(super) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
