//! What a request names and sets: paths, manifests, copy sources, lengths, metadata.

use super::*;

/// The objects a DLO manifest `<container>/<prefix>` points at, in name order.
pub(super) fn dlo_segments<'a>(acct: &'a Account, manifest: &HeaderValue) -> Vec<&'a ObjectRecord> {
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
pub(super) fn parse_manifest(value: &HeaderValue) -> Option<(String, String)> {
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
pub(super) fn parse_target(rest: &str) -> Result<Addressed, SwiftError> {
    let decoded = percent_decode_str(rest).decode_utf8().map_err(|_| SwiftError::PreconditionFailed(INVALID_NAME))?;
    if decoded.contains('\0') {
        return Err(SwiftError::PreconditionFailed(INVALID_NAME));
    }
    let path: &str = &decoded;
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.is_empty() {
        return Ok(Addressed::Account);
    }
    let (container, object) = path.split_once('/').unwrap_or((path, ""));
    if container.is_empty() {
        // `/v1/AUTH_x//obj`: Swift's path split fails and the proxy answers 404.
        return Err(SwiftError::NotFound);
    }
    if container.len() > MAX_CONTAINER_NAME_LENGTH {
        return Err(SwiftError::BadRequest("Container name length longer than 256"));
    }
    if object.is_empty() {
        return Ok(Addressed::Container(container.to_owned()));
    }
    if object.len() > MAX_OBJECT_NAME_LENGTH {
        return Err(SwiftError::BadRequest("Object name length longer than 1024"));
    }
    Ok(Addressed::Object(container.to_owned(), object.to_owned()))
}

/// Parses an `X-Copy-From` or `Destination` value: `[/]<container>/<object>`, percent-encoded.
pub(super) fn parse_copy_path(value: &HeaderValue, malformed: &'static str) -> Result<(String, String), SwiftError> {
    let decoded =
        percent_decode(value.as_bytes()).decode_utf8().map_err(|_| SwiftError::PreconditionFailed(INVALID_NAME))?;
    if decoded.contains('\0') {
        return Err(SwiftError::PreconditionFailed(INVALID_NAME));
    }
    let path: &str = &decoded;
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.split_once('/') {
        Some((container, object)) if !container.is_empty() && !object.is_empty() => {
            if container.len() > MAX_CONTAINER_NAME_LENGTH {
                return Err(SwiftError::BadRequest("Container name length longer than 256"));
            }
            if object.len() > MAX_OBJECT_NAME_LENGTH {
                return Err(SwiftError::BadRequest("Object name length longer than 1024"));
            }
            Ok((container.to_owned(), object.to_owned()))
        }
        _ => Err(SwiftError::PreconditionFailed(malformed)),
    }
}

/// Cross-account copies would bypass the caller's token check, so they are refused.
pub(super) fn check_same_account(headers: &HeaderMap, name: &str, account: &str) -> Result<(), SwiftError> {
    match headers.get(name) {
        None => Ok(()),
        Some(value) => {
            let named = percent_decode(value.as_bytes()).decode_utf8_lossy();
            if named.trim() == account {
                Ok(())
            } else {
                Err(SwiftError::Forbidden)
            }
        }
    }
}

pub(super) fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, SwiftError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(SwiftError::BadRequest("Invalid Content-Length header value")),
    }
}

pub(super) fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|t| t.trim().eq_ignore_ascii_case("chunked")))
}

pub(super) fn content_type_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned())
        .filter(|value| !value.is_empty())
}

pub(super) fn header_is_true(value: Option<&HeaderValue>) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(config_true)
}

/// Swift's `config_true_value`.
pub(super) fn config_true(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on" | "t" | "y")
}

/// Swift's metadata constraints for headers starting with `prefix`.
pub(super) fn validate_meta(headers: &HeaderMap, prefix: &str) -> Result<(), SwiftError> {
    for (name, value) in headers {
        if let Some(suffix) = name.as_str().strip_prefix(prefix) {
            if suffix.is_empty() {
                return Err(SwiftError::BadRequest("Metadata name cannot be empty"));
            }
            if suffix.len() > MAX_META_NAME_LENGTH {
                return Err(SwiftError::BadRequest("Metadata name too long; max 128"));
            }
            if value.len() > MAX_META_VALUE_LENGTH {
                return Err(SwiftError::BadRequest("Metadata value longer than 256"));
            }
        }
    }
    Ok(())
}

pub(super) fn validate_manifest(headers: &HeaderMap) -> Result<(), SwiftError> {
    match headers.get(X_OBJECT_MANIFEST) {
        Some(value) if parse_manifest(value).is_none() => {
            Err(SwiftError::BadRequest("X-Object-Manifest must be in the format container/prefix"))
        }
        _ => Ok(()),
    }
}

/// Sets, replaces and removes account or container metadata; an empty value removes, as in Swift.
pub(super) fn apply_meta(target: &mut BTreeMap<String, HeaderValue>, headers: &HeaderMap, kind: &MetaKind) {
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

pub(super) fn object_meta_from(headers: &HeaderMap) -> BTreeMap<String, HeaderValue> {
    headers
        .iter()
        .filter(|(name, value)| {
            name.as_str().len() > OBJECT_META.len() && name.as_str().starts_with(OBJECT_META) && !value.is_empty()
        })
        .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
        .collect()
}

// ---- conditional requests and ranges ----------------------------------------------------------
