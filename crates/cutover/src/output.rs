//! Text output: tables, durations, times. No colours.

use crate::model::{AppStatus, Deployment, Event};
use cutover_store::DeploymentState;
use std::time::{Duration, UNIX_EPOCH};

/// Renders rows under a header, columns separated by two spaces, without
/// trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < columns {
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[i].saturating_sub(cell.chars().count()),
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `3.21s`, `2m05s`, `1h02m03s`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        return format!("{:.2}s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

/// A unix-millisecond time as RFC 3339 UTC, e.g. `2025-05-01T12:00:00Z`.
pub fn time_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `[   1.23s] checking     health-checking green at 127.0.0.1:8082/health`
pub fn event_line(deployment: &Deployment, event: &Event) -> String {
    let elapsed = (event.at - deployment.created_at).max(0) as f64 / 1000.0;
    format!("[{elapsed:>7.2}s] {:<12} {}", event.state, event.message)
}

/// The last line of a followed deployment.
pub fn outcome_line(deployment: &Deployment) -> String {
    let reason = deployment
        .reason
        .as_deref()
        .unwrap_or("no reason was recorded");
    match deployment.lifecycle() {
        Some(DeploymentState::Succeeded) => {
            let took = deployment.finished_at.map_or(String::from("?"), |end| {
                duration_ms(end - deployment.created_at)
            });
            let slot = deployment.target_slot.as_deref().unwrap_or("its slot");
            format!(
                "deployment {} of {} succeeded in {took}: {} {} is live in {slot}",
                deployment.id, deployment.app, deployment.app, deployment.version
            )
        }
        Some(DeploymentState::RolledBack) => {
            format!("deployment {} rolled back: {reason}", deployment.id)
        }
        _ => format!(
            "deployment {} {}: {reason}",
            deployment.id, deployment.state
        ),
    }
}

/// One line about a deployment that is not followed.
pub fn summary_line(deployment: &Deployment) -> String {
    format!(
        "deployment {} of {}: {} ({})",
        deployment.id, deployment.app, deployment.version, deployment.state
    )
}

fn dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

pub fn status_table(apps: &[AppStatus]) -> String {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|app| {
            vec![
                app.name.clone(),
                dash(app.live_slot.as_deref()),
                dash(app.live_version.as_deref()),
                app.health.clone(),
                restarts_cell(app),
                in_flight_cell(app),
                app.current_deployment
                    .as_ref()
                    .map_or("-".to_string(), current_deployment),
                if app.queued.is_empty() {
                    "-".to_string()
                } else {
                    app.queued
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ]
        })
        .collect();
    let mut text = table(
        &[
            "APP",
            "LIVE",
            "VERSION",
            "HEALTH",
            "RESTARTS",
            "IN-FLIGHT",
            "DEPLOYMENT",
            "QUEUED",
        ],
        &rows,
    );
    let endpoints = endpoints_table(apps);
    if !endpoints.is_empty() {
        text.push('\n');
        text.push_str(&endpoints);
    }
    text
}

/// Each endpoint of each live release (one per swarm task): where it
/// answers, whether it is in rotation, its requests in flight.
fn endpoints_table(apps: &[AppStatus]) -> String {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .flat_map(|app| {
            app.endpoints.iter().map(|e| {
                vec![
                    app.name.clone(),
                    dash(Some(&e.label)),
                    e.addr.clone(),
                    if e.healthy {
                        "healthy"
                    } else {
                        "out of rotation"
                    }
                    .to_string(),
                    e.in_flight.to_string(),
                    e.requests.to_string(),
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(
        &[
            "APP",
            "ENDPOINT",
            "ADDRESS",
            "HEALTH",
            "IN-FLIGHT",
            "REQUESTS",
        ],
        &rows,
    )
}

/// Restarts of the live release since the daemon started, and what the
/// supervisor does now when it is not just watching: `2 (backing off)`,
/// `5 (gave up)`, `0 (down)`; `swarm` when the orchestrator restarts.
fn restarts_cell(app: &AppStatus) -> String {
    let Some(s) = &app.supervision else {
        return "-".to_string();
    };
    if s.by != "cutover" {
        return format!("by {}", s.by);
    }
    match s.state.as_str() {
        "watching" => s.restarts.to_string(),
        state => format!("{} ({})", s.restarts, state.replace('_', " ")),
    }
}

/// `3`, and while a deployment drains the previous release `0 (+1 on
/// blue v5, draining)`: requests still finishing there are in flight too.
fn in_flight_cell(app: &AppStatus) -> String {
    match &app.draining {
        Some(old) => format!(
            "{} (+{} on {} {}, draining)",
            app.in_flight, old.in_flight, old.slot, old.version
        ),
        None => app.in_flight.to_string(),
    }
}

/// `7 (v2, checking)`; a build in progress shows as such:
/// `7 (v2-cicd-1a2b3c4d5e6f, preparing: building refs/tags/v2-cicd)`.
fn current_deployment(d: &Deployment) -> String {
    match d
        .source
        .as_ref()
        .and_then(|s| Some((s, s.build.as_deref()?)))
    {
        Some((source, build @ ("queued" | "fetching" | "building"))) => format!(
            "{} ({}, {}: {build} {})",
            d.id, d.version, d.state, source.git_ref
        ),
        _ => format!("{} ({}, {})", d.id, d.version, d.state),
    }
}

/// What started a deployment built from git: `github refs/tags/v2 1a2b3c4d5e6f`.
fn source_cell(d: &Deployment) -> String {
    d.source.as_ref().map_or("-".to_string(), |s| {
        format!(
            "{} {} {}",
            s.provider,
            s.git_ref,
            &s.commit[..12.min(s.commit.len())]
        )
    })
}

/// The first line of a reason, cut to `max` characters.
pub fn truncate(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    let more_lines = text.trim_end().lines().count() > 1;
    if first.chars().count() > max {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else if more_lines {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

pub fn history_table(deployments: &[Deployment]) -> String {
    // Apps built from git get the trigger's facts: provider, ref, commit
    // and the provider's delivery id.
    let from_git = deployments.iter().any(|d| d.source.is_some());
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|d| {
            let start = d.started_at.unwrap_or(d.created_at);
            let duration = match d.finished_at {
                Some(end) => duration_ms(end - start),
                None => "-".to_string(),
            };
            let mut row = vec![
                d.id.to_string(),
                d.trigger.clone(),
                d.version.clone(),
                dash(d.from_version.as_deref()),
                dash(d.target_slot.as_deref()),
                d.state.clone(),
                duration,
                time_ms(start),
            ];
            if from_git {
                row.push(source_cell(d));
                row.push(dash(d.source.as_ref().and_then(|s| s.delivery.as_deref())));
            }
            row.push(
                d.reason
                    .as_deref()
                    .map_or(String::new(), |r| truncate(r, 60)),
            );
            row
        })
        .collect();
    let mut header = vec![
        "ID",
        "TRIGGER",
        "VERSION",
        "FROM",
        "SLOT",
        "STATE",
        "DURATION",
        "STARTED (UTC)",
    ];
    if from_git {
        header.extend(["SOURCE", "DELIVERY"]);
    }
    header.push("REASON");
    table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(state: &str) -> Deployment {
        Deployment {
            id: 12,
            app: "web".into(),
            trigger: "cli".into(),
            version: "v2".into(),
            target_slot: Some("green".into()),
            from_version: Some("v1".into()),
            state: state.into(),
            reason: None,
            created_at: 1_000,
            started_at: Some(1_100),
            finished_at: Some(4_210),
            source: None,
        }
    }

    #[test]
    fn event_lines_pad_elapsed_and_state() {
        let event = Event {
            id: 3,
            at: 2_230,
            state: "checking".into(),
            message: "health-checking green at 127.0.0.1:8082/health".into(),
        };
        assert_eq!(
            event_line(&deployment("checking"), &event),
            "[   1.23s] checking     health-checking green at 127.0.0.1:8082/health"
        );
    }

    #[test]
    fn outcome_lines() {
        assert_eq!(
            outcome_line(&deployment("succeeded")),
            "deployment 12 of web succeeded in 3.21s: web v2 is live in green"
        );
        let mut failed = deployment("failed");
        failed.reason = Some("green never became healthy\nlog tail".into());
        assert_eq!(
            outcome_line(&failed),
            "deployment 12 failed: green never became healthy\nlog tail"
        );
        assert_eq!(
            outcome_line(&deployment("rolled_back")),
            "deployment 12 rolled back: no reason was recorded"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(3_210), "3.21s");
        assert_eq!(duration_ms(125_000), "2m05s");
        assert_eq!(duration_ms(3_723_000), "1h02m03s");
        assert_eq!(duration_ms(-5), "0.00s");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time_ms(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn tables_align_without_trailing_spaces() {
        let text = table(
            &["A", "LONGER", "C"],
            &[vec!["xyz".into(), "1".into(), "".into()]],
        );
        assert_eq!(text, "A    LONGER  C\nxyz  1\n");
    }

    #[test]
    fn git_deployments_show_their_trigger_and_build() {
        let mut built = deployment("succeeded");
        built.trigger = "webhook".into();
        built.source = Some(crate::model::Source {
            provider: "github".into(),
            delivery: Some("72d3162e-cc78".into()),
            git_ref: "refs/tags/v2-cicd".into(),
            commit: "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d".into(),
            build: Some("built".into()),
        });
        let table = history_table(&[built.clone(), deployment("failed")]);
        assert!(table.contains("SOURCE"), "{table}");
        assert!(
            table.contains("github refs/tags/v2-cicd 1a2b3c4d5e6f  72d3162e-cc78"),
            "{table}"
        );
        // Without git deployments the table keeps its columns.
        assert!(!history_table(&[deployment("failed")]).contains("SOURCE"));

        let mut building = built;
        building.state = "preparing".into();
        if let Some(source) = building.source.as_mut() {
            source.build = Some("building".into());
        }
        assert_eq!(
            current_deployment(&building),
            "12 (v2, preparing: building refs/tags/v2-cicd)"
        );
        assert_eq!(
            current_deployment(&deployment("checking")),
            "12 (v2, checking)"
        );
    }

    #[test]
    fn restarts_show_what_supervision_does() {
        let app = |by: &str, state: &str, restarts: u64| AppStatus {
            name: "web".into(),
            live_slot: Some("blue".into()),
            live_version: Some("v1".into()),
            health: "healthy".into(),
            in_flight: 0,
            endpoints: Vec::new(),
            draining: None,
            supervision: Some(crate::model::Supervision {
                by: by.into(),
                state: state.into(),
                restarts,
            }),
            current_deployment: None,
            queued: Vec::new(),
        };
        assert_eq!(restarts_cell(&app("cutover", "watching", 2)), "2");
        assert_eq!(restarts_cell(&app("cutover", "gave_up", 5)), "5 (gave up)");
        assert_eq!(
            restarts_cell(&app("cutover", "backing_off", 1)),
            "1 (backing off)"
        );
        assert_eq!(restarts_cell(&app("swarm", "watching", 0)), "by swarm");
        let table = status_table(&[app("cutover", "down", 0)]);
        assert!(table.contains("RESTARTS"), "{table}");
        assert!(table.contains("0 (down)"), "{table}");
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghijk", 5), "abcd…");
        assert_eq!(truncate("first\nsecond", 20), "first …");
    }
}
