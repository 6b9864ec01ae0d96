//! # cutover-store
//!
//! The durable state of cutover in one SQLite file (WAL): apps and their
//! live slot, what runs in each slot, releases, deployments and their timed
//! events. This crate is the only code in the project that touches SQLite.
//!
//! The engine writes every state transition here *before* it takes effect,
//! so that after a crash the next start can tell where it was.
//!
//! # Layout
//!
//! - [`schema`]: migrations, applied in order on open (`PRAGMA user_version`).
//! - [`records`]: the plain records read back (apps, slots, releases,
//!   deployments, events).
//! - this file: [`Store`], the queries.
//! - `groups.rs`: release groups — group deployments, their members, and
//!   the switch of every member recorded in one transaction.
//!
//! Calls are synchronous and short; async callers run them on a blocking
//! thread.

#![forbid(unsafe_code)]

mod groups;
mod records;
mod schema;

pub use records::*;

use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}; check that state_dir is writable")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot make the state database {path} private to its owner (mode 0600): {source}; check that state_dir is writable")]
    Private {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state database {path} was written by a newer cutover (schema {found}, this build knows {known}); upgrade cutover")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("no deployment with id {0}")]
    NoDeployment(i64),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A handle on the state database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// Creates the database file owner-only (0600), or tightens an existing
/// one: it holds deployment history, refs and reasons. SQLite gives its
/// `-wal` and `-shm` files the database file's mode.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        private_file(path).map_err(|source| StoreError::Private {
            path: path.to_path_buf(),
            source,
        })?;
        let mut conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        // FULL: a transition reported as persisted survives power loss too.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back on drop), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes sure the app has its row and two slot rows.
    pub fn ensure_app(&self, app: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT OR IGNORE INTO apps (name, updated_at) VALUES (?1, ?2)",
            params![app, now],
        )?;
        for slot in ["blue", "green"] {
            tx.execute(
                "INSERT OR IGNORE INTO slots (app, slot, state, updated_at) VALUES (?1, ?2, 'empty', ?3)",
                params![app, slot, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn app(&self, app: &str) -> Result<Option<AppRecord>> {
        let conn = self.conn();
        let live_slot: Option<Option<String>> = conn
            .query_row("SELECT live_slot FROM apps WHERE name = ?1", [app], |row| {
                row.get(0)
            })
            .optional()?;
        let Some(live_slot) = live_slot else {
            return Ok(None);
        };
        let mut statement = conn.prepare(
            "SELECT s.slot, s.state, s.runtime_id, s.addr, s.log_path, s.updated_at,
                    r.id, r.app, r.version, r.driver, r.artifact, r.created_at, s.endpoints
             FROM slots s LEFT JOIN releases r ON r.id = s.release_id
             WHERE s.app = ?1 ORDER BY s.slot",
        )?;
        let slots = statement
            .query_map([app], |row| {
                let addr: Option<String> = row.get(3)?;
                let endpoints: Option<String> = row.get(12)?;
                Ok(SlotRecord {
                    slot: row.get(0)?,
                    state: row.get(1)?,
                    runtime_id: row.get(2)?,
                    endpoints: endpoints_of(endpoints.as_deref(), addr.as_deref()),
                    addr,
                    log_path: row.get(4)?,
                    updated_at: row.get(5)?,
                    release: match row.get::<_, Option<i64>>(6)? {
                        None => None,
                        Some(_) => Some(release_from(row, 6)?),
                    },
                })
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Some(AppRecord {
            name: app.to_string(),
            live_slot,
            slots,
        }))
    }

    pub fn insert_release(
        &self,
        app: &str,
        version: &str,
        driver: &str,
        artifact: Option<&str>,
    ) -> Result<ReleaseRecord> {
        let conn = self.conn();
        let now = now_ms();
        conn.execute(
            "INSERT INTO releases (app, version, driver, artifact, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![app, version, driver, artifact, now],
        )?;
        Ok(ReleaseRecord {
            id: conn.last_insert_rowid(),
            app: app.to_string(),
            version: version.to_string(),
            driver: driver.to_string(),
            artifact: artifact.map(str::to_string),
            created_at: now,
        })
    }

    pub fn release(&self, id: i64) -> Result<Option<ReleaseRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, app, version, driver, artifact, created_at FROM releases WHERE id = ?1",
                [id],
                |row| release_from(row, 0),
            )
            .optional()?)
    }

    /// Records a new deployment request in state `queued`, with its first event.
    pub fn insert_deployment(&self, new: &NewDeployment) -> Result<DeploymentRecord> {
        let id = {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let id = insert_deployment_row(&tx, new, None)?;
            tx.commit()?;
            id
        };
        self.deployment(id)?.ok_or(StoreError::NoDeployment(id))
    }

    /// Moves a deployment to `state` and appends the event, in one transaction.
    /// Terminal states also set `finished_at` and keep `message` as the reason.
    pub fn transition(
        &self,
        deployment_id: i64,
        state: DeploymentState,
        message: &str,
    ) -> Result<EventRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let changed = if state.is_terminal() {
            tx.execute(
                "UPDATE deployments SET state = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
                params![deployment_id, state.as_str(), message, now],
            )?
        } else {
            tx.execute(
                "UPDATE deployments SET state = ?2, started_at = COALESCE(started_at, ?3) WHERE id = ?1",
                params![deployment_id, state.as_str(), now],
            )?
        };
        if changed == 0 {
            return Err(StoreError::NoDeployment(deployment_id));
        }
        let event = insert_event(&tx, deployment_id, now, state.as_str(), message)?;
        tx.commit()?;
        Ok(event)
    }

    /// Appends an informational event without changing the deployment's state.
    pub fn note(&self, deployment_id: i64, message: &str) -> Result<EventRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let state: String = tx
            .query_row(
                "SELECT state FROM deployments WHERE id = ?1",
                [deployment_id],
                |row| row.get(0),
            )
            .optional()?
            .ok_or(StoreError::NoDeployment(deployment_id))?;
        let event = insert_event(&tx, deployment_id, now_ms(), &state, message)?;
        tx.commit()?;
        Ok(event)
    }

    /// Records which slot the deployment targets and what was live when it began.
    pub fn set_deployment_plan(&self, deployment_id: i64, plan: &DeploymentPlan) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET release_id = ?2, target_slot = ?3, from_release_id = ?4, from_slot = ?5 WHERE id = ?1",
            params![deployment_id, plan.release_id, plan.target_slot, plan.from_release_id, plan.from_slot],
        )?;
        Ok(())
    }

    /// Records what runs in a slot (`runtime_id` / `addr` None when nothing does).
    pub fn set_slot(&self, app: &str, slot: &str, update: &SlotUpdate) -> Result<()> {
        self.conn().execute(
            "UPDATE slots SET state = ?3, release_id = ?4, runtime_id = ?5, addr = ?6, log_path = ?7, updated_at = ?8, endpoints = ?9
             WHERE app = ?1 AND slot = ?2",
            params![app, slot, update.state, update.release_id, update.runtime_id, update.addr, update.log_path, now_ms(), endpoints_text(&update.endpoints)],
        )?;
        Ok(())
    }

    /// Records that nothing runs in the slot any more, keeping which release
    /// ran there and its log (so `cutover logs --slot` still finds it).
    pub fn clear_runtime(&self, app: &str, slot: &str, state: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE slots SET state = ?3, runtime_id = NULL, addr = NULL, endpoints = NULL, updated_at = ?4 WHERE app = ?1 AND slot = ?2",
            params![app, slot, state, now_ms()],
        )?;
        Ok(())
    }

    /// Changes only a slot's state label (e.g. `live` → `draining`).
    pub fn set_slot_state(&self, app: &str, slot: &str, state: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE slots SET state = ?3, updated_at = ?4 WHERE app = ?1 AND slot = ?2",
            params![app, slot, state, now_ms()],
        )?;
        Ok(())
    }

    /// Records a switch in one transaction: `slot` becomes the live slot
    /// (state `live`; `None`: nothing is live), the previously live slot gets
    /// the state label `previous_label`, and the deployment moves to `state`
    /// with the event `message`.
    pub fn record_switch(
        &self,
        app: &str,
        slot: Option<&str>,
        previous_label: &str,
        deployment_id: i64,
        state: DeploymentState,
        message: &str,
    ) -> Result<EventRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let switch = SwitchRecord {
            app: app.to_string(),
            slot: slot.map(str::to_string),
            previous_label: previous_label.to_string(),
            deployment_id,
            state,
            message: message.to_string(),
        };
        let event = record_switch_row(&tx, &switch, now_ms())?;
        tx.commit()?;
        Ok(event)
    }

    pub fn deployment(&self, id: i64) -> Result<Option<DeploymentRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("{DEPLOYMENT_SELECT} WHERE d.id = ?1"),
                [id],
                deployment_from,
            )
            .optional()?)
    }

    /// The app's deployments, newest first.
    pub fn deployments(&self, app: &str, limit: usize) -> Result<Vec<DeploymentRecord>> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "{DEPLOYMENT_SELECT} WHERE d.app = ?1 ORDER BY d.id DESC LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![app, limit as i64], deployment_from)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Deployments that never reached a terminal state (interrupted by a crash).
    pub fn unfinished_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "{DEPLOYMENT_SELECT} WHERE d.state NOT IN ('succeeded', 'failed', 'aborted', 'rolled_back') ORDER BY d.id"
        ))?;
        let rows = statement.query_map([], deployment_from)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The most recent succeeded deployment of the app.
    pub fn last_succeeded(&self, app: &str) -> Result<Option<DeploymentRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("{DEPLOYMENT_SELECT} WHERE d.app = ?1 AND d.state = 'succeeded' ORDER BY d.id DESC LIMIT 1"),
                [app],
                deployment_from,
            )
            .optional()?)
    }

    /// Events of a deployment after `after_id`, oldest first.
    pub fn events(&self, deployment_id: i64, after_id: i64) -> Result<Vec<EventRecord>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, deployment_id, at, state, message FROM events
             WHERE deployment_id = ?1 AND id > ?2 ORDER BY id",
        )?;
        let rows = statement.query_map(params![deployment_id, after_id], |row| {
            Ok(EventRecord {
                id: row.get(0)?,
                deployment_id: row.get(1)?,
                at: row.get(2)?,
                state: row.get(3)?,
                message: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

/// One app's switch inside a transaction (see [`Store::record_switch`]).
fn record_switch_row(
    tx: &rusqlite::Transaction<'_>,
    switch: &SwitchRecord,
    now: i64,
) -> Result<EventRecord> {
    let (app, slot) = (&switch.app, switch.slot.as_deref());
    let previous: Option<String> =
        tx.query_row("SELECT live_slot FROM apps WHERE name = ?1", [app], |row| {
            row.get(0)
        })?;
    if let Some(previous) = previous.filter(|p| Some(p.as_str()) != slot) {
        tx.execute(
            "UPDATE slots SET state = ?3, updated_at = ?4 WHERE app = ?1 AND slot = ?2",
            params![app, previous, switch.previous_label, now],
        )?;
    }
    if let Some(slot) = slot {
        tx.execute(
            "UPDATE slots SET state = 'live', updated_at = ?3 WHERE app = ?1 AND slot = ?2",
            params![app, slot, now],
        )?;
    }
    tx.execute(
        "UPDATE apps SET live_slot = ?2, updated_at = ?3 WHERE name = ?1",
        params![app, slot, now],
    )?;
    tx.execute(
        "UPDATE deployments SET state = ?2 WHERE id = ?1",
        params![switch.deployment_id, switch.state.as_str()],
    )?;
    insert_event(
        tx,
        switch.deployment_id,
        now,
        switch.state.as_str(),
        &switch.message,
    )
}

/// Inserts a deployment in state `queued` with its first event; returns its id.
fn insert_deployment_row(
    tx: &rusqlite::Transaction<'_>,
    new: &NewDeployment,
    group_deployment_id: Option<i64>,
) -> Result<i64> {
    let now = now_ms();
    let source = new.source.as_ref();
    tx.execute(
        "INSERT INTO deployments (app, trigger, version, release_id, state, created_at,
            source_provider, source_delivery, source_ref, source_commit, source_build, group_deployment_id)
         VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            new.app,
            new.trigger,
            new.version,
            new.release_id,
            now,
            source.map(|s| &s.provider),
            source.and_then(|s| s.delivery.as_ref()),
            source.map(|s| &s.git_ref),
            source.map(|s| &s.commit),
            source.and_then(|s| s.build.as_ref()),
            group_deployment_id,
        ],
    )?;
    let id = tx.last_insert_rowid();
    let message = match group_deployment_id {
        Some(group) => format!(
            "deployment of {} {} requested by {} (member of group deployment {group})",
            new.app, new.version, new.trigger
        ),
        None => format!(
            "deployment of {} {} requested by {}",
            new.app, new.version, new.trigger
        ),
    };
    insert_event(tx, id, now, DeploymentState::Queued.as_str(), &message)?;
    Ok(id)
}

fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    deployment_id: i64,
    at: i64,
    state: &str,
    message: &str,
) -> Result<EventRecord> {
    tx.execute(
        "INSERT INTO events (deployment_id, at, state, message) VALUES (?1, ?2, ?3, ?4)",
        params![deployment_id, at, state, message],
    )?;
    Ok(EventRecord {
        id: tx.last_insert_rowid(),
        deployment_id,
        at,
        state: state.to_string(),
        message: message.to_string(),
    })
}

/// The git trigger: build progress, commits of releases, webhook deliveries.
impl Store {
    /// Records the build progress of a deployment built from git.
    pub fn set_source_build(&self, deployment_id: i64, build: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET source_build = ?2 WHERE id = ?1",
            params![deployment_id, build],
        )?;
        Ok(())
    }

    /// Records the commit a deployment actually builds (an annotated tag's
    /// object resolved to its commit).
    pub fn set_source_commit(&self, deployment_id: i64, commit: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET source_commit = ?2 WHERE id = ?1",
            params![deployment_id, commit],
        )?;
        Ok(())
    }

    /// Records the commit a release was built from.
    pub fn set_release_commit(&self, release_id: i64, commit: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE releases SET source_commit = ?2 WHERE id = ?1",
            params![release_id, commit],
        )?;
        Ok(())
    }

    /// The commit a release was built from, if it was built from git.
    pub fn release_commit(&self, release_id: i64) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT source_commit FROM releases WHERE id = ?1",
                [release_id],
                |row| row.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Records a verified webhook delivery. `None` when this provider's
    /// delivery id was recorded before (a redelivery): nothing is written.
    pub fn insert_delivery(&self, new: &NewDelivery) -> Result<Option<DeliveryRecord>> {
        let now = now_ms();
        let id = {
            let conn = self.conn();
            let inserted = conn.execute(
                "INSERT INTO webhook_deliveries (provider, delivery_id, event, repository, ref_kind, ref_name,
                    commit_sha, apps, status, reason, received_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)
                 ON CONFLICT (provider, delivery_id) DO NOTHING",
                params![
                    new.provider,
                    new.delivery_id,
                    new.event,
                    new.repository,
                    new.ref_kind,
                    new.ref_name,
                    new.commit,
                    new.apps.join(","),
                    new.status,
                    new.reason,
                    now
                ],
            )?;
            if inserted == 0 {
                return Ok(None);
            }
            conn.last_insert_rowid()
        };
        self.delivery(id)
    }

    pub fn delivery(&self, id: i64) -> Result<Option<DeliveryRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("{DELIVERY_SELECT} WHERE id = ?1"),
                [id],
                delivery_from,
            )
            .optional()?)
    }

    /// Deliveries waiting to be dispatched, oldest first.
    pub fn queued_deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "{DELIVERY_SELECT} WHERE status = 'queued' ORDER BY id"
        ))?;
        let rows = statement.query_map([], delivery_from)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The newest deliveries first.
    pub fn deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let conn = self.conn();
        let mut statement =
            conn.prepare(&format!("{DELIVERY_SELECT} ORDER BY id DESC LIMIT ?1"))?;
        let rows = statement.query_map([limit as i64], delivery_from)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Records how a queued delivery ended: `dispatched` (with the
    /// deployments it started), `ignored` or `failed` (with the reason).
    pub fn finish_delivery(
        &self,
        id: i64,
        status: &str,
        reason: Option<&str>,
        deployments: &[i64],
    ) -> Result<()> {
        let deployments: Vec<String> = deployments.iter().map(i64::to_string).collect();
        self.conn().execute(
            "UPDATE webhook_deliveries SET status = ?2, reason = ?3, deployments = ?4, updated_at = ?5 WHERE id = ?1",
            params![id, status, reason, deployments.join(","), now_ms()],
        )?;
        Ok(())
    }
}

const DELIVERY_SELECT: &str =
    "SELECT id, provider, delivery_id, event, repository, ref_kind, ref_name, commit_sha,
        apps, status, reason, deployments, received_at, updated_at FROM webhook_deliveries";

fn delivery_from(row: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let list = |text: Option<String>| -> Vec<String> {
        text.unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(DeliveryRecord {
        id: row.get(0)?,
        provider: row.get(1)?,
        delivery_id: row.get(2)?,
        event: row.get(3)?,
        repository: row.get(4)?,
        ref_kind: row.get(5)?,
        ref_name: row.get(6)?,
        commit: row.get(7)?,
        apps: list(row.get(8)?),
        status: row.get(9)?,
        reason: row.get(10)?,
        deployments: list(row.get(11)?)
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect(),
        received_at: row.get(12)?,
        updated_at: row.get(13)?,
    })
}

const DEPLOYMENT_SELECT: &str = "SELECT d.id, d.app, d.trigger, d.version, d.release_id, d.target_slot,
        d.from_release_id, fr.version, d.from_slot, d.state, d.reason, d.created_at, d.started_at, d.finished_at,
        d.source_provider, d.source_delivery, d.source_ref, d.source_commit, d.source_build,
        d.group_deployment_id
     FROM deployments d LEFT JOIN releases fr ON fr.id = d.from_release_id";

fn deployment_from(row: &Row<'_>) -> rusqlite::Result<DeploymentRecord> {
    Ok(DeploymentRecord {
        id: row.get(0)?,
        app: row.get(1)?,
        trigger: row.get(2)?,
        version: row.get(3)?,
        release_id: row.get(4)?,
        target_slot: row.get(5)?,
        from_release_id: row.get(6)?,
        from_version: row.get(7)?,
        from_slot: row.get(8)?,
        state: row.get(9)?,
        reason: row.get(10)?,
        created_at: row.get(11)?,
        started_at: row.get(12)?,
        finished_at: row.get(13)?,
        source: match (
            row.get::<_, Option<String>>(14)?,
            row.get::<_, Option<String>>(16)?,
            row.get::<_, Option<String>>(17)?,
        ) {
            (Some(provider), Some(git_ref), Some(commit)) => Some(DeploymentSource {
                provider,
                delivery: row.get(15)?,
                git_ref,
                commit,
                build: finished_build(row.get(9)?, row.get(18)?),
            }),
            _ => None,
        },
        group_deployment_id: row.get(19)?,
    })
}

/// A build that was still waiting or running when its deployment ended
/// (superseded in the queue, aborted, interrupted by a crash) is reported
/// as `skipped` or `interrupted`, not as still in progress.
fn finished_build(state: String, build: Option<String>) -> Option<String> {
    match build.as_deref() {
        Some("queued") if is_terminal_state(&state) => Some("skipped".to_string()),
        Some("fetching" | "building") if is_terminal_state(&state) => {
            Some("interrupted".to_string())
        }
        _ => build,
    }
}

fn release_from(row: &Row<'_>, first: usize) -> rusqlite::Result<ReleaseRecord> {
    Ok(ReleaseRecord {
        id: row.get(first)?,
        app: row.get(first + 1)?,
        version: row.get(first + 2)?,
        driver: row.get(first + 3)?,
        artifact: row.get(first + 4)?,
        created_at: row.get(first + 5)?,
    })
}

/// A slot's endpoints as stored: JSON, or (rows from before endpoints) its
/// one `addr`.
fn endpoints_of(json: Option<&str>, addr: Option<&str>) -> Vec<EndpointRecord> {
    match json.and_then(|text| serde_json::from_str(text).ok()) {
        Some(endpoints) => endpoints,
        None => addr
            .map(|addr| EndpointRecord {
                addr: addr.to_string(),
                label: String::new(),
            })
            .into_iter()
            .collect(),
    }
}

fn endpoints_text(endpoints: &[EndpointRecord]) -> Option<String> {
    (!endpoints.is_empty())
        .then(|| serde_json::to_string(endpoints).ok())
        .flatten()
}
