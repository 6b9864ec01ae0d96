//! A group deployment: several apps' deployments switched as one.
//!
//! Each member is an ordinary deployment of its app, queued and launched by
//! that app's actor (so the one-owner rule holds: nothing else of the app
//! runs meanwhile); its task hands the [`DeploymentJob`] to the group's
//! coordinator ([`run`]) and waits for the outcome. The coordinator drives
//! every member through the same steps a single deployment takes:
//!
//! ```text
//! gather ─▶ ready (prepare, start, check, promote; every member at once)
//!        ─▶ before_switch (each) ─▶ ONE recorded switch + ONE route swap
//!        ─▶ verify (all at once) ─▶ commit (each drains and retires)
//! ```
//!
//! A member that stops early interrupts the others ([`Interrupt::Group`]):
//! before the switch nothing moved and every new release is stopped; after
//! it, one swap (recorded first) moves every member back.

use super::job::{Candidate, DeploymentJob, Halt, Leftover, Outcome, Stop, Switched};
use super::{check, finish, prepare, promote, switch, verify};
use crate::blocking::blocking;
use crate::cancel::{self, CancelSignal, Canceller, Interrupt};
use crate::context::Standby;
use crate::events::EventBus;
use crate::front::Front;
use crate::slots::SlotState;
use cutover_store::{DeploymentState, GroupDeploymentRecord, Store, SwitchRecord};
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What a member's task hands to the coordinator.
pub(crate) struct MemberJob {
    pub job: DeploymentJob,
    /// The release kept idle under `keep_old` that a rollback switches to.
    pub standby: Option<Standby>,
}

/// The actor's side of a member: where its job goes, where its outcome
/// comes from.
pub(crate) struct MemberSeat {
    pub handoff: oneshot::Sender<MemberJob>,
    pub outcome: oneshot::Receiver<Outcome>,
}

/// The coordinator's side of a member.
pub(crate) struct Seat {
    pub app: String,
    pub handoff: oneshot::Receiver<MemberJob>,
    pub outcome: oneshot::Sender<Outcome>,
}

/// A seat for `app`: (actor's side, coordinator's side).
pub(crate) fn seat(app: &str) -> (MemberSeat, Seat) {
    let (handoff_tx, handoff_rx) = oneshot::channel();
    let (outcome_tx, outcome_rx) = oneshot::channel();
    let member = MemberSeat {
        handoff: handoff_tx,
        outcome: outcome_rx,
    };
    let seat = Seat {
        app: app.to_string(),
        handoff: handoff_rx,
        outcome: outcome_tx,
    };
    (member, seat)
}

/// The member deployment's task, as the app's actor runs it.
pub(crate) async fn member(
    job: DeploymentJob,
    standby: Option<Standby>,
    seat: MemberSeat,
) -> Outcome {
    if let Err(MemberJob { job, .. }) = seat.handoff.send(MemberJob { job, standby }) {
        let why = "its group deployment ended before this app's turn came; nothing changed";
        job.journal.step(DeploymentState::Aborted, why).await;
        return Outcome::Unchanged;
    }
    seat.outcome.await.unwrap_or(Outcome::Unchanged)
}

/// What the engine keeps of a running group deployment: `cutover abort`
/// asks through `abort`; `committed` says it is too late for that.
pub(crate) struct GroupControl {
    pub abort: watch::Sender<bool>,
    pub committed: Arc<AtomicBool>,
}

/// A group deployment to run.
pub(crate) struct GroupRun {
    pub record: GroupDeploymentRecord,
    pub store: Store,
    pub events: EventBus,
    pub front: Front,
    pub seats: Vec<Seat>,
    pub abort: watch::Receiver<bool>,
    pub committed: Arc<AtomicBool>,
}

/// The group deployment's own record: its state, and the log.
struct GroupJournal {
    store: Store,
    id: i64,
    name: String,
}

impl GroupJournal {
    async fn step(&self, state: DeploymentState, message: &str) {
        tracing::info!(group = %self.name, group_deployment = self.id, state = state.as_str(), "{message}");
        let (store, id, text) = (self.store.clone(), self.id, message.to_string());
        if let Err(e) = blocking(move || store.transition_group(id, state, &text)).await {
            tracing::error!(group = %self.name, group_deployment = self.id, "cannot record {}: {e}", state.as_str());
        }
    }
}

/// One member inside the coordinator.
struct Member {
    job: DeploymentJob,
    standby: Option<Standby>,
    outcome: oneshot::Sender<Outcome>,
}

/// The members, and the cancellers the coordinator interrupts them by
/// (each member's own interrupts — abort, shutdown — are forwarded there).
struct Crew {
    members: Vec<Member>,
    cancel: Arc<Vec<Canceller>>,
    forwarders: Vec<JoinHandle<()>>,
}

impl Crew {
    fn interrupt_all(cancel: &[Canceller], why: Interrupt) {
        for canceller in cancel {
            canceller.interrupt(why);
        }
    }

    /// Sends each member's outcome to its actor.
    fn finish(self, outcomes: Vec<Outcome>) {
        for forwarder in &self.forwarders {
            forwarder.abort();
        }
        for (member, outcome) in self.members.into_iter().zip(outcomes) {
            let _ = member.outcome.send(outcome);
        }
    }
}

/// Runs a group deployment to its end.
pub(crate) async fn run(run: GroupRun) {
    let journal = GroupJournal {
        store: run.store.clone(),
        id: run.record.id,
        name: run.record.group.clone(),
    };
    let (cancel, signals): (Vec<_>, Vec<_>) = run.seats.iter().map(|_| cancel::channel()).unzip();
    let cancel = Arc::new(cancel);
    let abort_listener = listen_for_abort(run.abort.clone(), cancel.clone());
    let gathered = gather(run.seats, signals, cancel.clone()).await;
    let crew = match gathered {
        Ok(crew) => crew,
        Err((crew, reason)) => {
            abort_listener.abort();
            let outcomes = halt_all(&crew, crew_halts_nothing(&crew, &reason)).await;
            journal.step(DeploymentState::Aborted, &reason).await;
            crew.finish(outcomes);
            return;
        }
    };
    let name = journal.name.clone();
    let apps: Vec<&str> = crew.members.iter().map(|m| m.job.app()).collect();
    let starting = format!("deploying {} together (group {name})", apps.join(", "));
    journal.step(DeploymentState::Preparing, &starting).await;
    drive(crew, &journal, &run.front, &run.events, &run.committed).await;
    abort_listener.abort();
}

/// From ready to the end, once every member's job is here.
async fn drive(
    mut crew: Crew,
    journal: &GroupJournal,
    front: &Front,
    events: &EventBus,
    committed: &AtomicBool,
) {
    let ready = ready_all(&mut crew).await;
    let candidates = match all_ok(&crew, ready) {
        Ok(candidates) => candidates,
        Err((halts, state, reason)) => return fail(crew, journal, halts, state, reason).await,
    };
    let candidates = match before_switch_all(&mut crew, candidates).await {
        Ok(candidates) => candidates,
        Err((halts, state, reason)) => return fail(crew, journal, halts, state, reason).await,
    };
    journal
        .step(
            DeploymentState::Switching,
            "switching every app of the group at once",
        )
        .await;
    let switched = match switch_all(&crew, front, events, candidates).await {
        Ok(switched) => switched,
        Err((halts, reason)) => {
            return fail(crew, journal, halts, DeploymentState::Failed, reason).await
        }
    };
    let verifying = switched.iter().any(|s| s.verify.is_some());
    if verifying {
        journal
            .step(
                DeploymentState::Verifying,
                "every app of the group is live; verifying them",
            )
            .await;
    }
    let switched = match verify_all(&mut crew, front, events, switched).await {
        Ok(switched) => switched,
        Err((halts, state, reason)) => return fail(crew, journal, halts, state, reason).await,
    };
    committed.store(true, Ordering::SeqCst);
    journal
        .step(
            DeploymentState::Retiring,
            "every app of the group is live; draining and retiring the old releases",
        )
        .await;
    let outcomes = join_all(
        crew.members
            .iter()
            .zip(switched)
            .map(|(member, switched)| finish::commit(&member.job, switched)),
    )
    .await;
    let versions: Vec<String> = crew
        .members
        .iter()
        .map(|m| format!("{} {}", m.job.app(), m.job.version()))
        .collect();
    let message = format!("{} live together", versions.join(", "));
    journal.step(DeploymentState::Succeeded, &message).await;
    crew.finish(outcomes);
}

/// An abort of the group (`cutover abort GROUP`) interrupts every member.
fn listen_for_abort(
    mut abort: watch::Receiver<bool>,
    cancel: Arc<Vec<Canceller>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if abort.wait_for(|asked| *asked).await.is_ok() {
            Crew::interrupt_all(&cancel, Interrupt::Abort);
        }
    })
}

/// Waits for every member's job (each comes when its actor gets to it).
/// An interrupt of a member that is here, or a member that never comes
/// (superseded, aborted while queued, refused), ends the group deployment.
async fn gather(
    seats: Vec<Seat>,
    signals: Vec<CancelSignal>,
    cancel: Arc<Vec<Canceller>>,
) -> Result<Crew, (Crew, String)> {
    let count = seats.len();
    let mut arrived: Vec<Option<Member>> = (0..count).map(|_| None).collect();
    let mut forwarders = Vec::new();
    let mut pending: FuturesUnordered<_> = seats
        .into_iter()
        .enumerate()
        .map(|(index, seat)| async move {
            let Seat {
                app,
                handoff,
                outcome,
            } = seat;
            (index, app, handoff.await, outcome)
        })
        .collect();
    let mut failure = None;
    while failure.is_none() {
        let watching: Vec<CancelSignal> = signals.clone();
        tokio::select! {
            next = pending.next() => match next {
                None => break,
                Some((index, _, Ok(handed), outcome)) => {
                    let MemberJob { mut job, standby } = handed;
                    let original = std::mem::replace(&mut job.cancel, signals[index].clone());
                    forwarders.push(forward(original, cancel.clone(), index));
                    let note = format!("part of group deployment {}: waiting for every app of the group", job.record.group_deployment_id.unwrap_or_default());
                    job.journal.note(&note).await;
                    arrived[index] = Some(Member { job, standby, outcome });
                }
                Some((_, app, Err(_), _)) => {
                    failure = Some(format!("{app}'s deployment was cancelled before it started (superseded, aborted or cutover stopping); nothing changed"));
                }
            },
            why = any_interrupt(watching) => {
                failure = Some(format!("{}; nothing changed", why.reason()));
            }
        }
    }
    let members: Vec<Member> = arrived.into_iter().flatten().collect();
    let crew = Crew {
        members,
        cancel,
        forwarders,
    };
    match failure {
        None if crew.members.len() == count => Ok(crew),
        None => Err((
            crew,
            "not every app of the group started; nothing changed".to_string(),
        )),
        Some(reason) => Err((crew, reason)),
    }
}

/// Passes a member's own interrupt (abort, shutdown) on to the signal the
/// coordinator gave its job.
fn forward(
    mut original: CancelSignal,
    cancel: Arc<Vec<Canceller>>,
    index: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let why = original.interrupted().await;
        if let Some(canceller) = cancel.get(index) {
            canceller.interrupt(why);
        }
    })
}

async fn any_interrupt(signals: Vec<CancelSignal>) -> Interrupt {
    let waits = signals
        .into_iter()
        .map(|mut signal| Box::pin(async move { signal.interrupted().await }));
    let waits: Vec<_> = waits.collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(waits).await.0
}

/// `gather` failed: every member that is here stops without having started.
fn crew_halts_nothing(crew: &Crew, reason: &str) -> Vec<Halt> {
    crew.members
        .iter()
        .map(|_| Halt::before_traffic(Stop::Aborted(reason.to_string()), Leftover::Nothing))
        .collect()
}

/// Ends every member with its halt (concurrently); their outcomes.
async fn halt_all(crew: &Crew, halts: Vec<Halt>) -> Vec<Outcome> {
    join_all(
        crew.members
            .iter()
            .zip(halts)
            .map(|(member, halt)| finish::halt(&member.job, halt)),
    )
    .await
}

async fn fail(
    crew: Crew,
    journal: &GroupJournal,
    halts: Vec<Halt>,
    state: DeploymentState,
    reason: String,
) {
    let outcomes = halt_all(&crew, halts).await;
    journal.step(state, &reason).await;
    crew.finish(outcomes);
}

/// Every member prepared, started, checked and promoted, at once; the
/// first to fail interrupts the others.
async fn ready_all(crew: &mut Crew) -> Vec<Result<Candidate, Halt>> {
    let cancel = crew.cancel.clone();
    join_all(crew.members.iter_mut().map(|member| {
        let cancel = cancel.clone();
        async move {
            let ready = ready(&mut member.job, member.standby.take()).await;
            if ready.is_err() {
                Crew::interrupt_all(&cancel, Interrupt::Group);
            }
            ready
        }
    }))
    .await
}

/// One member up to the switch: the single-app steps.
async fn ready(job: &mut DeploymentJob, standby: Option<Standby>) -> Result<Candidate, Halt> {
    let new = match standby {
        Some(standby) => check::check_standby(job, standby).await?,
        None => {
            let placed = prepare::prepare(job).await?;
            let new = prepare::start(job, placed).await?;
            check::check(job, new).await?
        }
    };
    match job.is_rollback() {
        true => Ok(new),
        false => promote::promote(job, new).await,
    }
}

type Failed = (Vec<Halt>, DeploymentState, String);

/// All candidates, or every member's halt with the group's state and reason.
fn all_ok(crew: &Crew, ready: Vec<Result<Candidate, Halt>>) -> Result<Vec<Candidate>, Failed> {
    if ready.iter().all(Result::is_ok) {
        return Ok(ready.into_iter().flatten().collect());
    }
    let (state, cause) = cause_of(crew, &ready);
    let halts = ready
        .into_iter()
        .map(|result| match result {
            Ok(new) => Halt::before_traffic(stop_for(state, &cause), Leftover::Running(new)),
            Err(Halt::BeforeTraffic { stop, leftover }) if stopped_for_group(&stop) => {
                Halt::before_traffic(stop_for(state, &cause), leftover)
            }
            Err(halt) => halt,
        })
        .collect();
    Err((halts, state, cause))
}

/// The member whose own failure (or abort) stopped the group, as the
/// group's state and a reason that names it.
fn cause_of(crew: &Crew, ready: &[Result<Candidate, Halt>]) -> (DeploymentState, String) {
    let own = ready
        .iter()
        .zip(&crew.members)
        .find_map(|(result, member)| match result {
            Err(Halt::BeforeTraffic { stop, .. }) if !stopped_for_group(stop) => {
                Some((stop, member.job.app()))
            }
            _ => None,
        });
    match own {
        Some((Stop::Failed(reason), app)) => (DeploymentState::Failed, format!("{app}: {reason}")),
        Some((Stop::Aborted(reason), app)) => {
            (DeploymentState::Aborted, format!("{app}: {reason}"))
        }
        None => (
            DeploymentState::Failed,
            "a member of the group stopped".to_string(),
        ),
    }
}

fn stopped_for_group(stop: &Stop) -> bool {
    matches!(stop, Stop::Aborted(reason) if reason.starts_with(Interrupt::Group.reason()))
}

/// The stop recorded for a member the group's failure stopped.
fn stop_for(state: DeploymentState, cause: &str) -> Stop {
    let reason =
        format!("the group deployment stopped ({cause}); this app switched nothing either");
    match state {
        DeploymentState::Aborted => Stop::Aborted(reason),
        _ => Stop::Failed(reason),
    }
}

/// Each member's `before_switch` hooks and its recorded `switching`.
async fn before_switch_all(
    crew: &mut Crew,
    candidates: Vec<Candidate>,
) -> Result<Vec<Candidate>, Failed> {
    let mut failed = None;
    for (member, new) in crew.members.iter_mut().zip(&candidates) {
        if let Err(stop) = switch::before_switch(&mut member.job, new).await {
            failed = Some((member.job.app().to_string(), stop));
            break;
        }
    }
    let Some((app, stop)) = failed else {
        return Ok(candidates);
    };
    let (state, cause) = match stop {
        Stop::Failed(reason) => (DeploymentState::Failed, format!("{app}: {reason}")),
        Stop::Aborted(reason) => (DeploymentState::Aborted, format!("{app}: {reason}")),
    };
    let halts = candidates
        .into_iter()
        .map(|new| Halt::before_traffic(stop_for(state, &cause), Leftover::Running(new)))
        .collect();
    Err((halts, state, cause))
}

/// The switch of every member: recorded in one transaction, then one swap
/// of the route table. Nothing moves when it cannot be recorded.
async fn switch_all(
    crew: &Crew,
    front: &Front,
    events: &EventBus,
    candidates: Vec<Candidate>,
) -> Result<Vec<Switched>, (Vec<Halt>, String)> {
    let mut records = Vec::with_capacity(candidates.len());
    for (member, new) in crew.members.iter().zip(&candidates) {
        let job = &member.job;
        front.set_preview(job.app(), None);
        crate::context::sync_endpoints(&new.upstream, &new.endpoints());
        let verify = job
            .context
            .app
            .verify
            .as_ref()
            .filter(|_| !job.is_rollback());
        let (state, previous_label) = match verify {
            Some(_) => (DeploymentState::Verifying, SlotState::Standby),
            None => (DeploymentState::Draining, SlotState::Draining),
        };
        let message = format!(
            "{} ({}) is live, switched with every app of its group in one swap; {} {}",
            new.slot(),
            new.version(),
            job.live_label(),
            match verify {
                Some(v) => format!("stays ready while it is verified for {:?}", v.window),
                None => "drains".to_string(),
            }
        );
        records.push(SwitchRecord {
            app: job.app().to_string(),
            slot: Some(new.slot().as_str().to_string()),
            previous_label: previous_label.as_str().to_string(),
            deployment_id: job.record.id,
            state,
            message,
        });
    }
    if let Err(why) = record_switches(crew, events, records).await {
        let reason = format!("the group's switch could not be recorded ({why}); nothing changed");
        return Err((before_traffic(candidates, &reason), reason));
    }
    let changes: Vec<(&str, Option<Arc<cutover_proxy::Upstream>>)> = crew
        .members
        .iter()
        .zip(&candidates)
        .map(|(member, new)| (member.job.app(), Some(new.upstream.clone())))
        .collect();
    let previous = match front.set_live_many(&changes).await {
        Ok(previous) => previous,
        Err(why) => {
            let back = switch_back_records(crew, candidates.iter(), "the front refused the switch");
            let _ = record_switches(crew, events, back).await;
            let reason =
                format!("switching the group failed; the old releases keep serving: {why}");
            return Err((before_traffic(candidates, &reason), reason));
        }
    };
    Ok(crew
        .members
        .iter()
        .zip(candidates)
        .zip(previous)
        .map(|((member, new), previous)| Switched {
            verify: member
                .job
                .context
                .app
                .verify
                .clone()
                .filter(|_| !member.job.is_rollback()),
            new,
            previous,
        })
        .collect())
}

fn before_traffic(candidates: Vec<Candidate>, reason: &str) -> Vec<Halt> {
    candidates
        .into_iter()
        .map(|new| Halt::before_traffic(Stop::Failed(reason.to_string()), Leftover::Running(new)))
        .collect()
}

/// Records the given switches in one transaction, then publishes them.
async fn record_switches(
    crew: &Crew,
    events: &EventBus,
    records: Vec<SwitchRecord>,
) -> Result<(), String> {
    let Some(store) = crew.members.first().map(|m| m.job.context.store.clone()) else {
        return Ok(());
    };
    let recorded = blocking(move || store.record_group_switch(&records))
        .await
        .map_err(|e| e.to_string())?;
    for event in recorded {
        events.publish(event);
    }
    Ok(())
}

/// Every member's live slot back to the one that served before.
fn switch_back_records<'a>(
    crew: &Crew,
    news: impl Iterator<Item = &'a Candidate>,
    why: &str,
) -> Vec<SwitchRecord> {
    crew.members
        .iter()
        .zip(news)
        .map(|(member, new)| {
            let job = &member.job;
            SwitchRecord {
                app: job.app().to_string(),
                slot: job.live.as_ref().map(|l| l.slot.as_str().to_string()),
                previous_label: SlotState::Stopping.as_str().to_string(),
                deployment_id: job.record.id,
                state: DeploymentState::Switching,
                message: format!(
                    "{why}; switching {} back from {} ({}) to {} with every app of its group",
                    job.app(),
                    new.slot(),
                    new.version(),
                    job.live_label()
                ),
            }
        })
        .collect()
}

/// Every member watched at once; the first failure interrupts the others,
/// then one recorded swap moves every member back.
async fn verify_all(
    crew: &mut Crew,
    front: &Front,
    events: &EventBus,
    switched: Vec<Switched>,
) -> Result<Vec<Switched>, Failed> {
    let cancel = crew.cancel.clone();
    let results = join_all(
        crew.members
            .iter_mut()
            .zip(&switched)
            .map(|(member, switched)| {
                let cancel = cancel.clone();
                async move {
                    let Some(rules) = &switched.verify else {
                        return Ok(());
                    };
                    match verify::watch(&mut member.job, &switched.new, rules).await {
                        Ok(summary) => {
                            let passed = format!("verification passed: {summary}");
                            member.job.journal.note(&passed).await;
                            Ok(())
                        }
                        Err(failure) => {
                            Crew::interrupt_all(&cancel, Interrupt::Group);
                            Err(failure)
                        }
                    }
                }
            }),
    )
    .await;
    if results.iter().all(Result::is_ok) {
        return Ok(switched);
    }
    let own = results
        .iter()
        .zip(&crew.members)
        .find_map(|(result, member)| match result {
            Err(failure) if !failure.reason.starts_with(Interrupt::Group.reason()) => Some((
                failure.state,
                format!("{}: {}", member.job.app(), failure.reason),
            )),
            _ => None,
        });
    let (state, cause) = own.unwrap_or((
        DeploymentState::RolledBack,
        "verification stopped".to_string(),
    ));
    switch_back(crew, front, events, &switched, &cause).await;
    let from = crew
        .members
        .iter()
        .map(|m| m.job.live_label())
        .collect::<Vec<_>>()
        .join(", ");
    let halts = switched
        .into_iter()
        .map(|s| Halt::Reverted {
            new: s.new,
            state,
            reason: format!(
                "{cause}; every app of the group is back on its previous release ({from})"
            ),
        })
        .collect();
    Err((halts, state, cause))
}

/// Records every member's live slot back, then one swap moves them back.
async fn switch_back(
    crew: &Crew,
    front: &Front,
    events: &EventBus,
    switched: &[Switched],
    cause: &str,
) {
    let records = switch_back_records(crew, switched.iter().map(|s| &s.new), cause);
    if let Err(why) = record_switches(crew, events, records).await {
        tracing::error!(
            "cannot record the group's switch back: {why}; switching back all the same"
        );
    }
    let changes: Vec<(&str, Option<Arc<cutover_proxy::Upstream>>)> = crew
        .members
        .iter()
        .zip(switched)
        .map(|(member, s)| (member.job.app(), s.previous.clone()))
        .collect();
    if let Err(why) = front.set_live_many(&changes).await {
        tracing::error!("switching the group back failed: {why}");
    }
}
