//! Log lines that a peer cannot forge. Topics, client ids, user names, filters,
//! reason strings and certificate names all reach the log, and a newline in any of
//! them would start a line of the attacker's choosing (a fake `moat::audit` login,
//! say). So the field formatter of the one `tracing` subscriber escapes every value
//! of every event and span, whatever the call site wrote: nothing can be forgotten.
//! [`escape`] is the one escaping rule; [`EscapedFields`] applies it to text lines,
//! [`JsonLines`] to the optional JSON lines (`moat serve --log-format json`, for log
//! shippers). This module formats; it decides nothing about what is logged.

use std::borrow::Cow;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The format of the log lines `serve` writes to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `<time> <LEVEL> <target>: <message> name="value" ...`, one line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

/// Characters that would hide or break a line: every control character (C0, DEL,
/// C1: the line breaks among them), the Unicode line and paragraph separators, and
/// the bidirectional controls that can make a line read differently from its bytes.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Characters written as an escape: the [`hidden`] ones, and the quote and
/// backslash that delimit and escape a value.
fn needs_escape(c: char) -> bool {
    hidden(c) || c == '"' || c == '\\'
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
pub fn init(format: LogFormat) {
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
    let text = tracing_subscriber::fmt::layer()
        .fmt_fields(EscapedFields)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(text).try_init(),
        LogFormat::Json => registry.with(text.event_format(JsonLines)).try_init(),
    };
}

/// An event formatter writing one JSON object per line, with the same guarantee as
/// the text lines: serde_json escapes quotes, backslashes and C0 controls, and what
/// it leaves raw among the [`hidden`] characters (DEL, C1, separators, bidi) is
/// written as `\uXXXX` too, so a value round-trips through any JSON parser and
/// never breaks or disguises a line. (moat opens no spans, so none are written.)
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = serde_json::json!({
            "timestamp": timestamp,
            "level": meta.level().as_str(),
            "target": meta.target(),
            "fields": fields.0,
        });
        let json = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        let mut out = String::with_capacity(json.len() + 1);
        for c in json.chars() {
            // Outside strings a JSON text holds none of these, so this only escapes.
            if hidden(c) {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            } else {
                out.push(c);
            }
        }
        writeln!(writer, "{out}")
    }
}

/// Event fields as a JSON object, each value as its type (strings, numbers, bools).
#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl JsonFields {
    fn insert(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, format!("{value:?}").into());
    }
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

        /// A subscriber formatted as `serve`'s text lines, writing here.
        pub(crate) fn subscriber(&self) -> Box<dyn tracing::Subscriber + Send + Sync> {
            self.subscriber_in(LogFormat::Text)
        }

        /// A subscriber formatted as `serve --log-format <format>`, writing here.
        fn subscriber_in(&self, format: LogFormat) -> Box<dyn tracing::Subscriber + Send + Sync> {
            let writer = self.clone();
            let builder = tracing_subscriber::fmt()
                .fmt_fields(EscapedFields)
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .with_writer(move || writer.clone());
            match format {
                LogFormat::Text => Box::new(builder.finish()),
                LogFormat::Json => Box::new(builder.event_format(JsonLines).finish()),
            }
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

    #[test]
    fn json_lines_round_trip_every_value_and_stay_one_line() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.subscriber_in(LogFormat::Json));
        tracing::callsite::rebuild_interest_cache();
        let hostile = format!("{FORGED}\u{85}\u{2028}\u{202e}\"}}{{\\");
        tracing::info!(target: "moat::audit", topic = hostile.as_str(), client_id = %hostile, retain = true, n = 3, "publish denied");
        tracing::warn!("plain");

        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "one line per event:\n{text}");
        for line in &lines {
            assert!(
                !line.chars().any(hidden),
                "raw hidden character in {line:?}"
            );
        }
        let first: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
        assert_eq!(first["target"], "moat::audit");
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["fields"]["message"], "publish denied");
        assert_eq!(
            first["fields"]["topic"],
            hostile.as_str(),
            "the value survives exactly"
        );
        assert_eq!(first["fields"]["client_id"], hostile.as_str());
        assert_eq!(first["fields"]["retain"], true);
        assert_eq!(first["fields"]["n"], 3);
        assert!(
            first["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        let second: serde_json::Value = serde_json::from_str(lines[1]).expect("valid JSON");
        assert_eq!(second["level"], "WARN");
    }
}
