//! Conditional requests, byte ranges and the dates Swift writes.

use super::*;

pub(super) enum Precondition {
    Proceed,
    NotModified,
}

/// RFC 9110 §13.2.2 order: If-Match / If-Unmodified-Since first, then If-None-Match /
/// If-Modified-Since. `etag` may be quoted (large objects); matching ignores the quotes.
pub(super) fn evaluate_conditions(
    headers: &HeaderMap,
    etag: &str,
    last_modified: i64,
) -> Result<Precondition, SwiftError> {
    let bare = etag.trim_matches('"');
    if let Some(value) = headers.get(header::IF_MATCH) {
        if !etag_list_matches(value, bare) {
            return Err(SwiftError::PreconditionFailed(PRECONDITION_TEXT));
        }
    } else if let Some(since) = headers.get(header::IF_UNMODIFIED_SINCE).and_then(parse_http_date) {
        if last_modified > since {
            return Err(SwiftError::PreconditionFailed(PRECONDITION_TEXT));
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

pub(super) fn etag_list_matches(value: &HeaderValue, etag: &str) -> bool {
    let Ok(list) = value.to_str() else {
        return false;
    };
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.trim_start_matches("W/").trim_matches('"').eq_ignore_ascii_case(etag)
    })
}

pub(super) enum ByteRange {
    Whole,
    /// First and last byte, inclusive.
    Span(u64, u64),
}

/// A single `bytes=` range. Syntactically invalid ranges are ignored (200), as Swift does;
/// multi-range requests get the whole object, which RFC 9110 §14.2 allows.
pub(super) fn parse_range(headers: &HeaderMap, size: u64) -> Result<ByteRange, SwiftError> {
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
            return Err(SwiftError::RangeNotSatisfiable(size));
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
        return Err(SwiftError::RangeNotSatisfiable(size));
    }
    let end = end.map_or(size - 1, |end| end.min(size - 1));
    Ok(ByteRange::Span(start, end))
}

// ---- listings -------------------------------------------------------------------------------

/// Whole seconds, rounded up as Swift does for Last-Modified, so a client that stores the header
/// and sends it back in If-Modified-Since gets a 304.
pub(super) fn unix_seconds_ceil(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX).saturating_add(i64::from(d.subsec_nanos() > 0)),
        Err(_) => 0,
    }
}

/// `Sun, 22 Nov 2026 11:03:58 GMT`.
pub(super) fn http_date(t: SystemTime) -> String {
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
pub(super) fn parse_http_date(value: &HeaderValue) -> Option<i64> {
    let text = value.to_str().ok()?;
    PrimitiveDateTime::parse(
        text.trim(),
        format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"),
    )
    .ok()
    .map(|dt| dt.assume_utc().unix_timestamp())
}

/// `2026-11-22T11:03:58.123456`, the listing format.
pub(super) fn listing_date(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]"))
        .unwrap_or_default()
}

/// Swift's `X-Timestamp`: seconds with five decimals.
pub(super) fn x_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:05}", d.as_secs(), d.subsec_micros() / 10)
}

/// `tx` + 21 hex digits + `-` + hex Unix time, Swift's transaction id shape.
pub(super) fn new_trans_id() -> String {
    let random: u128 = rand::random();
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("tx{:021x}-{:010x}", random >> 44, secs)
}
