//! The command line, as clap parses it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Zero-downtime blue/green deployments behind a built-in reverse proxy"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the command line. The global `--json` and `--admin` are
/// accepted everywhere (before or after the subcommand) but shown only in
/// the help of commands where they mean something.
pub fn parse() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os())
}

fn parse_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command();
    // A subcommand that has an argument already does not get the global
    // one propagated: give it a hidden copy (same id, so its value still
    // lands in `GlobalArgs`).
    let global = |id: &str| {
        command
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .cloned()
            .map(|arg| arg.hide(true))
    };
    let (admin, ca, json) = (global("admin"), global("admin_ca"), global("json"));
    let hide = |command: clap::Command, args: &[&Option<clap::Arg>]| {
        args.iter()
            .filter_map(|arg| (*arg).clone())
            .fold(command, clap::Command::arg)
    };
    let command = command
        .clone()
        .mut_subcommand("serve", |c| hide(c, &[&admin, &ca]))
        .mut_subcommand("config", |c| {
            hide(c, &[&admin, &ca]).mut_subcommand("check", |c| hide(c, &[&admin, &ca]))
        })
        .mut_subcommand("nginx-config", |c| hide(c, &[&admin, &ca, &json]))
        .mut_subcommand("logs", |c| hide(c, &[&json]));
    let matches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        default_value = "cutover.toml"
    )]
    pub config: PathBuf,
    /// Print machine-readable JSON instead of text (errors too); with `serve`: JSON logs.
    #[arg(long, global = true)]
    pub json: bool,
    /// The daemon's admin API: its unix socket (default: `admin.socket` of
    /// the configuration), or `https://host:9900` (`[admin] listen`, then
    /// the token comes from CUTOVER_TOKEN; `http://` only to loopback).
    #[arg(long, global = true, value_name = "PATH|URL", env = "CUTOVER_ADMIN")]
    pub admin: Option<PathBuf>,
    /// PEM file of the authority that signed the admin API's certificate
    /// (a private CA or a self-signed certificate), trusted instead of the
    /// system's authorities for `--admin https://…`.
    #[arg(long, global = true, value_name = "FILE", env = "CUTOVER_CA_FILE")]
    pub admin_ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: proxy, deployment engine and admin API.
    Serve(ServeArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Deploy a version of an app (or build a git ref of it) and, by default, follow it to the end.
    Deploy(DeployArgs),
    /// Show each app's live slot, release, health and current deployment.
    Status(StatusArgs),
    /// List an app's deployments, newest first.
    History(HistoryArgs),
    /// Certificates of [proxy.acme]: list them (`certs`) or order one now (`certs renew NAME`).
    Certs(CertsArgs),
    /// Make the previous release of an app live again.
    Rollback(RollbackArgs),
    /// Promote the deployment of an app that waits for promotion.
    Promote(AppArg),
    /// Abort the deployment of an app that is in progress and wait until it stopped.
    Abort(AbortArgs),
    /// Print the output of an app's release.
    Logs(LogsArgs),
    /// Print the nginx site config of an app (nginx front mode); needs only the config file.
    NginxConfig(AppArg),
    /// Replace the running daemon with a new binary without dropping a request.
    Upgrade(UpgradeArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: Option<CertsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Order a new certificate for NAME now and wait until it is served.
    Renew { name: String },
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The new cutover executable (default: the daemon's own executable, read again from disk).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Refuse at once while a deployment runs or is queued, instead of
    /// waiting for it to end (at most an hour) and then upgrading.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// How the daemon logs to stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration file without starting anything.
    Check,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Follow the deployment until it ends (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Return at once, without following the deployment.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
}

impl WaitArgs {
    pub fn wait(&self) -> bool {
        !self.no_wait
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["version", "git_ref", "set"])))]
pub struct DeployArgs {
    /// The app (an `[[app]] name`) or release group (a `[[group]] name`) to deploy.
    pub app: String,
    /// The version to deploy (1-128 letters, digits, `.`, `_`, `-`, `+`).
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Build this branch or tag (or full ref) of the app's [app.source] and
    /// deploy the result, like a webhook would.
    #[arg(long = "ref", value_name = "REF", conflicts_with_all = ["version", "set"])]
    pub git_ref: Option<String>,
    /// For a release group: the version of one of its apps (repeatable);
    /// `--version` gives the others theirs.
    #[arg(long = "set", value_name = "APP=V")]
    pub set: Vec<String>,
    /// Deploy even when this version (or commit) is already live, or the
    /// commit is older than the live one.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this app (an `[[app]] name` of the configuration).
    pub app: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The app (an `[[app]] name` of the configuration).
    pub app: String,
    /// How many deployments to list (1-1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The app (an `[[app]] name` of the configuration).
    pub app: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The app (an `[[app]] name` of the configuration).
    pub app: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct AppArg {
    /// The app (an `[[app]] name` of the configuration).
    pub app: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlotArg {
    Blue,
    Green,
}

impl SlotArg {
    pub fn slot(self) -> cutover_config::Slot {
        match self {
            SlotArg::Blue => cutover_config::Slot::Blue,
            SlotArg::Green => cutover_config::Slot::Green,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.slot().as_str()
    }
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app (an `[[app]] name` of the configuration).
    pub app: String,
    /// The slot whose release to show (default: the live one).
    #[arg(long, value_enum)]
    pub slot: Option<SlotArg>,
    /// Keep printing what the release writes.
    #[arg(long, short)]
    pub follow: bool,
    /// How many of the last lines to print first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub tail: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cutover").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before = parse(&["--config", "a.toml", "--json", "status"]).unwrap();
        assert_eq!(before.global.config, PathBuf::from("a.toml"));
        assert!(before.global.json);
        let after = parse(&[
            "status",
            "web",
            "--config",
            "b.toml",
            "--admin",
            "/tmp/s.sock",
        ])
        .unwrap();
        assert_eq!(after.global.config, PathBuf::from("b.toml"));
        assert_eq!(after.global.admin, Some(PathBuf::from("/tmp/s.sock")));
        let nested = parse(&["config", "check", "--config", "c.toml"]).unwrap();
        assert_eq!(nested.global.config, PathBuf::from("c.toml"));
    }

    #[test]
    fn hidden_global_options_still_reach_the_global_args() {
        let parse = |args: &[&str]| {
            parse_from(
                std::iter::once("cutover")
                    .chain(args.iter().copied())
                    .map(std::ffi::OsString::from),
            )
            .unwrap()
        };
        assert!(parse(&["config", "check", "--json"]).global.json);
        assert!(parse(&["--json", "config", "check"]).global.json);
        let serve = parse(&["serve", "--admin", "/tmp/x.sock"]);
        assert_eq!(serve.global.admin, Some(PathBuf::from("/tmp/x.sock")));
        assert!(parse(&["nginx-config", "web", "--json"]).global.json);
        assert!(
            parse(&["logs", "web", "--json", "--admin", "/s"])
                .global
                .json
        );
    }

    #[test]
    fn wait_is_the_default_and_the_last_flag_wins() {
        let deploy = |args: &[&str]| match parse(args).unwrap().command {
            Command::Deploy(d) => d,
            other => panic!("{other:?}"),
        };
        assert!(deploy(&["deploy", "web", "--version", "v2"]).wait.wait());
        assert!(!deploy(&["deploy", "web", "--version", "v2", "--no-wait"])
            .wait
            .wait());
        assert!(
            deploy(&["deploy", "web", "--version", "v2", "--no-wait", "--wait"])
                .wait
                .wait()
        );
        assert!(
            !deploy(&["deploy", "web", "--version", "v2", "--wait", "--no-wait"])
                .wait
                .wait()
        );
    }

    #[test]
    fn deploy_takes_a_version_or_a_ref() {
        let deploy = |args: &[&str]| match parse(args).unwrap().command {
            Command::Deploy(d) => d,
            other => panic!("{other:?}"),
        };
        let by_ref = deploy(&["deploy", "web", "--ref", "v1-cicd"]);
        assert_eq!(by_ref.git_ref.as_deref(), Some("v1-cicd"));
        assert_eq!(by_ref.version, None);
        assert!(parse(&["deploy", "web", "--ref", "x", "--version", "v1"]).is_err());
    }

    #[test]
    fn deploy_of_a_group_takes_set_pairs_with_or_without_a_version() {
        let deploy = |args: &[&str]| match parse(args).unwrap().command {
            Command::Deploy(d) => d,
            other => panic!("{other:?}"),
        };
        let sets = deploy(&["deploy", "shop", "--set", "web=v1", "--set", "api=v2"]);
        assert_eq!(sets.set, vec!["web=v1", "api=v2"]);
        let mixed = deploy(&["deploy", "shop", "--version", "v3", "--set", "api=v2"]);
        assert_eq!(mixed.version.as_deref(), Some("v3"));
        assert!(parse(&["deploy", "shop", "--ref", "x", "--set", "a=b"]).is_err());
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&["deploy", "web"]).is_err());
        assert!(parse(&["history", "web", "--limit", "0"]).is_err());
        assert!(parse(&["logs", "web", "--slot", "red"]).is_err());
        assert_eq!(parse(&["nope"]).unwrap_err().exit_code(), 2);
    }
}
