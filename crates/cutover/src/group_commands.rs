//! `deploy`, `rollback`, `abort`, `promote` and `history` of a release
//! group (`[[group]]`): the same commands, given a group's name.

use crate::client::{segment, Client, ClientError};
use crate::failure::{Failure, Outcome, FAILED};
use http::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Writes a line to stdout; a closed stdout (`| head`) is not an error.
fn say(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}

fn say_json(value: &Value) {
    say(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// How often a followed group deployment is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Whether `name` is a release group of the daemon.
pub async fn is_group(client: &Client, name: &str) -> Result<bool, Failure> {
    let path = format!("/v1/groups/{}", segment(name));
    match client.get::<Value>(&path).await {
        Ok(_) => Ok(true),
        Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => Ok(false),
        Err(other) => Err(other.into()),
    }
}

/// `--set app=V` pairs as a map; a malformed one is a usage error.
pub fn versions(sets: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut versions = BTreeMap::new();
    for set in sets {
        let Some((app, version)) = set.split_once('=') else {
            return Err(Failure::usage(format!(
                "--set {set}: use --set APP=VERSION"
            )));
        };
        versions.insert(app.to_string(), version.to_string());
    }
    Ok(versions)
}

pub async fn deploy(
    client: &Client,
    json: bool,
    group: &str,
    version: Option<&str>,
    sets: &[String],
    wait: bool,
) -> Outcome {
    let body = json!({ "version": version, "versions": versions(sets)? });
    let path = format!("/v1/groups/{}/deployments", segment(group));
    let detail: Value = client.post(&path, Some(&body)).await?;
    finish(client, json, group, detail, wait).await
}

pub async fn rollback(client: &Client, json: bool, group: &str, wait: bool) -> Outcome {
    let path = format!("/v1/groups/{}/rollback", segment(group));
    let detail: Value = client.post(&path, None).await?;
    finish(client, json, group, detail, wait).await
}

/// Asks for the abort and (by default) waits for every member to stop.
pub async fn abort(client: &Client, json: bool, group: &str, wait: bool) -> Outcome {
    let path = format!("/v1/groups/{}/abort", segment(group));
    let detail: Value = client.post(&path, None).await?;
    if !wait {
        return print_detail(json, &detail, "abort requested");
    }
    let done = follow(client, group, &detail, !json).await?;
    print_detail(json, &done, "")
}

pub async fn promote(client: &Client, json: bool, group: &str) -> Outcome {
    let path = format!("/v1/groups/{}/promote", segment(group));
    let detail: Value = client.post(&path, None).await?;
    print_detail(json, &detail, "promoted")
}

/// `cutover status GROUP`: its apps and its current (or last) deployment.
pub async fn status(client: &Client, json: bool, group: &str) -> Outcome {
    let status: Value = client
        .get(&format!("/v1/groups/{}", segment(group)))
        .await?;
    if json {
        say_json(&status);
        return Ok(());
    }
    let apps: Vec<&str> = status["apps"]
        .as_array()
        .map(|apps| apps.iter().map(text).collect())
        .unwrap_or_default();
    say(&format!("group {group}: {}", apps.join(", ")));
    match (&status["current"], &status["last"]) {
        (current, _) if current.is_object() => say(&format!("in progress: {}", line(current))),
        (_, last) if last.is_object() => say(&format!("last: {}", line(last))),
        _ => say("no group deployment yet"),
    }
    Ok(())
}

pub async fn history(client: &Client, json: bool, group: &str, limit: u32) -> Outcome {
    let path = format!("/v1/groups/{}/deployments?limit={limit}", segment(group));
    let list: Value = client.get(&path).await?;
    if json {
        say_json(&list);
        return Ok(());
    }
    let entries = list.as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        say(&format!("group {group} has no deployments yet"));
    }
    for entry in &entries {
        say(&line(entry));
    }
    Ok(())
}

/// "group deployment 3 of shop: succeeded — web v2 (succeeded), api v7 (succeeded)"
fn line(detail: &Value) -> String {
    let members: Vec<String> = detail["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| {
                    format!(
                        "{} {} ({})",
                        text(&m["app"]),
                        text(&m["version"]),
                        text(&m["state"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let reason = match detail["reason"].as_str() {
        Some(reason) => format!(": {reason}"),
        None => String::new(),
    };
    format!(
        "group deployment {} of {}: {} — {}{reason}",
        detail["id"],
        text(&detail["group"]),
        text(&detail["state"]),
        members.join(", ")
    )
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

fn print_detail(json: bool, detail: &Value, what: &str) -> Outcome {
    if json {
        say_json(detail);
    } else if what.is_empty() {
        say(&line(detail));
    } else {
        say(&format!("{} ({what})", line(detail)));
    }
    Ok(())
}

fn is_terminal(detail: &Value) -> bool {
    matches!(
        detail["state"].as_str(),
        Some("succeeded" | "failed" | "aborted" | "rolled_back")
    )
}

/// Prints the group deployment, or follows it to its end printing each
/// member's state change; fails unless it succeeded.
async fn finish(client: &Client, json: bool, group: &str, detail: Value, wait: bool) -> Outcome {
    if !wait {
        return print_detail(json, &detail, "queued");
    }
    let done = follow(client, group, &detail, !json).await?;
    if json {
        say_json(&done);
    } else {
        say(&line(&done));
    }
    match done["state"].as_str() {
        Some("succeeded") => Ok(()),
        _ => Err(Failure::quiet(FAILED)),
    }
}

async fn follow(
    client: &Client,
    group: &str,
    detail: &Value,
    print: bool,
) -> Result<Value, Failure> {
    let path = format!("/v1/groups/{}/deployments/{}", segment(group), detail["id"]);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let now: Value = client.get(&path).await?;
        for member in now["members"].as_array().into_iter().flatten() {
            let (app, state) = (
                text(&member["app"]).to_string(),
                text(&member["state"]).to_string(),
            );
            if print && seen.get(&app) != Some(&state) {
                say(&format!("  {app} {}: {state}", text(&member["version"])));
            }
            seen.insert(app, state);
        }
        if is_terminal(&now) {
            return Ok(now);
        }
        tokio::time::sleep(POLL).await;
    }
}
