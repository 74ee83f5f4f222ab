//! How log lines are written. Text logs write `name=value` pairs; a value that came from
//! outside (a user name, an upstream's error text) could otherwise forge pairs of its own (a user
//! named `nobody account=demo` would read as two fields), so every value that is not one plain
//! word is written quoted, with quotes, backslashes and control characters escaped.

use std::fmt::Write as _;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;

/// True when `value` can stand in a text log unquoted: one word, nothing a reader could take for
/// a field's start or end.
fn plain(value: &str) -> bool {
    !value.is_empty() && value.chars().all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '=' | '\\'))
}

/// Writes one field as [`fields`] does.
fn write_field(writer: &mut Writer<'_>, name: &str, value: &dyn std::fmt::Debug) -> std::fmt::Result {
    let mut text = String::new();
    write!(text, "{value:?}")?;
    match name {
        // The message is the gateway's own words.
        "message" => writer.write_str(&text),
        _ if plain(&text) => write!(writer, "{name}={text}"),
        _ => write!(writer, "{name}={text:?}"),
    }
}

/// The text log's field formatter: `name=value` pairs apart by spaces, each value quoted and
/// escaped unless it is a plain word.
pub fn fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| write_field(writer, field.name(), value))
        .delimited(" ")
}

/// Installs the process's log writer on stderr: `format` as configured, the level from
/// `SWIFTGATE_LOG` (`info` by default; `swiftgate::access=off` silences the access log).
/// In JSON, each line is one object: `timestamp`, `level`, `target`, `message` and the
/// event's fields, flattened.
pub fn init(format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWIFTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        crate::config::LogFormat::Text => builder.fmt_fields(fields()).init(),
        crate::config::LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// The log format `serve` will use, known before the configuration is loaded (and its errors
/// logged): `SWIFTGATE_LOG_FORMAT`, else the file's `log_format`, else text. A file that
/// cannot be read here is read again, and its error reported, by the loader.
pub fn format_of(config: Option<&std::path::Path>) -> crate::config::LogFormat {
    if let Some(format) = std::env::var("SWIFTGATE_LOG_FORMAT").ok().and_then(|v| v.parse().ok()) {
        return format;
    }
    config
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("log_format")?.as_str()?.parse().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(name: &str, value: &str) -> String {
        let mut out = String::new();
        write_field(&mut Writer::new(&mut out), name, &format_args!("{value}")).expect("written");
        out
    }

    #[test]
    fn a_value_cannot_forge_fields() {
        assert_eq!(written("user", "alice"), "user=alice");
        assert_eq!(written("user", "nobody account=demo cause=\"x\""), r#"user="nobody account=demo cause=\"x\"""#);
        assert_eq!(written("user", "a\nb"), r#"user="a\nb""#);
        assert_eq!(written("user", ""), r#"user="""#);
        assert_eq!(written("peer", "127.0.0.1:5"), "peer=127.0.0.1:5");
        assert_eq!(written("message", "v1.0 auth refused"), "v1.0 auth refused");
    }
}
