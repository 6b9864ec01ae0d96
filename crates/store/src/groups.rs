//! Release groups: a group deployment and its member deployments (one per
//! app), and the switch of every member recorded in one transaction, so a
//! restart finds all members switched or none.

use crate::{
    deployment_from, insert_deployment_row, insert_event, now_ms, record_switch_row, Result, Store,
    StoreError, DEPLOYMENT_SELECT,
};
use crate::{
    DeploymentRecord, DeploymentState, EventRecord, GroupDeploymentRecord, NewGroupDeployment,
    SwitchRecord,
};
use rusqlite::{params, OptionalExtension, Row};

const GROUP_SELECT: &str =
    "SELECT id, name, trigger, state, reason, created_at, finished_at FROM group_deployments";

impl Store {
    /// Records a group deployment and its member deployments (each `queued`
    /// with its first event) in one transaction.
    pub fn insert_group_deployment(
        &self,
        new: &NewGroupDeployment,
    ) -> Result<(GroupDeploymentRecord, Vec<DeploymentRecord>)> {
        let (group_id, member_ids) = {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO group_deployments (name, trigger, state, created_at) VALUES (?1, ?2, 'queued', ?3)",
                params![new.group, new.trigger, now_ms()],
            )?;
            let group_id = tx.last_insert_rowid();
            let mut member_ids = Vec::with_capacity(new.members.len());
            for member in &new.members {
                member_ids.push(insert_deployment_row(&tx, member, Some(group_id))?);
            }
            tx.commit()?;
            (group_id, member_ids)
        };
        let group = self
            .group_deployment(group_id)?
            .ok_or(StoreError::NoDeployment(group_id))?;
        let mut members = Vec::with_capacity(member_ids.len());
        for id in member_ids {
            members.push(self.deployment(id)?.ok_or(StoreError::NoDeployment(id))?);
        }
        Ok((group, members))
    }

    /// Moves a group deployment to `state`; a terminal state also sets
    /// `finished_at` and keeps `message` as the reason.
    pub fn transition_group(
        &self,
        id: i64,
        state: DeploymentState,
        message: &str,
    ) -> Result<GroupDeploymentRecord> {
        let changed = match state.is_terminal() {
            true => self.conn().execute(
                "UPDATE group_deployments SET state = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), message, now_ms()],
            )?,
            false => self.conn().execute(
                "UPDATE group_deployments SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )?,
        };
        if changed == 0 {
            return Err(StoreError::NoDeployment(id));
        }
        self.group_deployment(id)?
            .ok_or(StoreError::NoDeployment(id))
    }

    /// Records the switch of every member of a group in ONE transaction:
    /// each app's live slot, its previous slot's label and its deployment's
    /// state and event. Either all of them are recorded or none.
    pub fn record_group_switch(&self, switches: &[SwitchRecord]) -> Result<Vec<EventRecord>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let mut events = Vec::with_capacity(switches.len());
        for switch in switches {
            events.push(record_switch_row(&tx, switch, now)?);
        }
        tx.commit()?;
        Ok(events)
    }

    /// Moves every member to `state` with its event, in one transaction
    /// (the end of a group deployment found interrupted by a restart).
    pub fn transition_members(
        &self,
        members: &[(i64, String)],
        state: DeploymentState,
    ) -> Result<Vec<EventRecord>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let mut events = Vec::with_capacity(members.len());
        for (id, message) in members {
            tx.execute(
                "UPDATE deployments SET state = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), message, now],
            )?;
            events.push(insert_event(&tx, *id, now, state.as_str(), message)?);
        }
        tx.commit()?;
        Ok(events)
    }

    pub fn group_deployment(&self, id: i64) -> Result<Option<GroupDeploymentRecord>> {
        Ok(self
            .conn()
            .query_row(&format!("{GROUP_SELECT} WHERE id = ?1"), [id], group_from)
            .optional()?)
    }

    /// The group's deployments, newest first.
    pub fn group_deployments(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<GroupDeploymentRecord>> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "{GROUP_SELECT} WHERE name = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![group, limit as i64], group_from)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Group deployments that never reached a terminal state.
    pub fn unfinished_group_deployments(&self) -> Result<Vec<GroupDeploymentRecord>> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "{GROUP_SELECT} WHERE state NOT IN ('succeeded', 'failed', 'aborted', 'rolled_back') ORDER BY id"
        ))?;
        let rows = statement.query_map([], group_from)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The member deployments of a group deployment, in the group's order.
    pub fn group_members(&self, group_deployment_id: i64) -> Result<Vec<DeploymentRecord>> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "{DEPLOYMENT_SELECT} WHERE d.group_deployment_id = ?1 ORDER BY d.id"
        ))?;
        let rows = statement.query_map([group_deployment_id], deployment_from)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The most recent succeeded deployment of the group.
    pub fn last_succeeded_group(&self, group: &str) -> Result<Option<GroupDeploymentRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("{GROUP_SELECT} WHERE name = ?1 AND state = 'succeeded' ORDER BY id DESC LIMIT 1"),
                [group],
                group_from,
            )
            .optional()?)
    }
}

fn group_from(row: &Row<'_>) -> rusqlite::Result<GroupDeploymentRecord> {
    Ok(GroupDeploymentRecord {
        id: row.get(0)?,
        group: row.get(1)?,
        trigger: row.get(2)?,
        state: row.get(3)?,
        reason: row.get(4)?,
        created_at: row.get(5)?,
        finished_at: row.get(6)?,
    })
}
