//! `cutover`: the command line and the daemon.
//!
//! # Layout
//!
//! - `cli`: the command line (clap derive).
//! - `serve`: `cutover serve`, wiring store, proxy, engine and admin API;
//!   its listeners from the process it upgrades, systemd, or bound.
//! - `handover`: upgrades of cutover itself (`cutover upgrade`, SIGUSR2):
//!   the versioned hand-over protocol, the old and the new process's side.
//! - `systemd`: socket activation and `sd_notify` (the one module with
//!   `unsafe`).
//! - `certs`: `[proxy.acme]` started by `serve`, `cutover certs [renew
//!   NAME]`, the certificate lines of `cutover status`.
//! - `commands`: the commands that talk to the daemon, and `config check`.
//! - `group_commands`: the same commands given a release group's name.
//! - `client`: HTTP/1.1 to the admin API (hyper): its unix socket, or TCP
//!   (`--admin https://…`, rustls; token from `CUTOVER_TOKEN`).
//! - `sse`: reading the Server-Sent Events of a deployment.
//! - `model`: the API's answers as the CLI reads them.
//! - `output`: tables, event lines, durations.
//! - `nginx_config`: `cutover nginx-config APP`, the site config for nginx.
//! - `failure`: exit statuses (0 ok, 1 operation failed, 2 usage or config).

#![deny(unsafe_code)]

mod certs;
mod cli;
mod client;
mod commands;
mod failure;
mod group_commands;
mod handover;
mod model;
mod nginx_config;
mod output;
mod serve;
mod sse;
mod systemd;

use cli::{Cli, Command, ConfigCommand};
use failure::{Failure, Outcome};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors exit 2, --help and --version 0 (clap's convention).
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cutover: cannot start the async runtime: {error}");
            return ExitCode::from(failure::FAILED);
        }
    };
    let outcome = runtime.block_on(run(cli));
    // `serve` has already waited (within bounds) for the proxy's requests
    // and for the engine to bring every deployment to a safe point; what
    // may linger now is idle connection tasks, not worth waiting for.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            if let Some(message) = message {
                report_error(&message, code, json);
            }
            ExitCode::from(code)
        }
    }
}

/// An error on stderr: `cutover: …` as text, or with `--json` one JSON
/// object (`{"error": "…", "exit_code": N}`), escaped like all output.
fn report_error(message: &str, code: u8, json: bool) {
    if json {
        let text = message.strip_prefix("cutover: ").unwrap_or(message);
        let body = serde_json::json!({ "error": text, "exit_code": code });
        eprintln!(
            "{}",
            cutover_config::display::escape_json(&body.to_string())
        );
    } else {
        eprintln!("{}", cutover_config::display::escape(message));
    }
}

/// clap's answer to a command line it could not parse (or `--help`,
/// `--version`): as clap prints it, or as JSON when `--json` was given.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !std::env::args().any(|arg| arg == "--json") {
        error.exit();
    }
    let message = error.render().to_string();
    let first = message.lines().next().unwrap_or("invalid usage");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    report_error(first, failure::USAGE, true);
    ExitCode::from(failure::USAGE)
}

async fn run(cli: Cli) -> Outcome {
    let global = &cli.global;
    match &cli.command {
        Command::Serve(args) => {
            refuse_admin(global, "serve")?;
            let config = cutover_config::Config::load_checked(&global.config)
                .map_err(|e| Failure::config(&e))?;
            // `serve --json`: JSON logs, like `--log-format json`.
            let mut args = args.clone();
            if global.json {
                args.log_format = cli::LogFormat::Json;
            }
            serve::run(config, &args).await
        }
        Command::Config(ConfigCommand::Check) => {
            refuse_admin(global, "config check")?;
            commands::config_check(global)
        }
        Command::Deploy(args) => commands::deploy(global, args).await,
        Command::Status(args) => commands::status(global, args).await,
        Command::History(args) => commands::history(global, args).await,
        Command::Certs(args) => match &args.command {
            None => certs::list(global).await,
            Some(cli::CertsCommand::Renew { name }) => certs::renew(global, name).await,
        },
        Command::Rollback(args) => commands::rollback(global, args).await,
        Command::Promote(args) => commands::promote(global, &args.app).await,
        Command::Abort(args) => commands::abort(global, args).await,
        Command::Logs(args) => commands::logs(global, args).await,
        Command::NginxConfig(args) => {
            refuse_admin(global, "nginx-config")?;
            nginx_config::print(global, &args.app)
        }
        Command::Upgrade(args) => commands::upgrade(global, args).await,
    }
}

/// `--admin` names a running daemon's socket: a command that talks to no
/// daemon refuses it rather than ignore it.
fn refuse_admin(global: &cli::GlobalArgs, command: &str) -> Outcome {
    match &global.admin {
        Some(_) => Err(Failure::usage(format!(
            "--admin is for commands that talk to a running daemon; `cutover {command}` does not"
        ))),
        None => Ok(()),
    }
}

// The proxy allocates and frees small buffers and heads on every request;
// mimalloc's thread-local free lists make that cheaper than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
