//! Errors the engine reports to its callers (the admin API maps each to an
//! HTTP status).

use cutover_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no app named `{0}` in the configuration; `cutover status` lists the apps")]
    UnknownApp(String),
    #[error("no deployment with id {0}")]
    UnknownDeployment(i64),
    #[error("no release group named `{0}` in the configuration")]
    UnknownGroup(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("a deployment of `{app}` is already running (id {running}, {state}) and the queue is full; wait for it (`cutover status {app}`) or retry later")]
    Busy {
        app: String,
        running: i64,
        state: String,
    },
    #[error("`{0}` has no earlier release to roll back to")]
    NothingToRollBack(String),
    #[error("`{app}` has no deployment in progress to {action}")]
    NothingInProgress { app: String, action: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("the engine is shutting down")]
    Stopped,
    /// Refused while an upgrade hands the engine to a new process; the new
    /// process (or this one, if the upgrade fails) takes it a moment later.
    #[error("cutover is being upgraded; {0} again in a moment")]
    Upgrading(String),
}

impl EngineError {
    /// The HTTP status that fits the error.
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::UnknownApp(_)
            | EngineError::UnknownDeployment(_)
            | EngineError::UnknownGroup(_) => 404,
            EngineError::BadRequest(_) => 400,
            EngineError::Busy { .. }
            | EngineError::NothingToRollBack(_)
            | EngineError::NothingInProgress { .. }
            | EngineError::Conflict(_) => 409,
            EngineError::Store(_) => 500,
            EngineError::Stopped | EngineError::Upgrading(_) => 503,
        }
    }
}
