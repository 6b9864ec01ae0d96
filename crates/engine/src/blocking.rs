//! The one way the engine reaches the store: SQLite calls run on the
//! blocking pool, never on a runtime thread that also serves traffic.

use crate::error::EngineError;

pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, cutover_store::StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| EngineError::Stopped)?
        .map_err(EngineError::from)
}
