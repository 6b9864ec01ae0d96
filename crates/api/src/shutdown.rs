//! The signal that ends long-lived responses (SSE, log follows) when the
//! daemon stops, so a graceful shutdown does not wait on them forever.

use tokio::sync::watch;

#[derive(Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub(crate) fn new(receiver: watch::Receiver<bool>) -> Shutdown {
        Shutdown(receiver)
    }

    /// A signal that never fires.
    pub(crate) fn never() -> Shutdown {
        let (_sender, receiver) = watch::channel(false);
        Shutdown(receiver)
    }

    /// Resolves once shutdown was requested; never if it cannot be anymore.
    pub(crate) async fn requested(mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
