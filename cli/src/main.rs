//! `cyxcloud`: the CyxCloud command line. See `cyxcloud --help` and the README.

mod args;
mod checkout;
mod cmd;
mod discover;
mod output;
mod procs;
mod settings;

use std::process::ExitCode;

use clap::Parser;
use cyxcloud_client::ClientError;
use cyxcloud_proto::ErrorCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Restores the default action of SIGPIPE (Rust ignores it, so a write to a closed pipe is an
/// error that `println!` turns into a panic): `cyxcloud status | head` then ends quietly, as
/// every Unix tool does when its reader goes away. Upload and download write files, not
/// stdout, so nothing is left half done by it.
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL before any thread starts; no handler
    // runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // `up` supervises daemons: it must outlive its reader to stop them in order.
    if !matches!(cli.command, args::Command::Up(_)) {
        default_sigpipe();
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit codes: 1 error, 2 usage, 3 not found, 4 authentication or permission, 5 unavailable,
/// 6 quota or no space, 7 data unrecoverable.
fn exit_code(e: &anyhow::Error) -> u8 {
    let code = e
        .chain()
        .find_map(|c| c.downcast_ref::<ClientError>())
        .and_then(ClientError::code);
    match code {
        Some(ErrorCode::NotFound) => 3,
        Some(ErrorCode::Unauthenticated | ErrorCode::PermissionDenied | ErrorCode::Expired) => 4,
        Some(ErrorCode::Unavailable | ErrorCode::Draining) => 5,
        Some(ErrorCode::QuotaExceeded | ErrorCode::NoSpace) => 6,
        Some(ErrorCode::Unrecoverable | ErrorCode::Corrupt) => 7,
        _ => 1,
    }
}
