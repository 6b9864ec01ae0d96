//! Schema migrations. Each entry runs once, in order, inside a transaction;
//! `PRAGMA user_version` records how many have run. Never edit a released
//! migration: append a new one.

use crate::{Result, StoreError};
use rusqlite::Connection;
use std::path::Path;

const MIGRATIONS: &[&str] = &[
    // 1: apps, slots, releases, deployments, events.
    "CREATE TABLE apps (
        name TEXT PRIMARY KEY,
        live_slot TEXT CHECK (live_slot IN ('blue', 'green')),
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL REFERENCES apps(name),
        version TEXT NOT NULL,
        driver TEXT NOT NULL,
        artifact TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE slots (
        app TEXT NOT NULL REFERENCES apps(name),
        slot TEXT NOT NULL CHECK (slot IN ('blue', 'green')),
        state TEXT NOT NULL,
        release_id INTEGER REFERENCES releases(id),
        runtime_id TEXT,
        addr TEXT,
        log_path TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (app, slot)
    );
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL REFERENCES apps(name),
        trigger TEXT NOT NULL,
        version TEXT NOT NULL,
        release_id INTEGER REFERENCES releases(id),
        target_slot TEXT,
        from_release_id INTEGER REFERENCES releases(id),
        from_slot TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX deployments_by_app ON deployments (app, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        deployment_id INTEGER NOT NULL REFERENCES deployments(id),
        at INTEGER NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_deployment ON events (deployment_id, id);",
    // 2: the git trigger: what started each deployment (provider, delivery,
    // ref, commit, build progress), the commit of each built release, and
    // the inbox of accepted webhook deliveries.
    "ALTER TABLE deployments ADD COLUMN source_provider TEXT;
    ALTER TABLE deployments ADD COLUMN source_delivery TEXT;
    ALTER TABLE deployments ADD COLUMN source_ref TEXT;
    ALTER TABLE deployments ADD COLUMN source_commit TEXT;
    ALTER TABLE deployments ADD COLUMN source_build TEXT;
    ALTER TABLE releases ADD COLUMN source_commit TEXT;
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        event TEXT NOT NULL,
        repository TEXT,
        ref_kind TEXT,
        ref_name TEXT,
        commit_sha TEXT,
        apps TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        reason TEXT,
        deployments TEXT,
        received_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (provider, delivery_id)
    );
    CREATE INDEX webhook_deliveries_by_status ON webhook_deliveries (status, id);",
    // 3: a release answers at several endpoints (swarm tasks): a JSON list
    // of {addr, label}; NULL in older rows, which are read from `addr`.
    "ALTER TABLE slots ADD COLUMN endpoints TEXT;",
    // 4: release groups: one record per group deployment, and the member
    // deployments (one per app) point at it.
    "CREATE TABLE group_deployments (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        trigger TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX group_deployments_by_name ON group_deployments (name, id);
    ALTER TABLE deployments ADD COLUMN group_deployment_id INTEGER REFERENCES group_deployments(id);",
];

pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if applied > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: applied,
            known,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
