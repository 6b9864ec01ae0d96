//! A real browser for the dashboard's tests: Debian's `chromedriver` on a
//! free loopback port driving headless Chromium with a throwaway profile,
//! over WebDriver (`fantoccini`). Both are stopped by PID when the test
//! ends, however it ends. Chromium is kept off the network: every host name
//! but loopback fails to resolve and every other request goes to a closed
//! local port.

#![allow(dead_code, clippy::unwrap_used)]

use cutover_test_support::http;
use cutover_test_support::ports::free_port;
use cutover_test_support::process::{self, spawn_logged, wait_ready};
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The real Chromium binary (Debian's `/usr/bin/chromium` is a wrapper
/// script that adds flags of its own).
fn chromium() -> &'static str {
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("chromium is not installed (apt-get install chromium chromium-driver; scripts/test does)")
}

/// `chromedriver` in its own process group, and every process it started.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(dir: &Path) -> Driver {
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let mut child = spawn_logged(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .process_group(0),
            &log,
        )
        .expect(
            "chromedriver is not installed (apt-get install chromium-driver; scripts/test does)",
        );
        wait_ready(
            &mut child,
            "chromedriver",
            (Duration::from_secs(15), Duration::from_millis(50)),
            || http::try_get(port, "/status").is_ok_and(|answer| answer.status == 200),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        Driver { child, port, log }
    }

    /// Every descendant of the driver (Chromium and its helpers), deepest last.
    fn descendants(&self) -> Vec<u32> {
        let mut found = Vec::new();
        let mut parents = vec![self.child.id()];
        while let Some(parent) = parents.pop() {
            for child in process::children_of(parent) {
                found.push(child);
                parents.push(child);
            }
        }
        found
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium may have left the driver's group: stop its processes one
        // by one (by PID, found under the driver), then the group.
        for pid in self.descendants() {
            process::signal(pid, Signal::SIGKILL);
        }
        process::kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    driver: Driver,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::start(dir.path());
        let profile = dir.path().join("profile");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": chromium_args(&profile, width, height),
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session: {e}\nchromedriver log:\n{}",
                    std::fs::read_to_string(&driver.log).unwrap_or_default()
                )
            });
        Browser {
            client,
            driver,
            _dir: dir,
        }
    }

    /// Ends the session (Chromium exits) and the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // `driver`'s Drop stops whatever is left, by PID.
    }

    /// The text of the first element matching `css`, or None.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// An attribute of the first element matching `css`, or None.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(name).await.ok().flatten()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no input {css}: {e}"));
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Runs `script` (a function body; `return` gives the value).
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `check` every 50 ms until it gives a value, for at most `within`.
    pub async fn wait_for<T, F, Fut>(&self, within: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self.eval("return document.body.innerText;").await;
                panic!(
                    "timed out after {within:?} waiting for {what}; the page shows:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the viewport as `<target>/dashboard-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// `target/dashboard-screenshots/`, next to the build's profile directory.
pub fn screenshot_dir() -> PathBuf {
    let profile = cutover_test_support::binaries::bin_dir();
    let target = profile.parent().unwrap_or(&profile).to_path_buf();
    target.join("dashboard-screenshots")
}

fn chromium_args(profile: &Path, width: u32, height: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        // Root in a container has no user namespace sandbox.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--metrics-recording-only",
        "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        // Loopback only: other names do not resolve, other addresses go
        // to a closed local port.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--window-size={width},{height}"));
    args
}
