//! Listings: the query, the selection by marker, prefix and delimiter, and the three formats.

use super::*;

#[derive(Clone, Copy)]
pub(super) enum Format {
    Plain,
    Json,
    Xml,
}

impl Format {
    pub(super) fn from_accept(headers: &HeaderMap) -> Self {
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

pub(super) struct ListQuery {
    pub(super) format: Format,
    pub(super) limit: usize,
    pub(super) marker: Option<String>,
    pub(super) end_marker: Option<String>,
    pub(super) prefix: String,
    pub(super) delimiter: Option<char>,
    pub(super) reverse: bool,
}

/// A non-empty query parameter (Swift treats `marker=` like no marker).
pub(super) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    body::form_get(params, key).filter(|value| !value.is_empty())
}

impl ListQuery {
    pub(super) fn parse(params: &[(String, String)], headers: &HeaderMap) -> Result<Self, SwiftError> {
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
                _ => return Err(SwiftError::PreconditionFailed("Maximum limit is 10000")),
            },
            _ => LISTING_LIMIT,
        };
        let delimiter = match param(params, "delimiter") {
            None => None,
            Some(value) => {
                let mut chars = value.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if (c as u32) <= 254 => Some(c),
                    _ => return Err(SwiftError::PreconditionFailed("Bad delimiter")),
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

pub(super) enum Pick<'a, V> {
    Item(&'a str, &'a V),
    Subdir(String),
}

/// Applies marker, end_marker, prefix, delimiter, reverse and limit to a name-ordered map.
/// With `reverse`, Swift swaps the roles: `marker` is the upper and `end_marker` the lower bound.
pub(super) fn select<'a, V>(map: &'a BTreeMap<String, V>, q: &ListQuery) -> Vec<Pick<'a, V>> {
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

pub(super) enum Row {
    Object { name: String, hash: String, bytes: u64, content_type: String, last_modified: SystemTime },
    Container { name: String, count: usize, bytes: u64, last_modified: SystemTime },
    Subdir(String),
}

impl Row {
    pub(super) fn name(&self) -> &str {
        match self {
            Row::Object { name, .. } | Row::Container { name, .. } | Row::Subdir(name) => name,
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Owner<'a> {
    Account(&'a str),
    Container(&'a str),
}

pub(super) fn render_listing(rows: &[Row], format: Format, owner: Owner<'_>, headers: HeaderMap) -> Response<Body> {
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

pub(super) fn json_listing(rows: &[Row]) -> String {
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

pub(super) fn xml_listing(rows: &[Row], owner: Owner<'_>) -> String {
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
