//! `[proxy.acme]` certificates in the admin API and in `/metrics`.
//!
//! | Method | Path | Answer |
//! |---|---|---|
//! | GET | `/v1/certs` | `[CertStatus]` (empty without `[proxy.acme]`) |
//! | POST | `/v1/certs/{name}/renew` | 200 `CertStatus` once the new certificate is served; 502 when the order failed, 404 for a name not in `domains` |

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cutover_acme::{Acme, CertState, CertStatus, RenewError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::error::HttpError;

/// The daemon's ACME handle, if `[proxy.acme]` is configured.
#[derive(Clone, Default)]
pub(crate) struct Certs(pub(crate) Option<Acme>);

/// `app` with the certificate routes, and the handle every handler
/// (`/metrics` too) reads.
pub(crate) fn attach(app: Router, certs: Option<Acme>) -> Router {
    app.merge(
        Router::new()
            .route("/v1/certs", get(list))
            .route("/v1/certs/{name}/renew", post(renew)),
    )
    .layer(Extension(Certs(certs)))
}

async fn list(Extension(certs): Extension<Certs>) -> Json<Vec<CertStatus>> {
    Json(certs.0.map(|acme| acme.status()).unwrap_or_default())
}

async fn renew(
    Extension(certs): Extension<Certs>,
    Path(name): Path<String>,
) -> Result<Json<CertStatus>, HttpError> {
    let Some(acme) = certs.0 else {
        return Err(HttpError::not_found(
            "no [proxy.acme] is configured, so there is nothing to renew",
        ));
    };
    match acme.renew(&name).await {
        Ok(status) => Ok(Json(status)),
        Err(e @ RenewError::UnknownName(_)) => Err(HttpError::not_found(e.to_string())),
        Err(e @ RenewError::Failed(_)) => {
            Err(HttpError::new(StatusCode::BAD_GATEWAY, e.to_string()))
        }
        Err(e) => Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// One gauge's value for a name, if it has one.
type Reading = fn(&CertStatus) -> Option<i64>;

/// The certificates' gauges, read at scrape time.
#[derive(Debug)]
pub(crate) struct CertMetrics(pub(crate) Vec<CertStatus>);

impl Collector for CertMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges: [(&str, &str, Reading); 4] = [
            (
                "cutover_certificate_not_after_seconds",
                "When the certificate served for the name expires (Unix seconds).",
                |s| s.not_after.and_then(|t| i64::try_from(t).ok()),
            ),
            (
                "cutover_certificate_next_renewal_seconds",
                "When the next order for the name is due (Unix seconds).",
                |s| s.next_renewal.and_then(|t| i64::try_from(t).ok()),
            ),
            (
                "cutover_certificate_failures",
                "Orders for the name that failed in a row (0 after a success).",
                |s| Some(i64::from(s.failures)),
            ),
            (
                "cutover_certificate_failing",
                "1 while the last order for the name failed.",
                |s| Some(i64::from(s.state == CertState::Failing)),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for status in &self.0 {
                if let Some(value) = value(status) {
                    ConstGauge::new(value)
                        .encode(family.encode_family(&[("name", status.name.as_str())])?)?;
                }
            }
        }
        Ok(())
    }
}
