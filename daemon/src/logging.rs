//! Tracing setup: `RUST_LOG` filter (default `info`), human-readable by default, JSON lines with
//! `LOG_FORMAT=json`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call twice (the second call is a no-op).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
