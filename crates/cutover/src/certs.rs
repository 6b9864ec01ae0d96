//! Automatic HTTPS in the binary: starting `[proxy.acme]` in `serve`,
//! `cutover certs`, `cutover certs renew NAME`, and the certificate lines
//! of `cutover status`.

use crate::cli::GlobalArgs;
use crate::client::{segment, Client};
use crate::commands::client;
use crate::failure::{Failure, Outcome};
use cutover_acme::{Acme, CertStatus};
use cutover_config::Config;
use std::time::{Duration, UNIX_EPOCH};

/// Starts `[proxy.acme]` (if configured) on the HTTPS listeners'
/// certificates and the plain listeners' http-01 answers.
pub fn start_acme(
    config: &Config,
    (tls, http01): (
        Option<cutover_proxy::Tls>,
        Option<cutover_proxy::Http01Answers>,
    ),
) -> Result<Option<Acme>, Failure> {
    let (Some(acme), Some(tls), Some(http01)) = (&config.proxy.acme, tls, http01) else {
        return Ok(None);
    };
    let started = Acme::start(acme, &config.state_dir, tls, http01)
        .map_err(|e| Failure::failed(format!("[proxy.acme]: {e}")))?;
    tracing::info!(names = %acme.domains.join(", "), challenge = acme.challenge.as_str(), "automatic HTTPS started");
    Ok(Some(started))
}

/// `cutover certs`: every name's certificate.
pub async fn list(global: &GlobalArgs) -> Outcome {
    let client = client(global)?;
    let value: serde_json::Value = client.get("/v1/certs").await?;
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    let certs: Vec<CertStatus> = serde_json::from_value(value)
        .map_err(|e| Failure::failed(format!("unexpected answer from the cutover daemon: {e}")))?;
    if certs.is_empty() {
        println!("no [proxy.acme] certificates (configure [proxy.acme] to obtain them)");
    } else {
        print!("{}", table(&certs));
    }
    Ok(())
}

/// `cutover certs renew NAME`: a new certificate now, waited for.
pub async fn renew(global: &GlobalArgs, name: &str) -> Outcome {
    let client = client(global)?;
    let path = format!("/v1/certs/{}/renew", segment(name));
    let status: CertStatus = client.post(&path, None).await?;
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        println!(
            "{}: new certificate served (issuer {}, expires {}, renewal due {})",
            status.name,
            status.issuer.as_deref().unwrap_or("-"),
            time(status.not_after),
            time(status.next_renewal)
        );
    }
    Ok(())
}

/// The certificate lines under `cutover status` (none without ACME, or
/// when the daemon cannot say).
pub async fn status_lines(client: &Client) -> String {
    match client.get::<Vec<CertStatus>>("/v1/certs").await {
        Ok(certs) if !certs.is_empty() => format!("\ncertificates:\n{}", table(&certs)),
        _ => String::new(),
    }
}

fn table(certs: &[CertStatus]) -> String {
    let rows: Vec<[String; 6]> = certs
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                serde_json::to_value(c.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                c.issuer.clone().unwrap_or_else(|| "-".into()),
                time(c.not_after),
                time(c.next_renewal),
                c.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "STATE",
        "ISSUER",
        "NOT AFTER",
        "NEXT RENEWAL",
        "LAST ERROR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(header);
    for row in &rows {
        text.push_str(&line(row.each_ref().map(String::as_str)));
    }
    text
}

fn time(unix: Option<u64>) -> String {
    unix.map_or_else(
        || "-".into(),
        |t| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string(),
    )
}
