//! Image retention: the images this cutover built or pulled for an app are
//! recorded (`<state_dir>/docker/<app>.images.json`); after a release is
//! retired, the newest `keep_images` of them and those any container of the
//! app still uses are kept, older ones removed, and so are dangling images
//! left by this app's own builds (they carry its labels). An image that was
//! already present when cutover first used it is never recorded, so never
//! removed: cutover removes only what it created.

use super::app_filter;
use super::client::{self, Client};
use bollard::query_parameters::{ListContainersOptions, ListImagesOptions, RemoveImageOptions};
use bollard::Docker;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ImageRecord {
    /// `registry.local:5000/web:v1`
    pub reference: String,
    /// The image id (`sha256:…`) the reference had when recorded.
    pub id: String,
    /// Milliseconds since the epoch when a release last used it.
    pub last_used_ms: u64,
}

pub(super) struct Records {
    path: PathBuf,
}

impl Records {
    /// Records kept in `dir` (the driver's own state directory).
    pub fn new(dir: &Path, app: &str) -> Records {
        Records {
            path: dir.join(format!("{app}.images.json")),
        }
    }

    pub fn load(&self) -> Vec<ImageRecord> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(
                    "ignoring the unreadable image records {}: {e}",
                    self.path.display()
                );
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    fn save(&self, records: &[ImageRecord]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, &self.path)
    }

    /// Records (or refreshes) an image cutover built or pulled.
    pub fn record(&self, reference: &str, id: &str) {
        let mut records = self.load();
        records.retain(|r| r.reference != reference);
        records.push(ImageRecord {
            reference: reference.to_string(),
            id: id.to_string(),
            last_used_ms: now_ms(),
        });
        self.store(&records);
    }

    /// Marks a recorded image as just used; unrecorded images stay unrecorded.
    pub fn touch(&self, reference: &str) {
        let mut records = self.load();
        let mut changed = false;
        for record in records.iter_mut().filter(|r| r.reference == reference) {
            record.last_used_ms = now_ms();
            changed = true;
        }
        if changed {
            self.store(&records);
        }
    }

    fn store(&self, records: &[ImageRecord]) {
        if let Err(e) = self.save(records) {
            warn!(
                "cannot write the image records {}: {e}; older images may not be cleaned up",
                self.path.display()
            );
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Removes recorded images beyond the newest `keep` and not in use by a
/// container of the app, then dangling images of the app's builds, and the
/// log cursors (files named by container id in `cursors`) of containers
/// that are gone. Best effort: problems are logged, never returned.
pub(super) async fn clean(
    client: &Client,
    records: &Records,
    app: &str,
    instance: &str,
    keep: usize,
    cursors: &Path,
) {
    let Ok(docker) = client.get().await else {
        return;
    };
    let filters = app_filter(instance, app);
    let containers = match docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..ListContainersOptions::default()
        }))
        .await
    {
        Ok(containers) => containers,
        Err(e) => {
            warn!(
                app,
                "image clean-up skipped: listing the app's containers failed: {e}"
            );
            return;
        }
    };
    let existing: HashSet<&str> = containers.iter().filter_map(|c| c.id.as_deref()).collect();
    remove_stale_cursors(cursors, &existing);
    // Containers name their image by the reference they were created with;
    // an image also in use under another tag is only untagged (Docker
    // itself refuses to remove an image a container uses).
    let in_use: HashSet<&str> = containers
        .iter()
        .filter_map(|c| c.image.as_deref())
        .collect();
    remove_old_recorded(docker, records, app, keep, &in_use).await;
    let in_use_ids: HashSet<&str> = containers
        .iter()
        .filter_map(|c| c.image_id.as_deref())
        .collect();
    remove_dangling(docker, app, filters, &in_use_ids).await;
}

/// Log cursors are named by container id; those of gone containers go.
fn remove_stale_cursors(cursors: &Path, existing: &HashSet<&str>) {
    let Ok(entries) = std::fs::read_dir(cursors) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !existing.contains(name.to_string_lossy().as_ref()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes the recorded images beyond the newest `keep` that no container
/// uses, and saves the records of the rest.
async fn remove_old_recorded(
    docker: &Docker,
    records: &Records,
    app: &str,
    keep: usize,
    in_use: &HashSet<&str>,
) {
    let mut all = records.load();
    all.sort_by_key(|record| std::cmp::Reverse(record.last_used_ms));
    let mut kept = Vec::new();
    for (index, record) in all.into_iter().enumerate() {
        let keep_record = index < keep
            || in_use.contains(record.reference.as_str())
            || !remove_recorded(docker, app, keep, &record).await;
        if keep_record {
            kept.push(record);
        }
    }
    if let Err(e) = records.save(&kept) {
        warn!(app, "cannot write the image records: {e}");
    }
}

/// Removes one recorded image; false when its record must stay (it could
/// not be checked or removed), true when it can be forgotten.
async fn remove_recorded(docker: &Docker, app: &str, keep: usize, record: &ImageRecord) -> bool {
    // Only the tag cutover made, and only while it still names the image
    // cutover recorded (someone may have re-tagged it since).
    match docker.inspect_image(&record.reference).await {
        Ok(image) if image.id.as_deref() == Some(record.id.as_str()) => {}
        Ok(_) => {
            debug!(
                app,
                "{} now names another image; forgetting it", record.reference
            );
            return true;
        }
        Err(e) if client::is_not_found(&e) => return true,
        Err(e) => {
            warn!(app, "cannot inspect image {}: {e}", record.reference);
            return false;
        }
    }
    match docker
        .remove_image(&record.reference, None::<RemoveImageOptions>, None)
        .await
    {
        Ok(_) => {
            info!(
                app,
                "removed image {} (keeping the newest {keep})", record.reference
            );
            true
        }
        Err(e) if client::is_not_found(&e) => true,
        Err(e) if client::status(&e) == Some(409) => {
            debug!(
                app,
                "image {} is still in use: {}",
                record.reference,
                client::message(&e)
            );
            false
        }
        Err(e) => {
            warn!(app, "cannot remove image {}: {e}", record.reference);
            false
        }
    }
}

/// Removes dangling images labelled with the app (left by its builds) that
/// no container uses.
async fn remove_dangling(
    docker: &Docker,
    app: &str,
    mut filters: HashMap<String, Vec<String>>,
    in_use_ids: &HashSet<&str>,
) {
    filters.insert("dangling".to_string(), vec!["true".to_string()]);
    let images = match docker
        .list_images(Some(ListImagesOptions {
            filters: Some(filters),
            ..ListImagesOptions::default()
        }))
        .await
    {
        Ok(images) => images,
        Err(e) => {
            warn!(app, "listing dangling images failed: {e}");
            return;
        }
    };
    for image in images {
        if in_use_ids.contains(image.id.as_str()) {
            continue;
        }
        match docker
            .remove_image(&image.id, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => info!(
                app,
                "removed dangling image {} left by an earlier build",
                short_id(&image.id)
            ),
            Err(e) if client::is_not_found(&e) || client::status(&e) == Some(409) => {}
            Err(e) => warn!(
                app,
                "cannot remove dangling image {}: {e}",
                short_id(&image.id)
            ),
        }
    }
}

fn short_id(id: &str) -> &str {
    let bare = id.strip_prefix("sha256:").unwrap_or(id);
    bare.get(..12).unwrap_or(bare)
}
