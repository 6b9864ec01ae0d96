//! The commands that talk to the daemon, and `config check`.

use crate::cli::{
    AbortArgs, DeployArgs, GlobalArgs, HistoryArgs, LogsArgs, RollbackArgs, StatusArgs, UpgradeArgs,
};
use crate::client::{segment, Client, ClientError};
use crate::failure::{Failure, Outcome, FAILED, USAGE};
use crate::group_commands;
use crate::model::{AppStatus, Deployment, DeploymentDetail, Event};
use crate::output;
use crate::sse::SseReader;
use cutover_config::Config;
use http::Method;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Writes to stdout, control and bidi characters escaped (text from
/// outside — refs, reasons, release output — is shown as it is, never
/// interpreted by the terminal); a closed stdout (`| head`) is not an
/// error worth a panic.
fn print(text: &str) {
    write_raw(cutover_config::display::escape(text).as_bytes());
}

fn write_raw(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
}

fn println(text: &str) {
    print(&format!("{text}\n"));
}

/// JSON on stdout; characters JSON allows raw but a terminal would act on
/// (bidi) are written as `\uXXXX`, which decodes to the same value.
pub fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    write_raw(cutover_config::display::escape_json(&format!("{text}\n")).as_bytes());
}

fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, Failure> {
    serde_json::from_value(value.clone())
        .map_err(|e| Failure::failed(format!("unexpected answer from the cutover daemon: {e}")))
}

/// The admin API: `--admin` (a unix socket path, or a URL with the token
/// of `CUTOVER_TOKEN`), else `admin.socket` of the configuration.
pub fn client(global: &GlobalArgs) -> Result<Client, Failure> {
    if let Some(admin) = &global.admin {
        let text = admin.to_string_lossy();
        if text.contains("://") {
            let token = std::env::var(crate::client::TOKEN_ENV).ok();
            return Client::remote(&text, token.as_deref(), global.admin_ca.as_deref())
                .map_err(Failure::usage);
        }
        let path = text
            .strip_prefix("unix:")
            .map_or_else(|| admin.clone(), PathBuf::from);
        return Ok(Client::new(path));
    }
    let config = Config::load(&global.config).map_err(|e| Failure::config(&e))?;
    Ok(Client::new(config.admin.socket))
}

pub fn config_check(global: &GlobalArgs) -> Outcome {
    let file = global.config.display().to_string();
    match Config::load_checked(&global.config) {
        Ok(config) => {
            let names: Vec<&str> = config.apps.iter().map(|app| app.name.as_str()).collect();
            if global.json {
                print_json(&json!({ "ok": true, "file": file, "apps": names }));
            } else {
                let count = match names.len() {
                    0 => "0 apps".to_string(),
                    1 => format!("1 app ({})", names[0]),
                    n => format!("{n} apps ({})", names.join(", ")),
                };
                println(&format!("ok: {file}: {count}"));
            }
            Ok(())
        }
        Err(error) if global.json => {
            let mut body = json!({ "ok": false, "file": file, "error": error.to_string(), "message": error.message });
            if let Some((line, column)) = error.position {
                body["line"] = json!(line);
                body["column"] = json!(column);
            }
            print_json(&body);
            Err(Failure::quiet(USAGE))
        }
        Err(error) => Err(Failure::config(&error)),
    }
}

pub async fn deploy(global: &GlobalArgs, args: &DeployArgs) -> Outcome {
    let client = client(global)?;
    let by_version = args.git_ref.is_none();
    if !args.set.is_empty() || (by_version && group_commands::is_group(&client, &args.app).await?) {
        let version = args.version.as_deref();
        let wait = args.wait.wait();
        return group_commands::deploy(&client, global.json, &args.app, version, &args.set, wait)
            .await;
    }
    let body = match &args.git_ref {
        Some(git_ref) => json!({ "ref": git_ref, "force": args.force }),
        None => json!({ "version": args.version, "force": args.force }),
    };
    let path = format!("/v1/apps/{}/deployments", segment(&args.app));
    let record: Value = client.post(&path, Some(&body)).await?;
    finish(&client, global.json, record, args.wait.wait()).await
}

pub async fn rollback(global: &GlobalArgs, args: &RollbackArgs) -> Outcome {
    let client = client(global)?;
    if group_commands::is_group(&client, &args.app).await? {
        return group_commands::rollback(&client, global.json, &args.app, args.wait.wait()).await;
    }
    let path = format!("/v1/apps/{}/rollback", segment(&args.app));
    let record: Value = client.post(&path, None).await?;
    finish(&client, global.json, record, args.wait.wait()).await
}

/// After a deployment was queued: print it, or follow it to its end.
async fn finish(client: &Client, json: bool, record: Value, wait: bool) -> Outcome {
    let deployment: Deployment = parse(&record)?;
    if !wait {
        if json {
            print_json(&record);
        } else {
            println(&output::summary_line(&deployment));
        }
        return Ok(());
    }
    let (value, detail) = follow(client, &deployment, !json).await?;
    let deployment = detail.deployment;
    if json {
        print_json(&value);
    } else if deployment.succeeded() {
        println(&output::outcome_line(&deployment));
    } else {
        eprintln!(
            "{}",
            cutover_config::display::escape(&output::outcome_line(&deployment))
        );
    }
    if deployment.succeeded() {
        Ok(())
    } else {
        Err(Failure::quiet(FAILED))
    }
}

/// How often a broken event stream is retried before giving up.
const MAX_STREAM_RETRIES: u32 = 20;

/// Follows a deployment's events to its terminal state, printing each when
/// `print_events`. A broken event stream falls back to the deployment's
/// detail, and is resumed after the last event seen.
async fn follow(
    client: &Client,
    deployment: &Deployment,
    print_events: bool,
) -> Result<(Value, DeploymentDetail), Failure> {
    let mut last_id: Option<i64> = None;
    let mut retries = 0;
    loop {
        let streamed = stream_events(client, deployment, &mut last_id, print_events).await;
        if let Err(ClientError::Api { .. }) = &streamed {
            // The API refused the stream (e.g. unknown deployment): the same
            // would answer the detail; report it.
            if let Err(error) = streamed {
                return Err(error.into());
            }
        }
        let value: Value = client
            .get(&format!("/v1/deployments/{}", deployment.id))
            .await?;
        let detail: DeploymentDetail = parse(&value)?;
        for event in &detail.events {
            if last_id.is_none_or(|last| event.id > last) {
                if print_events {
                    println(&output::event_line(deployment, event));
                }
                last_id = Some(event.id);
            }
        }
        if detail.deployment.is_terminal() {
            return Ok((value, detail));
        }
        retries += 1;
        if retries > MAX_STREAM_RETRIES {
            let why = match streamed {
                Err(error) => error.to_string(),
                Ok(()) => "the event stream keeps ending before the deployment does".to_string(),
            };
            return Err(Failure::failed(format!(
                "lost track of deployment {} ({why}); it is still {}: see `cutover status {}`",
                deployment.id, detail.deployment.state, deployment.app
            )));
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(retries.min(10)))).await;
    }
}

/// Reads the SSE stream until it ends or breaks.
async fn stream_events(
    client: &Client,
    deployment: &Deployment,
    last_id: &mut Option<i64>,
    print_events: bool,
) -> Result<(), ClientError> {
    let path = format!("/v1/deployments/{}/events", deployment.id);
    let mut headers = vec![("accept", "text/event-stream".to_string())];
    if let Some(last) = last_id {
        headers.push(("last-event-id", last.to_string()));
    }
    let response = client.send(Method::GET, &path, None, &headers).await?;
    let mut body = response.into_body();
    let mut reader = SseReader::default();
    while let Some(chunk) = client.next_chunk(&mut body).await? {
        for sse in reader.push(&chunk) {
            let Ok(event) = serde_json::from_str::<Event>(&sse.data) else {
                continue;
            };
            if last_id.is_some_and(|last| event.id <= last) {
                continue;
            }
            *last_id = Some(event.id);
            if print_events {
                println(&output::event_line(deployment, &event));
            }
        }
    }
    Ok(())
}

pub async fn status(global: &GlobalArgs, args: &StatusArgs) -> Outcome {
    let client = client(global)?;
    if let Some(name) = &args.app {
        if group_commands::is_group(&client, name).await? {
            return group_commands::status(&client, global.json, name).await;
        }
    }
    let value: Value = match &args.app {
        Some(app) => client.get(&format!("/v1/apps/{}", segment(app))).await?,
        None => client.get("/v1/apps").await?,
    };
    if global.json {
        print_json(&value);
        return Ok(());
    }
    let apps: Vec<AppStatus> = match &args.app {
        Some(_) => vec![parse(&value)?],
        None => parse(&value)?,
    };
    if apps.is_empty() {
        println("no apps are configured");
    } else {
        print(&output::status_table(&apps));
    }
    if args.app.is_none() {
        print(&crate::certs::status_lines(&client).await);
    }
    Ok(())
}

pub async fn history(global: &GlobalArgs, args: &HistoryArgs) -> Outcome {
    let client = client(global)?;
    if group_commands::is_group(&client, &args.app).await? {
        return group_commands::history(&client, global.json, &args.app, args.limit).await;
    }
    let value: Value = client
        .get(&format!(
            "/v1/apps/{}/deployments?limit={}",
            segment(&args.app),
            args.limit
        ))
        .await?;
    if global.json {
        print_json(&value);
        return Ok(());
    }
    let deployments: Vec<Deployment> = parse(&value)?;
    if deployments.is_empty() {
        println(&format!("{} has no deployments yet", args.app));
    } else {
        print(&output::history_table(&deployments));
    }
    Ok(())
}

pub async fn promote(global: &GlobalArgs, app: &str) -> Outcome {
    let client = client(global)?;
    if group_commands::is_group(&client, app).await? {
        return group_commands::promote(&client, global.json, app).await;
    }
    let value: Value = client
        .post(&format!("/v1/apps/{}/promote", segment(app)), None)
        .await?;
    if global.json {
        print_json(&value);
    } else {
        let d: Deployment = parse(&value)?;
        println(&format!(
            "deployment {} of {} promoted: {} ({})",
            d.id, d.app, d.version, d.state
        ));
    }
    Ok(())
}

/// Asks for the abort, then (by default) waits quietly for the deployment
/// to stop and reports how it ended.
pub async fn abort(global: &GlobalArgs, args: &AbortArgs) -> Outcome {
    let client = client(global)?;
    if group_commands::is_group(&client, &args.app).await? {
        return group_commands::abort(&client, global.json, &args.app, args.wait.wait()).await;
    }
    let record: Value = client
        .post(&format!("/v1/apps/{}/abort", segment(&args.app)), None)
        .await?;
    let deployment: Deployment = parse(&record)?;
    if !args.wait.wait() {
        if global.json {
            print_json(&record);
        } else {
            println(&format!(
                "deployment {} of {}: abort requested",
                deployment.id, deployment.app
            ));
        }
        return Ok(());
    }
    let (value, detail) = follow(&client, &deployment, false).await?;
    let deployment = detail.deployment;
    if global.json {
        print_json(&value);
    } else if !deployment.succeeded() {
        println(&output::outcome_line(&deployment));
    }
    if deployment.succeeded() {
        Err(Failure::failed(format!(
            "the abort came too late: deployment {} of {} had already switched and succeeded; `cutover rollback {}` returns to the previous release",
            deployment.id, deployment.app, deployment.app
        )))
    } else {
        Ok(())
    }
}

pub async fn logs(global: &GlobalArgs, args: &LogsArgs) -> Outcome {
    let client = client(global)?;
    let mut path = format!("/v1/apps/{}/logs?tail={}", segment(&args.app), args.tail);
    if let Some(slot) = args.slot {
        path.push_str(&format!("&slot={}", slot.as_str()));
    }
    if args.follow {
        path.push_str("&follow=true");
    }
    let response = client.send(Method::GET, &path, None, &[]).await?;
    let mut body = response.into_body();
    let mut stdout = std::io::stdout();
    let mut text = Utf8Chunks::default();
    while let Some(chunk) = client.next_chunk(&mut body).await? {
        let shown = cutover_config::display::escape(&text.push(&chunk)).into_owned();
        if stdout
            .write_all(shown.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // stdout closed (e.g. `| head`): the reader has what it wanted.
            return Ok(());
        }
    }
    Ok(())
}

/// Text from a byte stream whose chunks may split a UTF-8 sequence: the
/// incomplete end waits for the next chunk; invalid bytes become U+FFFD.
#[derive(Default)]
struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(complete);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
}

/// How long `cutover upgrade` waits for running deployments to end.
const UPGRADE_WAIT_LIMIT: Duration = Duration::from_secs(3600);

/// `cutover upgrade`: the daemon starts the new binary and hands over to
/// it; prints each step, and the PID serving now. Exits 1 with the reason
/// when the new process did not take over (the old one serves on). While a
/// deployment runs or is queued the daemon refuses (nothing half done is
/// ever handed over): then this waits for it to end and asks again, unless
/// `--no-wait`.
pub async fn upgrade(global: &GlobalArgs, args: &UpgradeArgs) -> Outcome {
    let client = client(global)?;
    let binary = match &args.binary {
        // The daemon runs elsewhere: give it an absolute path.
        Some(path) => Some(
            std::path::absolute(path)
                .map_err(|e| Failure::usage(format!("--binary {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let body = json!({ "binary": binary });
    let waiting_until = std::time::Instant::now() + UPGRADE_WAIT_LIMIT;
    let mut told = false;
    let (value, report) = loop {
        let (status, value) = client
            .json_any_status(Method::POST, "/v1/upgrade", Some(&body))
            .await?;
        let report: cutover_api::UpgradeReport = match parse(&value) {
            Ok(report) => report,
            // Refused before it started (e.g. by an older daemon): the error.
            Err(_) => {
                let message = value["error"].as_str().unwrap_or("unexpected answer");
                return Err(Failure::failed(format!(
                    "cutover upgrade failed ({status}): {message}"
                )));
            }
        };
        if !report.busy || args.no_wait || std::time::Instant::now() >= waiting_until {
            break (value, report);
        }
        if !told && !global.json {
            let why = report.error.as_deref().unwrap_or("a deployment runs");
            println(&format!(
                "- waiting for deployments to end before upgrading ({why})"
            ));
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if global.json {
        print_json(&value);
    } else {
        for step in &report.steps {
            println(&format!("- {step}"));
        }
    }
    match (&report.error, report.pid) {
        (None, Some(pid)) => {
            if !global.json {
                println(&format!("upgraded: cutover now runs as pid {pid}"));
            }
            Ok(())
        }
        (None, None) => Ok(()),
        (Some(error), _) => Err(Failure::failed(format!(
            "upgrade failed: {error}; the running cutover keeps serving"
        ))),
    }
}
