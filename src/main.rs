//! The `kafka-delay-router` binary: parses the command line, sets up logging and
//! signal handling, and calls the library. Exit codes: 0 ok, 1 error, 2 topic drift.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kafka_delay_router::cli::{Cli, Command};
use kafka_delay_router::{commands, Error};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if matches!(e, Error::Drift { .. }) {
                2
            } else {
                1
            };
            let e = anyhow::Error::from(e);
            // A failed login or TLS handshake is reported to the clients'
            // error callbacks only: name it, and the setting to fix.
            eprintln!(
                "{}",
                kafka_delay_router::connection::explain(&format!("error: {e:#}"))
            );
            ExitCode::from(code)
        }
    }
}

async fn dispatch(command: Command) -> kafka_delay_router::Result<()> {
    let mut stdout = std::io::stdout();
    let result = match command {
        Command::Run(args) => commands::run(args, shutdown_signal()).await,
        Command::CreateTopics(args) => commands::create_topics(args, &mut stdout).await,
        Command::Produce(args) => {
            commands::produce(args, std::io::stdin().lock(), &mut stdout).await
        }
        Command::Cancel(args) => commands::cancel(args, &mut stdout).await,
        Command::Plan(args) => commands::plan(args, &mut stdout),
        Command::Watch(args) => tokio::task::block_in_place(|| commands::watch(args, &mut stdout)),
        Command::Status(args) => {
            tokio::task::block_in_place(|| commands::status(args, &mut stdout))
        }
    };
    let _ = stdout.flush();
    result
}

/// A token cancelled on the first SIGINT or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        cancel.cancel();
    });
    token
}
