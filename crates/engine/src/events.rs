//! Deployment events: persisted by the store, then published here so that
//! followers (`cutover deploy` over SSE) see them as they happen.

use crate::blocking::blocking;
use crate::error::EngineError;
use cutover_store::{is_terminal_state, EventRecord, Store};
use tokio::sync::{broadcast, mpsc};

#[derive(Clone)]
pub(crate) struct EventBus {
    sender: broadcast::Sender<EventRecord>,
    apps: broadcast::Sender<AppEvent>,
}

/// Something that happened to an app outside any deployment, such as its
/// live release turning unhealthy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppEvent {
    pub app: String,
    /// Unix milliseconds.
    pub at: i64,
    /// `unhealthy` or `healthy`.
    pub kind: String,
    pub message: String,
}

impl EventBus {
    pub(crate) fn new() -> EventBus {
        EventBus {
            sender: broadcast::channel(1024).0,
            apps: broadcast::channel(256).0,
        }
    }

    pub(crate) fn publish_app(&self, event: AppEvent) {
        let _ = self.apps.send(event);
    }

    pub(crate) fn subscribe_apps(&self) -> broadcast::Receiver<AppEvent> {
        self.apps.subscribe()
    }

    /// Publishes an event that the store already holds.
    pub(crate) fn publish(&self, event: EventRecord) {
        // No subscriber is fine: the store has the event.
        let _ = self.sender.send(event);
    }

    /// Stored events of the deployment, then live ones, until the terminal one.
    pub(crate) async fn follow(
        &self,
        store: &Store,
        deployment_id: i64,
    ) -> Result<mpsc::Receiver<EventRecord>, EngineError> {
        // Subscribe before reading the store so nothing falls in between.
        let mut live = self.sender.subscribe();
        let reader = store.clone();
        let exists = blocking(move || reader.deployment(deployment_id)).await?;
        if exists.is_none() {
            return Err(EngineError::UnknownDeployment(deployment_id));
        }
        let (sender, receiver) = mpsc::channel(64);
        let store = store.clone();
        tokio::spawn(async move {
            let mut last_id = 0;
            loop {
                let reader = store.clone();
                let Ok(stored) = blocking(move || reader.events(deployment_id, last_id)).await
                else {
                    return;
                };
                for event in stored {
                    last_id = event.id;
                    let terminal = is_terminal_state(&event.state);
                    if sender.send(event).await.is_err() || terminal {
                        return;
                    }
                }
                loop {
                    match live.recv().await {
                        Ok(event) if event.deployment_id == deployment_id && event.id > last_id => {
                            last_id = event.id;
                            let terminal = is_terminal_state(&event.state);
                            if sender.send(event).await.is_err() || terminal {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Fell behind: catch up from the store.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(receiver)
    }
}
