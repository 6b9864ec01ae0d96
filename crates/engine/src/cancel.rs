//! Why a running deployment is asked to stop early, and the one way its
//! steps wait on something while listening for that.

use std::future::Future;
use tokio::sync::watch;

/// A request to stop a deployment before it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// `cutover abort`.
    Abort,
    /// The daemon is stopping (SIGTERM): the deployment stops at the next
    /// safe point instead of being cut off and left to recovery.
    Shutdown,
    /// Another app of its release group failed or was aborted: the group
    /// switches all of its apps or none.
    Group,
}

impl Interrupt {
    /// Why the deployment stopped, for its record.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Interrupt::Abort => "aborted by request (`cutover abort`)",
            Interrupt::Shutdown => "interrupted by shutdown (cutover is stopping)",
            Interrupt::Group => "stopped because another app of its group stopped",
        }
    }
}

/// The receiving end: what a deployment's steps listen to.
#[derive(Clone)]
pub(crate) struct CancelSignal(watch::Receiver<Option<Interrupt>>);

/// The sending end, kept by the app's actor.
pub(crate) struct Canceller(watch::Sender<Option<Interrupt>>);

pub(crate) fn channel() -> (Canceller, CancelSignal) {
    let (sender, receiver) = watch::channel(None);
    (Canceller(sender), CancelSignal(receiver))
}

impl Canceller {
    /// Asks the deployment to stop; the first reason given stays.
    pub(crate) fn interrupt(&self, why: Interrupt) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(why);
                true
            } else {
                false
            }
        });
    }
}

impl CancelSignal {
    /// The interrupt asked for so far, if any.
    pub(crate) fn requested(&self) -> Option<Interrupt> {
        *self.0.borrow()
    }

    /// Resolves once an interrupt is asked for.
    pub(crate) async fn interrupted(&mut self) -> Interrupt {
        let asked = self.0.wait_for(Option::is_some).await.map(|why| *why);
        match asked {
            Ok(why) => why.unwrap_or(Interrupt::Shutdown),
            // The actor is gone: nobody can ask any more; never resolve.
            Err(_) => std::future::pending().await,
        }
    }

    /// Runs `work` unless an interrupt comes first (or came already).
    pub(crate) async fn until<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Interrupt> {
        if let Some(why) = self.requested() {
            return Err(why);
        }
        tokio::select! {
            value = work => Ok(value),
            why = self.interrupted() => Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_interrupt_asked_for_is_the_one_reported() {
        let (canceller, mut signal) = channel();
        canceller.interrupt(Interrupt::Abort);
        canceller.interrupt(Interrupt::Shutdown);
        assert_eq!(signal.requested(), Some(Interrupt::Abort));
        assert_eq!(signal.interrupted().await, Interrupt::Abort);
    }

    #[tokio::test]
    async fn work_is_cut_short_by_an_interrupt_and_runs_to_its_end_without_one() {
        let (canceller, mut signal) = channel();
        assert_eq!(signal.until(async { 7 }).await, Ok(7));
        let asker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            canceller.interrupt(Interrupt::Shutdown);
            canceller
        });
        let waited = signal.until(std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Interrupt::Shutdown));
        // Asked before: the work does not even start.
        assert_eq!(signal.until(async { 7 }).await, Err(Interrupt::Shutdown));
        drop(asker.await);
    }
}
