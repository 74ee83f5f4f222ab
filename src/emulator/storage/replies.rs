//! The fields every answer carries: account, container and object heads, ids.

use super::*;

pub(super) fn reply(status: StatusCode, headers: HeaderMap) -> Response<Body> {
    let mut resp = body::status(status);
    *resp.headers_mut() = headers;
    resp
}

/// Headers of a bodiless 201/202, which Swift sends with an explicit zero length.
pub(super) fn zero_length() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers
}

/// Inserts a header built from stored text; text no header can carry is left out, not panicked on.
pub(super) fn put_str(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
        headers.insert(name, value);
    }
}

pub(super) fn put_meta(headers: &mut HeaderMap, meta: &BTreeMap<String, HeaderValue>) {
    for (name, value) in meta {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.insert(name, value.clone());
        }
    }
}

pub(super) fn account_headers(acct: &Account) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("x-account-container-count"), HeaderValue::from(acct.containers.len()));
    headers.insert(HeaderName::from_static("x-account-object-count"), HeaderValue::from(acct.object_count()));
    headers.insert(HeaderName::from_static("x-account-bytes-used"), HeaderValue::from(acct.bytes_used()));
    put_str(&mut headers, HeaderName::from_static(X_TIMESTAMP), &x_timestamp(acct.created));
    put_meta(&mut headers, &acct.meta);
    headers
}

pub(super) fn container_headers(cont: &Container) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("x-container-object-count"), HeaderValue::from(cont.objects.len()));
    headers.insert(HeaderName::from_static("x-container-bytes-used"), HeaderValue::from(cont.bytes_used()));
    headers.insert(HeaderName::from_static("x-storage-policy"), HeaderValue::from_static("Policy-0"));
    put_str(&mut headers, HeaderName::from_static(X_TIMESTAMP), &x_timestamp(cont.created));
    put_meta(&mut headers, &cont.meta);
    headers
}

/// Everything a GET/HEAD/304 of the object carries except Content-Length and Content-Range.
pub(super) fn object_headers(view: &ObjectView) -> HeaderMap {
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
