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
//! - `commands`: the commands that talk to the daemon, and `config check`.
//! - `group_commands`: the same commands given a release group's name.
//! - `client`: HTTP/1.1 over the admin unix socket (hyper).
//! - `sse`: reading the Server-Sent Events of a deployment.
//! - `model`: the API's answers as the CLI reads them.
//! - `output`: tables, event lines, durations.
//! - `nginx_config`: `cutover nginx-config APP`, the site config for nginx.
//! - `failure`: exit statuses (0 ok, 1 operation failed, 2 usage or config).

#![deny(unsafe_code)]

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

use clap::Parser;
use cli::{Cli, Command, ConfigCommand};
use failure::{Failure, Outcome};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors exit 2, --help and --version 0 (clap's convention).
    let cli = Cli::parse();
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
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    let global = &cli.global;
    match &cli.command {
        Command::Serve(args) => {
            let config = cutover_config::Config::load_checked(&global.config)
                .map_err(|e| Failure::config(&e))?;
            serve::run(config, args).await
        }
        Command::Config(ConfigCommand::Check) => commands::config_check(global),
        Command::Deploy(args) => commands::deploy(global, args).await,
        Command::Status(args) => commands::status(global, args).await,
        Command::History(args) => commands::history(global, args).await,
        Command::Rollback(args) => commands::rollback(global, args).await,
        Command::Promote(args) => commands::promote(global, &args.app).await,
        Command::Abort(args) => commands::abort(global, args).await,
        Command::Logs(args) => commands::logs(global, args).await,
        Command::NginxConfig(args) => nginx_config::print(global, &args.app),
        Command::Upgrade(args) => commands::upgrade(global, args).await,
    }
}

// The proxy allocates and frees small buffers and heads on every request;
// mimalloc's thread-local free lists make that cheaper than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
