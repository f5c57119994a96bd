//! Log lines that a peer cannot forge. Topics, client ids, user names, filters,
//! reason strings and certificate names all reach the log, and a newline in any of
//! them would start a line of the attacker's choosing (a fake `moat::audit` login,
//! say). So the field formatter of the one `tracing` subscriber escapes every value
//! of every event and span, whatever the call site wrote: nothing can be forgotten.
//! [`escape`] is the one escaping rule; [`EscapedFields`] applies it. This module
//! formats; it decides nothing about what is logged.

use std::borrow::Cow;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Characters written as an escape: every control character (C0, DEL, C1: the line
/// breaks among them), the Unicode line and paragraph separators, the bidirectional
/// controls that can make a line read differently from its bytes, and the quote and
/// backslash that delimit and escape a value.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '"' | '\\'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with [`needs_escape`] characters written as `\n`, `\r`, `\t`, `\"`, `\\`
/// or `\uXXXX` (the escapes of JSON, Go's `strconv.Unquote` and so logfmt parsers;
/// every escaped character is below U+10000): the result is one line, and its quotes and backslashes are all
/// escapes, so it can be quoted unambiguously. Borrowed when nothing needed escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether a field value may stand unquoted: it cannot then run into the next
/// field (no space, `=` or quote) nor hide anything.
fn bare(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '=' || needs_escape(c))
}

/// The `tracing-subscriber` field formatter: `name=value` pairs separated by one
/// space, the message first as the call site wrote it. Every value goes through
/// [`escape`]; string values are always quoted (`outcome="accepted"`), other
/// values (`%` Display, `?` Debug, numbers) only when they hold a space, `=`,
/// a quote or an escape.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: &str, always_quote: bool) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let escaped = escape(value);
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{escaped}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                if !always_quote && bare(value) {
                    write!(self.writer, "{separator}{name}={escaped}")
                } else {
                    write!(self.writer, "{separator}{name}=\"{escaped}\"")
                }
            }
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, true);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &value.to_string(), false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here too, as a Debug wrapper around Display.
        self.write(field, &format!("{value:?}"), false);
    }
}

/// Installs the process's subscriber: stderr (journald captures it), `RUST_LOG`
/// directives as `tracing_subscriber::filter::Targets` (`RUST_LOG=moat::broker=debug,info`),
/// every field escaped by [`EscapedFields`]. `Targets` rather than `EnvFilter`: the
/// same directives without a regex engine, whose code pages an idle broker on a
/// 512 MB Pi would otherwise carry.
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let default = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::level_filters::LevelFilter::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => directives.parse().unwrap_or_else(|e| {
            eprintln!("moat: ignoring RUST_LOG={:?}: {e}", escape(&directives));
            default
        }),
        Err(_) => default,
    };
    let format = tracing_subscriber::fmt::layer()
        .fmt_fields(EscapedFields)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let _ = tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .try_init();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what a subscriber writes, for tests that read log lines.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .expect("log lines are UTF-8")
        }

        /// A subscriber formatted as `serve`'s, writing here.
        pub(crate) fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
            let writer = self.clone();
            tracing_subscriber::fmt()
                .fmt_fields(EscapedFields)
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .with_writer(move || writer.clone())
                .finish()
        }
    }

    const FORGED: &str =
        "x\n2026-12-02T00:00:00Z  INFO moat::audit: connected identity=admin FORGED";

    #[test]
    fn escape_leaves_ordinary_text_alone_and_makes_the_rest_one_line() {
        assert!(matches!(escape("home/kitchen é €"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\rc\td"), r"a\nb\rc\td");
        assert_eq!(escape(r#"say "hi" \o/"#), r#"say \"hi\" \\o/"#);
        assert_eq!(
            escape("\u{85}\u{1b}[31m\u{7f}\0"),
            r"\u0085\u001b[31m\u007f\u0000"
        );
        assert_eq!(escape("\u{2028}\u{202e}gnp.exe"), r"\u2028\u202egnp.exe");
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let mut buf = [0; 4];
            let escaped = escape(c.encode_utf8(&mut buf));
            assert!(
                !escaped.chars().any(char::is_control),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn every_field_of_every_event_is_escaped() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.subscriber());
        tracing::callsite::rebuild_interest_cache();
        let error = std::io::Error::other(FORGED);
        let span = tracing::info_span!("connection", client_id = FORGED);
        let _entered = span.enter();
        tracing::info!(target: "moat::audit", topic = FORGED, display = %FORGED, debug = ?FORGED, %error, "publish denied");
        tracing::info!(target: "moat::audit", "message built from a peer: {FORGED}");
        tracing::info!(target: "moat::audit", username = "bob identity=admin", identity = %"bob identity=admin", "authentication");
        tracing::info!(empty = "", number = 7, flag = true, plain = %"a/b", "ordinary");
        drop(_entered);

        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "one line per event:\n{text}");
        assert!(!text.contains("\n2026-12-02T00:00:00Z"), "{text}");
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("FORGED") || l.contains(r"\n2026")),
            "{text}"
        );
        assert!(lines[0].contains(r#"topic="x\n2026"#), "{}", lines[0]);
        assert!(lines[0].contains(r#"display="x\n2026"#), "{}", lines[0]);
        assert!(
            lines[0].contains(r#"client_id="x\n2026"#),
            "span fields too: {}",
            lines[0]
        );
        // A field cannot smuggle in another field: values with spaces or `=` are quoted.
        assert!(
            lines[2].contains(r#"username="bob identity=admin""#),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].contains(r#"identity="bob identity=admin""#),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains(r#"empty="" number=7 flag=true plain=a/b"#),
            "{}",
            lines[3]
        );
    }
}
