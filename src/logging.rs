//! Logging on stderr: `log.format` chooses one line per event for eyes (`human`, the default)
//! or one JSON object per line for a log shipper (`json`). `RUST_LOG` chooses which events
//! (default `info`). The events of an HTTP request carry its id, which the response's
//! `X-Request-Id` header also holds.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber, span};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

pub use crate::config::LogFormat;

/// The field of the span an HTTP request runs in that holds the request's id.
pub const REQUEST_ID: &str = "request_id";

type Boxed<S> = Box<dyn Layer<S> + Send + Sync>;

/// The process's logging, installed by [`init`]; its format can be changed once the
/// configuration has been read.
pub struct Logging {
    handle: reload::Handle<Boxed<Registry>, Registry>,
}

/// Installs logging on stderr in the human format, filtered by `RUST_LOG`.
pub fn init() -> Logging {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (format, handle) = reload::Layer::new(layer(LogFormat::Human, std::io::stderr, ansi));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .init();
    Logging { handle }
}

impl Logging {
    /// Writes every later event in `format`.
    pub fn set_format(&self, format: LogFormat) {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if let Err(e) = self.handle.reload(layer(
            format,
            std::io::stderr,
            ansi && format == LogFormat::Human,
        )) {
            eprintln!("keyhold: the log format could not be changed: {e}");
        }
    }
}

/// A layer that writes events to `writer` in `format`: for [`init`], and for a program or a
/// test that installs its own subscriber.
pub fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Boxed<S>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Human => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi),
        ),
        LogFormat::Json => Box::new(
            RequestIds.and_then(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .event_format(Json),
            ),
        ),
    }
}

/// A span's request id, kept in its extensions by [`RequestIds`] for [`Json`].
struct RequestId(String);

/// Keeps the `request_id` of a span where [`Json`] finds it.
struct RequestIds;

impl<S> Layer<S> for RequestIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field(REQUEST_ID).is_none() {
            return;
        }
        let mut found = FindRequestId(None);
        attrs.record(&mut found);
        if let (Some(request_id), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(RequestId(request_id));
        }
    }
}

struct FindRequestId(Option<String>);

impl Visit for FindRequestId {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == REQUEST_ID {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == REQUEST_ID {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// One JSON object per line:
/// `{"timestamp","level","target","message","fields":{…},"request_id"}`, the last only
/// within a request.
struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let request_id = ctx.event_scope().and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<RequestId>().map(|id| id.0.clone()))
        });
        // Wall time, not the `Clock`: a log line says when it was written.
        let now = time::OffsetDateTime::now_utc();
        let timestamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|_| fmt::Error)?;
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        push_json(&mut line, &timestamp)?;
        line.push_str(",\"level\":");
        push_json(&mut line, meta.level().as_str())?;
        line.push_str(",\"target\":");
        // Events of the `log` crate (sled's) name their own target.
        push_json(
            &mut line,
            fields.log_target.as_deref().unwrap_or(meta.target()),
        )?;
        line.push_str(",\"message\":");
        push_json(&mut line, fields.message.as_deref().unwrap_or_default())?;
        line.push_str(",\"fields\":");
        line.push_str(&serde_json::Value::Object(fields.rest).to_string());
        if let Some(id) = request_id {
            line.push_str(",\"request_id\":");
            push_json(&mut line, &id)?;
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn push_json(line: &mut String, value: &str) -> fmt::Result {
    let quoted = serde_json::to_string(value).map_err(|_| fmt::Error)?;
    line.write_str(&quoted)
}

/// An event's fields: its message, and the rest as JSON values.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    log_target: Option<String>,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                });
            }
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            "log.module_path" | "log.file" | "log.line" => {}
            name => {
                self.rest.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(run: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let subscriber =
            tracing_subscriber::registry().with(layer(LogFormat::Json, buffer.clone(), false));
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn a_json_line_holds_the_time_level_target_message_and_typed_fields() {
        let lines = lines(|| {
            tracing::warn!(count = 3, ok = true, ratio = 0.5, name = "a \"quoted\" name", who = %"shown", "a message with \"quotes\"\nand a newline");
        });
        assert_eq!(lines.len(), 1, "one object, on one line");
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["message"], "a message with \"quotes\"\nand a newline");
        assert_eq!(line["fields"]["count"], 3);
        assert_eq!(line["fields"]["ok"], true);
        assert_eq!(line["fields"]["ratio"], 0.5);
        assert_eq!(line["fields"]["name"], "a \"quoted\" name");
        assert_eq!(line["fields"]["who"], "shown");
        assert!(line.get("request_id").is_none(), "outside a request");
        let timestamp = line["timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .unwrap();
    }

    #[test]
    fn an_event_within_a_request_carries_the_request_id_however_deep() {
        let lines = lines(|| {
            let request = tracing::info_span!("request", request_id = %"01J-abc");
            let _request = request.enter();
            tracing::info!("at the top");
            let inner = tracing::debug_span!("resolver", field = "login");
            let _inner = inner.enter();
            tracing::info!("deeper");
        });
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert_eq!(line["request_id"], "01J-abc", "{line}");
        }
    }
}
