//! Log output on stderr: human-readable text or JSON Lines, a level filter from `--log-level`
//! or `RUST_LOG`, and the targets written whatever the filter says (audit and lifecycle).

use std::io::IsTerminal;

use tracing_subscriber::filter::Directive;
use tracing_subscriber::EnvFilter;

pub use crate::cli::Format;

/// Target of the one-line-per-command audit record; written at every log level.
pub const AUDIT: &str = "audit";
/// Target of the start, listening, reload and stop lines; written at every log level.
pub const LIFECYCLE: &str = "lifecycle";

/// Installs the global subscriber. The filter is `level` if given, else `RUST_LOG`, else
/// `info`; the audit and lifecycle targets are always let through at info.
pub fn init(format: Format, level: Option<&str>) {
    let mut warning = None;
    let spec = match level {
        Some(level) => level.to_owned(),
        None => match std::env::var("RUST_LOG") {
            // Full RUST_LOG syntax here, where a lone word (`RUST_LOG=agent`) names a target.
            Ok(env) if !env.trim().is_empty() => match EnvFilter::builder().parse(&env) {
                Ok(_) => env,
                Err(e) => {
                    warning = Some(format!("ignoring RUST_LOG={env:?}, using info: {e}"));
                    "info".to_owned()
                }
            },
            _ => "info".to_owned(),
        },
    };
    let filter = always_on(EnvFilter::builder().parse_lossy(spec));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        Format::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    if let Some(warning) = warning {
        tracing::warn!(target: LIFECYCLE, "{warning}");
    }
}

/// Adds the directives that keep the audit and lifecycle lines on: a directive for a target
/// replaces one the user gave for the same target, and beats a global level.
fn always_on(mut filter: EnvFilter) -> EnvFilter {
    for target in [AUDIT, LIFECYCLE] {
        match format!("{target}=info").parse::<Directive>() {
            Ok(directive) => filter = filter.add_directive(directive),
            // Unreachable: both targets are constant, valid names.
            Err(e) => eprintln!("agent: internal error: bad log directive for {target}: {e}"),
        }
    }
    filter
}

/// Reports an error that stops the agent, in the log's format (so a JSON log stays JSON).
pub fn fatal(format: Format, message: &str) {
    match format {
        Format::Text => eprintln!("agent: {message}"),
        Format::Json => tracing::error!(target: LIFECYCLE, "{message}"),
    }
}
