//! Log lines as the user reads them: each prefixed with the host and rank it comes from
//! (`mpiswarm[node17:3]: ...`), or one JSON object per line for log collectors.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static ORIGIN: OnceLock<String> = OnceLock::new();

/// Sets the `host:rank` every later log line starts with.
pub fn set_origin(host: &str, rank: i32) {
    let _ = ORIGIN.set(format!("{host}:{rank}"));
}

/// Sets `host:guard` as the origin: a host's guard logs through its rank, and has no rank.
pub fn set_origin_of_guard(host: &str) {
    let _ = ORIGIN.set(format!("{host}:guard"));
}

/// How logging was set up (`init`), for a child process of ours to log the same way.
static CHOSEN: OnceLock<(u8, crate::plan::cli::LogFormat)> = OnceLock::new();

/// The flags that give a child mpiswarm process (the guard) this process's verbosity and log
/// format: its lines go into this process's stream, which must stay one format.
pub fn flags_for_child() -> Vec<String> {
    let (verbose, format) = CHOSEN
        .get()
        .copied()
        .unwrap_or((0, crate::plan::cli::LogFormat::Text));
    let mut flags = Vec::new();
    if verbose > 0 {
        flags.push(format!("-{}", "v".repeat(usize::from(verbose.min(2)))));
    }
    if format == crate::plan::cli::LogFormat::Json {
        flags.extend(["--log-format".to_owned(), "json".to_owned()]);
    }
    flags
}

/// Whether log lines are JSON objects (then nothing else may go to stderr as plain text).
pub fn is_json() -> bool {
    CHOSEN
        .get()
        .is_some_and(|(_, f)| *f == crate::plan::cli::LogFormat::Json)
}

/// Says the error a process ends with, naming its host; one JSON line with `--log-format json`.
pub fn print_error(host: &str, e: &anyhow::Error) {
    if is_json() {
        tracing::error!("error on {host}: {e:#}");
    } else {
        eprintln!("mpiswarm: error on {host}: {e:#}");
    }
}

struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
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
        let origin = ORIGIN.get().map(String::as_str).unwrap_or_else(|| "");
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        if origin.is_empty() {
            write!(writer, "mpiswarm: {level}")?;
        } else {
            write!(writer, "mpiswarm[{origin}]: {level}")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// One JSON object per line, for log collectors: time, level, host, rank, message and fields.
struct JsonLines;

#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

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
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let mut line = fields.0;
        let origin = ORIGIN.get().map(String::as_str).unwrap_or("");
        let (host, rank) = origin.rsplit_once(':').unwrap_or((origin, ""));
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        line.insert("time".into(), time.into());
        line.insert(
            "level".into(),
            event.metadata().level().as_str().to_lowercase().into(),
        );
        if !host.is_empty() {
            line.insert("host".into(), host.into());
        }
        if let Ok(rank) = rank.parse::<i64>() {
            line.insert("rank".into(), rank.into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

pub fn init(verbose: u8, format: crate::plan::cli::LogFormat) {
    let _ = CHOSEN.set((verbose, format));
    let level = match verbose {
        0 => Level::INFO,
        1 => Level::DEBUG,
        _ => Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        crate::plan::cli::LogFormat::Text => builder.event_format(Prefixed).init(),
        crate::plan::cli::LogFormat::Json => builder.event_format(JsonLines).init(),
    }
}
