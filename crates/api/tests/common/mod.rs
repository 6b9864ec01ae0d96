//! What every admin API test starts from: `text` written as the
//! `cutover.toml` of a temporary directory, checked as `serve` checks it,
//! and a real engine (real SQLite store, real route table) started on it.

#![allow(clippy::unwrap_used, dead_code)]

use cutover_config::Config;
use cutover_engine::Engine;
use cutover_proxy::Router;
use cutover_store::Store;
use std::path::Path;
use std::sync::Arc;

/// The engine and the configuration it runs, from `<dir>/cutover.toml`.
pub async fn engine(dir: &Path, text: &str) -> (Engine, Config) {
    let file = dir.join("cutover.toml");
    std::fs::write(&file, text).unwrap();
    let config = Config::load_checked(&file).unwrap();
    std::fs::create_dir_all(config.logs_dir()).unwrap();
    let store = Store::open(&config.database_path()).unwrap();
    let router = Router::new(
        config
            .apps
            .iter()
            .map(|app| (app.name.clone(), app.hosts.clone()))
            .collect(),
    );
    let engine = Engine::start(Arc::new(config.clone()), store, router)
        .await
        .unwrap();
    (engine, config)
}
