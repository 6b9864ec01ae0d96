//! The dashboard (`GET /` of the admin API over TCP) in a real browser:
//! Debian's Chromium, headless, driven over WebDriver by chromedriver. A
//! real `cutover serve` with two apps (`web`: automatic; `canary`: manual
//! promotion and a 50 % shift) whose releases are the test app; one of them
//! prints a hostile line (`<script>…`, `<img onerror>`) into its log.
//!
//! Screenshots of the main views go to `target/dashboard-screenshots/`,
//! with `measurements.txt` (page size, time to first render).

#![allow(clippy::unwrap_used)]

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::Daemon;
use cutover_test_support::binaries;
use cutover_test_support::http::Connection;
use cutover_test_support::ports::free_port;
use cutover_test_support::wait::eventually;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const TOKEN: &str = "dashboard-test-token-4f1c9b7e";
const READ_TOKEN: &str = "dashboard-read-only-token-81d2";
const HOSTILE: &str = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>";
const TERMINAL: [&str; 4] = ["succeeded", "failed", "aborted", "rolled_back"];
const STEP: Duration = Duration::from_secs(20);

/// A daemon with the admin API on a TCP port and a token file.
struct Site {
    daemon: Daemon,
    admin_port: u16,
    _secrets: tempfile::TempDir,
}

impl Site {
    fn start() -> Site {
        let secrets = tempfile::tempdir().unwrap();
        let tokens = secrets.path().join("tokens");
        std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
        let read_tokens = secrets.path().join("read-tokens");
        std::fs::write(&read_tokens, format!("{READ_TOKEN}\n")).unwrap();
        for file in [&tokens, &read_tokens] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let admin_port = free_port();
        let testapp = binaries::testapp();
        let testapp = testapp.display();
        // `web` prints HOSTILE at start, then runs the test app, unhealthy
        // for its first 600 ms: the page follows a deployment from `checking` on.
        let apps = format!(
            r#"
[admin]
listen = "127.0.0.1:{admin_port}"
token_file = "{tokens}"
read_tokens_file = "{read_tokens}"

[[app]]
name = "web"
hosts = ["web.test"]
drain_timeout = "5s"

[app.health]
path = "/health"
deploy_timeout = "20s"
interval = "1s"

[app.process]
command = ["sh", "-c", 'printf "%s %s\n" "$3" "$2"; exec "$0" --port "$1" --version "$2" --healthy-after 600', "{testapp}", "{{port}}", "{{version}}", "{HOSTILE}"]
stop_timeout = "5s"

[[app]]
name = "canary"
hosts = ["canary.test"]
drain_timeout = "5s"
promotion = "manual"
shift = {{ steps = [50, 100], every = "2s" }}

[app.health]
path = "/health"
deploy_timeout = "20s"
interval = "1s"

[app.process]
command = ["{testapp}", "--port", "{{port}}", "--version", "{{version}}"]
stop_timeout = "5s"
"#,
            tokens = tokens.display(),
            read_tokens = read_tokens.display(),
        );
        let daemon = Daemon::start_with_apps(&apps);
        Site {
            daemon,
            admin_port,
            _secrets: secrets,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.admin_port)
    }

    fn app_status(&self, app: &str) -> Value {
        self.daemon.admin_get(&format!("/v1/apps/{app}"))
    }

    /// The first release of `canary`, through the CLI: deploy, promote.
    fn first_canary(&self) {
        self.daemon
            .ok(&["deploy", "canary", "--version", "c1", "--no-wait"]);
        eventually(STEP, "canary awaiting promotion", || {
            self.app_status("canary")["current_deployment"]["state"] == "awaiting_promotion"
        });
        self.daemon.ok(&["promote", "canary"]);
        eventually(STEP, "c1 live", || {
            self.app_status("canary")["live_version"] == "c1"
                && self.app_status("canary")["current_deployment"].is_null()
        });
    }
}

fn app(app: &str, role: &str) -> String {
    format!("[data-app=\"{app}\"] [data-role=\"{role}\"]")
}

/// Confirms the dialog an action opened.
async fn confirm(browser: &Browser) {
    browser
        .wait_for(STEP, "the confirmation dialog", move || async move {
            let open = browser
                .eval("return document.getElementById('confirm').open;")
                .await;
            open.as_bool().filter(|open| *open)
        })
        .await;
    browser.click("#confirm-ok").await;
}

/// The id and state of the deployment `app`'s panel shows.
async fn panel(browser: &Browser, app_name: &str) -> Option<(i64, String)> {
    let css = app(app_name, "deployment-panel");
    let id = browser.attr(&css, "data-id").await?.parse().ok()?;
    Some((id, browser.attr(&css, "data-state").await?))
}

/// Watches `app`'s panel from a deployment newer than `after` to its end;
/// the states it showed, in order, and the deployment's id.
async fn watch(browser: &Browser, app_name: &str, after: i64) -> (i64, Vec<String>) {
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let seen_ref = &seen;
    let id = browser
        .wait_for(STEP, "the deployment to end", move || async move {
            let (id, state) = panel(browser, app_name).await?;
            if id <= after {
                return None;
            }
            let mut seen = seen_ref.borrow_mut();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            TERMINAL.contains(&state.as_str()).then_some(id)
        })
        .await;
    (id, seen.into_inner())
}

async fn current_id(browser: &Browser, app_name: &str) -> i64 {
    panel(browser, app_name).await.map_or(0, |(id, _)| id)
}

async fn wait_text(browser: &Browser, css: &str, what: &str, wanted: &str) -> String {
    browser
        .wait_for(STEP, what, move || async move {
            let text = browser.text(css).await?;
            text.contains(wanted).then_some(text)
        })
        .await
}

/// Steps of the panel as `state:class` (done, current, failed, skipped).
async fn steps(browser: &Browser, app_name: &str) -> Vec<String> {
    let script = format!(
        "return [...document.querySelectorAll('[data-app=\"{app_name}\"] [data-step]')]\
         .map(e => e.dataset.step + ':' + e.className.replace('step ', ''));"
    );
    let value = browser.eval(&script).await;
    serde_json::from_value(value).unwrap()
}

async fn scroll_to(browser: &Browser, app_name: &str) {
    let script = format!(
        "document.querySelector('[data-app=\"{app_name}\"]').scrollIntoView({{block: 'start'}}); \
         window.scrollBy(0, -56); return true;"
    );
    browser.eval(&script).await;
}

/// A wrong token is refused on the form; the right one opens the apps.
/// Signs in; the navigation timing of this first (cold) load.
async fn sign_in(browser: &Browser, site: &Site) -> Value {
    browser.client.goto(&site.url()).await.unwrap();
    let cold = timing(browser, false).await;
    browser.type_into("#token", "not-the-token").await;
    browser.click("#sign-in").await;
    wait_text(browser, "#login-error", "the refusal", "refused").await;
    browser.screenshot("01-sign-in").await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in").await;
    wait_text(
        browser,
        &app("web", "live-version"),
        "web's live version",
        "v1",
    )
    .await;
    wait_text(browser, &app("canary", "live-version"), "canary's", "c1").await;
    let kept = browser
        .eval("return sessionStorage.getItem('cutover-admin-token');")
        .await;
    assert_eq!(
        kept, TOKEN,
        "the token is kept in the tab's session storage"
    );
    let cookies = browser.eval("return document.cookie;").await;
    assert_eq!(cookies, "", "no cookies");
    cold
}

/// Records in the page every deployment panel `app`'s card draws, as
/// `[id, state]` in `window.__panels`.
async fn record_panels(browser: &Browser, app_name: &str) {
    let script = format!(
        "window.__panels = []; \
         const target = document.querySelector('[data-app=\"{app_name}\"] [data-role=\"deployment\"]'); \
         new MutationObserver((records) => {{ for (const record of records) for (const node of record.addedNodes) \
           if (node.dataset && node.dataset.state) window.__panels.push([Number(node.dataset.id), node.dataset.state]); }}) \
           .observe(target, {{ childList: true }}); \
         return true;"
    );
    browser.eval(&script).await;
}

/// The states the page drew for deployment `id`, repeats removed.
async fn drawn_states(browser: &Browser, id: i64) -> Vec<String> {
    let panels: Vec<(i64, String)> =
        serde_json::from_value(browser.eval("return window.__panels;").await).unwrap();
    let mut states: Vec<String> = Vec::new();
    for (_, state) in panels.into_iter().filter(|(panel, _)| *panel == id) {
        if states.last() != Some(&state) {
            states.push(state);
        }
    }
    states
}

/// Deploy v2 from the page: the steps appear live, then v2 is live.
async fn deploy_v2(browser: &Browser) {
    browser.eval("window.__samePage = true; return true;").await;
    record_panels(browser, "web").await;
    let before = current_id(browser, "web").await;
    browser.type_into(&app("web", "version"), "v2").await;
    browser.click(&app("web", "deploy")).await;
    confirm(browser).await;
    browser
        .wait_for(STEP, "a step of the new deployment", move || async move {
            let (id, state) = panel(browser, "web").await?;
            (id > before && !TERMINAL.contains(&state.as_str())).then_some(())
        })
        .await;
    scroll_to(browser, "web").await;
    browser.screenshot("03-deploying").await;
    let (id, seen) = watch(browser, "web", before).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("succeeded"),
        "{seen:?}"
    );
    // Each step was drawn as its event arrived, in order, in this page.
    let drawn = drawn_states(browser, id).await;
    let live_steps = ["switching", "draining", "retiring", "succeeded"];
    let mut rest = drawn.iter();
    for step in live_steps {
        assert!(
            rest.any(|state| state == step),
            "the panel drew {step} live, after the steps before it: {drawn:?}"
        );
    }
    let steps = steps(browser, "web").await;
    for step in [
        "starting",
        "checking",
        "switching",
        "draining",
        "retiring",
        "succeeded",
    ] {
        assert!(
            steps.contains(&format!("{step}:done")),
            "{step} in {steps:?}"
        );
    }
    wait_text(browser, &app("web", "live-version"), "v2 live", "v2").await;
    let outcome = browser.text(&app("web", "outcome")).await.unwrap();
    assert!(outcome.contains("of v2 started"), "{outcome}");
    let same = browser.eval("return window.__samePage === true;").await;
    assert_eq!(same, true, "the page updated in place (no reload)");
    browser.screenshot("04-deployed").await;
}

/// Roll back from the page: v1 is live again.
async fn roll_back(browser: &Browser) {
    let before = current_id(browser, "web").await;
    browser.click(&app("web", "rollback")).await;
    confirm(browser).await;
    let (_, seen) = watch(browser, "web", before).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("succeeded"),
        "{seen:?}"
    );
    wait_text(browser, &app("web", "live-version"), "v1 live again", "v1").await;
    let history = browser.text(&app("web", "history")).await.unwrap();
    assert!(history.contains("rollback"), "{history}");
}

/// canary: c2 waits for promotion with preview instructions; promoting it
/// shows the 50 % split; c3 is aborted while it waits.
async fn promote_and_abort(browser: &Browser) {
    let before = current_id(browser, "canary").await;
    browser.type_into(&app("canary", "version"), "c2").await;
    browser.click(&app("canary", "deploy")).await;
    confirm(browser).await;
    let preview = wait_text(
        browser,
        &app("canary", "preview"),
        "preview",
        "X-Cutover-Preview: 1",
    )
    .await;
    assert!(preview.contains("c2"), "{preview}");
    scroll_to(browser, "canary").await;
    browser.screenshot("05-awaiting-promotion").await;
    browser.click(&app("canary", "promote")).await;
    confirm(browser).await;
    let split = &app("canary", "split");
    browser
        .wait_for(STEP, "the 50% split", move || async move {
            (browser.attr(split, "data-percent").await? == "50").then_some(())
        })
        .await;
    browser.screenshot("06-traffic-split").await;
    let (_, seen) = watch(browser, "canary", before).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("succeeded"),
        "{seen:?}"
    );
    wait_text(browser, &app("canary", "live-version"), "c2 live", "c2").await;

    let before = current_id(browser, "canary").await;
    browser.type_into(&app("canary", "version"), "c3").await;
    browser.click(&app("canary", "deploy")).await;
    confirm(browser).await;
    wait_text(browser, &app("canary", "preview"), "c3 preview", "c3").await;
    browser.click(&app("canary", "abort")).await;
    confirm(browser).await;
    let (_, seen) = watch(browser, "canary", before).await;
    assert_eq!(seen.last().map(String::as_str), Some("aborted"), "{seen:?}");
    wait_text(
        browser,
        &app("canary", "live-version"),
        "c2 still live",
        "c2",
    )
    .await;
}

/// A hostile version label and log line are shown as text; nothing runs.
async fn hostile_input_is_text(browser: &Browser) {
    browser.type_into(&app("web", "version"), HOSTILE).await;
    browser.click(&app("web", "deploy")).await;
    let title = browser
        .wait_for(STEP, "the dialog", move || async move {
            browser.text("#confirm-title").await
        })
        .await;
    assert!(title.contains(HOSTILE), "{title}");
    browser.click("#confirm-ok").await;
    let outcome = wait_text(
        browser,
        &app("web", "outcome"),
        "the refusal",
        "failed (400)",
    )
    .await;
    assert!(outcome.contains(HOSTILE), "{outcome}");
    browser.click(&app("web", "log-refresh")).await;
    let log = wait_text(browser, &app("web", "log"), "the hostile log line", HOSTILE).await;
    assert!(log.contains(&format!("{HOSTILE} v1")), "{log}");
    let injected = browser
        .eval(
            "return { pwned: window.__pwned === undefined ? null : window.__pwned, \
             elements: document.querySelectorAll('main script, main img, dialog script, dialog img, \
             #toasts script, #toasts img').length };",
        )
        .await;
    assert_eq!(injected["pwned"], Value::Null, "no hostile script ran");
    assert_eq!(injected["elements"], 0, "no element was made from data");
    scroll_to(browser, "web").await;
    browser.screenshot("07-hostile-version").await;
    browser
        .eval(&format!(
            "document.getElementById('toasts').replaceChildren(); \
             document.querySelector('{}').scrollIntoView({{block: 'end'}}); return true;",
            app("web", "log")
        ))
        .await;
    browser.screenshot("08-hostile-log-line").await;
}

/// Signed in again with a read-only token, the page shows everything but
/// an action is refused (403) and changes nothing.
async fn read_only_token_cannot_act(browser: &Browser, site: &Site) {
    browser.click("#sign-out").await;
    let kept = browser
        .eval("return sessionStorage.getItem('cutover-admin-token');")
        .await;
    assert_eq!(kept, Value::Null, "signing out forgets the token");
    browser.type_into("#token", READ_TOKEN).await;
    browser.click("#sign-in").await;
    wait_text(
        browser,
        &app("web", "live-version"),
        "web for a reader",
        "v1",
    )
    .await;
    let deployments = tokio::task::block_in_place(|| site.daemon.history().len());
    browser.click(&app("web", "rollback")).await;
    confirm(browser).await;
    wait_text(
        browser,
        &app("web", "outcome"),
        "the refusal",
        "not allowed with this token",
    )
    .await;
    let after = tokio::task::block_in_place(|| site.daemon.history().len());
    assert_eq!(after, deployments, "a read-only token changed nothing");
}

/// Navigation timing of the page as loaded last (ms from navigation
/// start), once it has painted (and, with `apps`, drawn the apps).
async fn timing(browser: &Browser, apps: bool) -> Value {
    let script = format!(
        "const nav = performance.getEntriesByType('navigation')[0]; \
         const fcp = performance.getEntriesByName('first-contentful-paint')[0]; \
         const apps = performance.getEntriesByName('cutover-apps-rendered')[0]; \
         if (!nav || !nav.loadEventEnd || !fcp || ({apps} && !apps)) return null; \
         return {{ dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd, \
         first_contentful_paint_ms: fcp.startTime, apps_rendered_ms: apps ? apps.startTime : null, \
         transferred_bytes: nav.transferSize }};"
    );
    let script = &script;
    browser
        .wait_for(STEP, "the first render", move || async move {
            let value = browser.eval(script).await;
            (!value.is_null()).then_some(value)
        })
        .await
}

/// Page size, and time to first render: `cold` is the first load of this
/// browser (the sign-in form); a reload with the token kept (files
/// revalidated by ETag) measures the time to the apps drawn with data.
async fn measure(browser: &Browser, site: &Site, cold: &Value) -> String {
    browser.client.goto(&site.url()).await.unwrap();
    let warm = timing(browser, true).await;
    let mut sizes = Vec::new();
    for path in [
        "/",
        "/assets/dashboard.js",
        "/assets/dashboard.css",
        "/assets/favicon.svg",
    ] {
        let answer = Connection::open(site.admin_port)
            .unwrap()
            .get(path)
            .unwrap();
        assert_eq!(answer.status, 200, "{path}");
        sizes.push((path, answer.body.len()));
    }
    let total: usize = sizes.iter().map(|(_, size)| size).sum();
    format!(
        "page bytes (uncompressed, as served): {sizes:?}, total {total}\n\
         headless Chromium, first load (sign-in form): {cold}\n\
         headless Chromium, reload signed in (apps drawn with data): {warm}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_deploys_promotes_aborts_and_rolls_back_in_a_real_browser() {
    let site = tokio::task::block_in_place(|| {
        let site = Site::start();
        site.daemon.deploy("v1");
        site.first_canary();
        site
    });
    let browser = Browser::start(1280, 1000).await;
    let cold = sign_in(&browser, &site).await;
    browser.screenshot("02-overview").await;
    deploy_v2(&browser).await;
    roll_back(&browser).await;
    promote_and_abort(&browser).await;
    hostile_input_is_text(&browser).await;
    read_only_token_cannot_act(&browser, &site).await;
    let measured = measure(&browser, &site, &cold).await;
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.eval("window.scrollTo(0, 0); return true;").await;
    browser.screenshot("09-phone").await;
    scroll_to(&browser, "web").await;
    browser.eval("window.scrollBy(0, 700); return true;").await;
    browser.screenshot("10-phone-deployment").await;
    let dir = browser::screenshot_dir();
    std::fs::write(dir.join("measurements.txt"), &measured).unwrap();
    eprintln!("{measured}screenshots: {}", dir.display());
    browser.close().await;
}

/// The page and its assets need no token and carry the security headers;
/// the data behind them does need one.
#[test]
fn the_page_is_served_without_a_token_under_a_strict_policy() {
    let site = Site::start();
    let page = Connection::open(site.admin_port).unwrap().get("/").unwrap();
    assert_eq!(page.status, 200);
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.text().contains("/assets/dashboard.js"));
    let script = Connection::open(site.admin_port)
        .unwrap()
        .get("/assets/dashboard.js")
        .unwrap();
    assert_eq!(script.status, 200);
    assert!(script
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    let data = Connection::open(site.admin_port)
        .unwrap()
        .get("/v1/apps")
        .unwrap();
    assert_eq!(data.status, 401, "{}", data.text());
    let missing = Connection::open(site.admin_port)
        .unwrap()
        .get("/assets/missing.js")
        .unwrap();
    assert_eq!(missing.status, 404, "{}", missing.text());
}
