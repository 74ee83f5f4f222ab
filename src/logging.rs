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
