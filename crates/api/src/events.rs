//! `GET /v1/deployments/{id}/events`: a deployment's events as
//! Server-Sent Events. Each event carries `id: <event id>`,
//! `event: <state>` and `data: <EventRecord JSON>`; the stream ends after
//! the terminal event. A `Last-Event-ID` header resumes after that event.

use crate::error::HttpError;
use crate::shutdown::Shutdown;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cutover_engine::{AppEvent, Engine};
use cutover_store::EventRecord;
use futures_util::StreamExt;
use std::convert::Infallible;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;

pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) async fn stream(
    engine: &Engine,
    id: i64,
    last_event_id: Option<i64>,
    shutdown: Shutdown,
) -> Result<Response, HttpError> {
    let receiver = engine.follow(id).await?;
    let after = last_event_id.unwrap_or(i64::MIN);
    let events = ReceiverStream::new(receiver)
        .filter(move |event| std::future::ready(event.id > after))
        .map(|event| Ok::<_, Infallible>(to_sse(&event)))
        .take_until(shutdown.requested());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The SSE stream of one app's [`AppEvent`]s; a subscriber that falls
/// behind skips what it missed.
pub(crate) fn app_stream(
    receiver: tokio::sync::broadcast::Receiver<AppEvent>,
    app: String,
    shutdown: Shutdown,
) -> Response {
    let events = tokio_stream::wrappers::BroadcastStream::new(receiver)
        .filter_map(move |event| {
            let event = event.ok().filter(|e| e.app == app);
            std::future::ready(event.map(|event| {
                let data = serde_json::to_string(&event).unwrap_or_default();
                Ok::<_, Infallible>(Event::default().event(sse_field(&event.kind)).data(data))
            }))
        })
        .take_until(shutdown.requested());
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn to_sse(event: &EventRecord) -> Event {
    let base = Event::default()
        .id(event.id.to_string())
        .event(sse_field(&event.state));
    match serde_json::to_string(event) {
        Ok(json) => base.data(json),
        // Unreachable for a plain record; never panic on it.
        Err(error) => base.data(format!("{{\"error\":{:?}}}", error.to_string())),
    }
}

/// SSE fields may not contain line breaks (axum panics on them).
fn sse_field(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_fields_never_contain_line_breaks() {
        assert_eq!(sse_field("a\nb\r"), "a b ");
        let event = EventRecord {
            id: 3,
            deployment_id: 1,
            at: 10,
            state: "fail\ned".to_string(),
            message: "line 1\nline 2".to_string(),
        };
        // Would panic inside axum if a field had a line break.
        let _ = to_sse(&event);
    }
}
