//! Logging on stderr: `log.format` chooses one line per event for eyes (`human`, the default)
//! or one JSON object per line for a log shipper (`json`). `RUST_LOG` chooses which events
//! (default `info`). The events of an HTTP request carry its id, which the response's
//! `X-Request-Id` header also holds.
//!
//! The id is a task-local of the request's future, not a `tracing` span: a span per request
//! cost about 4 µs of a 23 µs `{ __typename }` (BENCHMARKS.md), and Keyhold has no other span
//! to show. So both formats are Keyhold's own, and read the id as they write an event.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

pub use crate::config::LogFormat;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// Runs `request` with every event it logs carrying `id`.
pub async fn with_request_id<F: Future>(id: Arc<str>, request: F) -> F::Output {
    REQUEST_ID.scope(id, request).await
}

/// The id of the request whose future is being polled on this thread, if one is.
fn request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

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
        if let Err(e) = self.handle.reload(layer(format, std::io::stderr, ansi)) {
            eprintln!("keyhold: the log format could not be changed: {e}");
        }
    }
}

/// A layer that writes events to `writer` in `format` (with colours in the human format
/// when `ansi`): for [`init`], and for a program or a test that installs its own subscriber.
pub fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Boxed<S>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Human => Box::new(layer.with_ansi(ansi).event_format(Human)),
        LogFormat::Json => Box::new(layer.with_ansi(false).event_format(Json)),
    }
}

/// Wall time, not the `Clock`: a log line says when it was written.
#[expect(
    clippy::disallowed_methods,
    reason = "a log line's time is the wall clock's"
)]
fn timestamp() -> Result<String, fmt::Error> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| fmt::Error)
}

/// One line per event, as `tracing_subscriber`'s default format writes one, with the
/// request's id last: `TIME LEVEL target: message key=value … request_id=…`.
struct Human;

impl<S, N> FormatEvent<S, N> for Human
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
        let level = *meta.level();
        let name = level.as_str();
        let time = timestamp()?;
        let target = meta.target();
        if writer.has_ansi_escapes() {
            let colour = match level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                Level::TRACE => "35",
            };
            write!(
                writer,
                "\x1b[2m{time}\x1b[0m \x1b[{colour}m{name:>5}\x1b[0m \x1b[2m{target}:\x1b[0m "
            )?;
        } else {
            write!(writer, "{time} {name:>5} {target}: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some(id) = request_id() {
            write!(writer, " request_id={id}")?;
        }
        writeln!(writer)
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
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        push_json(&mut line, &timestamp()?)?;
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
        if let Some(id) = request_id() {
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

    fn written(format: LogFormat, run: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(layer(format, buffer.clone(), false));
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    fn lines(run: impl FnOnce()) -> Vec<serde_json::Value> {
        written(LogFormat::Json, run)
            .lines()
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

    /// Runs `request` as a request with the id `id` on a runtime of one thread.
    fn in_request(id: &str, request: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(with_request_id(id.into(), request));
    }

    #[test]
    fn an_event_within_a_request_carries_its_id_in_both_formats_and_one_outside_does_not() {
        let run = || {
            tracing::info!("before");
            in_request("01J-abc", async {
                tracing::info!("at the top");
                tokio::task::yield_now().await;
                let inner = tracing::debug_span!("resolver", field = "login");
                let _inner = inner.enter();
                tracing::info!(n = 1, "deeper");
            });
            tracing::info!("after");
        };
        let lines = lines(run);
        assert_eq!(lines.len(), 4);
        for line in &lines[1..3] {
            assert_eq!(line["request_id"], "01J-abc", "{line}");
        }
        for line in [&lines[0], &lines[3]] {
            assert!(line.get("request_id").is_none(), "{line}");
        }
        let human = written(LogFormat::Human, run);
        let human: Vec<&str> = human.lines().collect();
        assert_eq!(human.len(), 4, "{human:?}");
        assert!(
            human[2].ends_with("INFO keyhold::logging::tests: deeper n=1 request_id=01J-abc"),
            "{}",
            human[2]
        );
        assert!(
            human[0].ends_with("INFO keyhold::logging::tests: before"),
            "{}",
            human[0]
        );
        time::OffsetDateTime::parse(
            human[0].split(' ').next().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    }
}
