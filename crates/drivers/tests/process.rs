//! The process driver against real processes: shells, `sleep`, `printf`,
//! python's http.server. Every process a test starts is SIGKILLed (with its
//! whole process group) when the test's [`Fixture`] is dropped, also when
//! the test fails.

use cutover_config::{ProcessConfig, Slot, SlotPorts, StopSignal};
use cutover_drivers::process::{ProcessDriver, RuntimeId};
use cutover_drivers::{Driver, DriverError, Endpoint, ReleaseSpec, StartedRelease};
use cutover_test_support::process;
use cutover_test_support::wait::eventually_async;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STOP_TIMEOUT: Duration = Duration::from_millis(300);
/// Generous bound for things that should happen "at once" on a loaded machine.
const SOON: Duration = Duration::from_secs(10);

struct Fixture {
    dir: TempDir,
    /// Process groups to SIGKILL when the test ends.
    groups: Mutex<Vec<i32>>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
            groups: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Unique per test, so tests running in parallel never see each other's
    /// releases as orphans.
    fn instance(&self) -> String {
        self.path("state").display().to_string()
    }

    fn config(&self, command: &[&str]) -> ProcessConfig {
        ProcessConfig {
            advertise: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            ports: None,
            env: BTreeMap::new(),
            working_dir: self.dir.path().to_path_buf(),
            stop_signal: StopSignal::Term,
            stop_timeout: STOP_TIMEOUT,
        }
    }

    fn driver(&self, config: ProcessConfig) -> ProcessDriver {
        ProcessDriver::new("web", config, &self.instance())
    }

    fn spec(&self, slot: Slot) -> ReleaseSpec {
        ReleaseSpec {
            app: "web".to_string(),
            slot,
            version: "1.0".to_string(),
            deployment_id: 7,
            log_path: self.path(&format!("state/logs/web-{slot}.log")),
            artifact: None,
        }
    }

    fn kill_group_at_end(&self, pgid: i32) {
        self.groups.lock().expect("lock").push(pgid);
    }

    async fn start(
        &self,
        driver: &ProcessDriver,
        spec: &ReleaseSpec,
    ) -> (StartedRelease, RuntimeId) {
        let started = driver.start(spec).await.expect("release starts");
        let id: RuntimeId = started.runtime_id.parse().expect("runtime id parses");
        self.kill_group_at_end(id.pid);
        (started, id)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pgid in self.groups.lock().map(|g| g.clone()).unwrap_or_default() {
            if let Ok(pgid) = u32::try_from(pgid) {
                process::kill_group(pgid);
            }
        }
    }
}

/// Exists and has not exited (a zombie has exited: it only waits to be reaped).
fn running(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(process::alive)
}

async fn eventually(what: &str, done: impl FnMut() -> bool) {
    eventually_async(SOON, Duration::from_millis(20), what, done).await;
}

/// Waits until the log contains `needle`; returns the whole log.
async fn log_containing(path: &Path, needle: &str) -> String {
    let mut text = String::new();
    eventually(&format!("{} contains {needle:?}", path.display()), || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.contains(needle)
    })
    .await;
    text
}

/// The pid a test shell printed as `<name>=<pid>`.
async fn printed_pid(path: &Path, name: &str) -> i32 {
    let log = log_containing(path, &format!("{name}=")).await;
    log.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}="))?.trim().parse().ok())
        .expect("printed pid")
}

async fn wait_exit(started: &mut StartedRelease) -> String {
    tokio::time::timeout(SOON, started.exited.wait())
        .await
        .expect("release reported its exit")
}

#[tokio::test]
async fn started_release_listens_on_the_port_it_was_given_and_logs_to_its_file() {
    let f = Fixture::new();
    let driver = f.driver(f.config(&[
        "python3",
        "-u",
        "-m",
        "http.server",
        "{port}",
        "--bind",
        "127.0.0.1",
    ]));
    let spec = f.spec(Slot::Blue);
    let (mut started, id) = f.start(&driver, &spec).await;
    assert_eq!(started.first_addr().ip().to_string(), "127.0.0.1");
    assert_eq!(id.port, started.first_addr().port());

    let deadline = Instant::now() + SOON;
    let mut stream = loop {
        match tokio::net::TcpStream::connect(started.first_addr()).await {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(
                    started.exited.exited().is_none(),
                    "http.server exited: {:?}",
                    started.exited.exited()
                );
                assert!(
                    Instant::now() < deadline,
                    "nothing listens on {}: {e}",
                    started.first_addr()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    assert!(
        response.starts_with("HTTP/1.0 200"),
        "unexpected response: {response}"
    );

    // stdout and stderr both land in the log.
    let log = log_containing(&spec.log_path, "\"GET / HTTP/1.0\" 200").await;
    assert!(
        log.contains(&format!("port {}", started.first_addr().port())),
        "no startup line in log:\n{log}"
    );

    driver.stop(&started.runtime_id).await.expect("stop");
    assert_eq!(wait_exit(&mut started).await, "killed by signal SIGTERM");
    assert!(
        tokio::net::TcpStream::connect(started.first_addr())
            .await
            .is_err(),
        "port still open after stop"
    );
}

#[tokio::test]
async fn fixed_port_already_taken_fails_before_spawning() {
    let f = Fixture::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut config = f.config(&["sh", "-c", "touch spawned; exec sleep 30"]);
    config.ports = Some(SlotPorts {
        blue: port,
        green: port.wrapping_add(1).max(1),
    });
    let driver = f.driver(config);
    let spec = f.spec(Slot::Blue);

    let err = driver.start(&spec).await.expect_err("port is taken");
    assert!(
        matches!(err, DriverError::PortInUse { port: p, slot: Slot::Blue } if p == port),
        "{err:?}"
    );
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !f.path("spawned").exists(),
        "the command ran although its port was taken"
    );
    assert!(
        !spec.log_path.exists(),
        "a log was opened although nothing started"
    );
}

#[tokio::test]
async fn fixed_port_is_passed_to_the_release() {
    let f = Fixture::new();
    let port = cutover_test_support::ports::free_port();
    let mut config = f.config(&[
        "sh",
        "-c",
        "echo \"arg=$0 env=$PORT\"; exec sleep 30",
        "{port}",
    ]);
    config.ports = Some(SlotPorts {
        blue: port.wrapping_add(1).max(1),
        green: port,
    });
    let driver = f.driver(config);
    let spec = f.spec(Slot::Green);
    let (started, _) = f.start(&driver, &spec).await;
    assert_eq!(started.first_addr().port(), port);
    log_containing(&spec.log_path, &format!("arg={port} env={port}")).await;
    driver.stop(&started.runtime_id).await.expect("stop");
}

#[tokio::test]
async fn release_that_exits_at_start_is_reported_at_once_with_its_exit_code() {
    let f = Fixture::new();
    let driver = f.driver(f.config(&["sh", "-c", "echo 'cannot open database' >&2; exit 3"]));
    let spec = f.spec(Slot::Green);
    let (mut started, _) = f.start(&driver, &spec).await;
    assert_eq!(wait_exit(&mut started).await, "exited with code 3");
    assert_eq!(
        started.exited.exited().as_deref(),
        Some("exited with code 3")
    );
    log_containing(&spec.log_path, "cannot open database").await;

    let driver = f.driver(f.config(&["sh", "-c", "kill -KILL $$"]));
    let (mut started, _) = f.start(&driver, &spec).await;
    assert_eq!(wait_exit(&mut started).await, "killed by signal SIGKILL");
}

#[tokio::test]
async fn release_output_is_appended_to_an_existing_log() {
    let f = Fixture::new();
    let spec = f.spec(Slot::Blue);
    for word in ["first", "second"] {
        let driver = f.driver(f.config(&["sh", "-c", &format!("echo {word}")]));
        let (mut started, _) = f.start(&driver, &spec).await;
        assert_eq!(wait_exit(&mut started).await, "exited with code 0");
    }
    let log = std::fs::read_to_string(&spec.log_path).expect("log");
    assert_eq!(log, "first\nsecond\n");
}

#[tokio::test]
async fn stop_sends_the_configured_signal_then_kills_the_whole_group_after_stop_timeout() {
    let f = Fixture::new();
    // The shell reports USR1 and carries on; its child ignores USR1.
    let script = r#"trap 'echo got USR1' USR1
(trap '' USR1; exec sleep 60) &
echo "child=$!"
while :; do wait $!; done"#;
    let mut config = f.config(&["sh", "-c", script]);
    config.stop_signal = StopSignal::Usr1;
    let driver = f.driver(config);
    let spec = f.spec(Slot::Blue);
    let (mut started, id) = f.start(&driver, &spec).await;
    let child = printed_pid(&spec.log_path, "child").await;
    assert!(running(id.pid) && running(child));

    let began = Instant::now();
    driver.stop(&started.runtime_id).await.expect("stop");
    let took = began.elapsed();

    assert!(!running(id.pid), "the group leader survived stop");
    assert!(!running(child), "a process of the group survived stop");
    log_containing(&spec.log_path, "got USR1").await;
    assert!(
        took >= STOP_TIMEOUT,
        "SIGKILL came before stop_timeout: {took:?}"
    );
    assert!(
        took < STOP_TIMEOUT + Duration::from_secs(2),
        "stop took far longer than stop_timeout: {took:?}"
    );
    assert_eq!(wait_exit(&mut started).await, "killed by signal SIGKILL");
}

#[tokio::test]
async fn stop_returns_as_soon_as_the_release_exits_on_the_stop_signal() {
    let f = Fixture::new();
    let mut config = f.config(&["sleep", "30"]);
    config.stop_timeout = Duration::from_secs(20);
    let driver = f.driver(config);
    let (mut started, id) = f.start(&driver, &f.spec(Slot::Blue)).await;

    let began = Instant::now();
    driver.stop(&started.runtime_id).await.expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "stop waited for the timeout: {:?}",
        began.elapsed()
    );
    assert!(!running(id.pid));
    assert_eq!(wait_exit(&mut started).await, "killed by signal SIGTERM");
}

#[tokio::test]
async fn stop_leaves_no_process_of_the_group_behind_when_the_leader_exits_first() {
    let f = Fixture::new();
    let script = r#"(trap '' TERM; exec sleep 60) &
echo "child=$!"
exec sleep 60"#;
    let mut config = f.config(&["sh", "-c", script]);
    config.stop_timeout = Duration::from_secs(20);
    let driver = f.driver(config);
    let spec = f.spec(Slot::Green);
    let (started, _) = f.start(&driver, &spec).await;
    let child = printed_pid(&spec.log_path, "child").await;

    let began = Instant::now();
    driver.stop(&started.runtime_id).await.expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "stop waited for the timeout: {:?}",
        began.elapsed()
    );
    assert!(!running(child), "the leader's child outlived stop");
}

#[tokio::test]
async fn stop_of_a_release_that_already_exited_succeeds() {
    let f = Fixture::new();
    let driver = f.driver(f.config(&["sh", "-c", "exit 0"]));
    let (mut started, _) = f.start(&driver, &f.spec(Slot::Blue)).await;
    wait_exit(&mut started).await;
    driver
        .stop(&started.runtime_id)
        .await
        .expect("stopping an exited release succeeds");
    driver.stop(&started.runtime_id).await.expect("and again");
}

#[tokio::test]
async fn stop_after_the_leader_exited_kills_what_it_left_running_in_its_group() {
    let f = Fixture::new();
    let driver = f.driver(f.config(&["sh", "-c", "sleep 60 & echo \"child=$!\"; exit 0"]));
    let spec = f.spec(Slot::Blue);
    let (mut started, _) = f.start(&driver, &spec).await;
    let child = printed_pid(&spec.log_path, "child").await;
    wait_exit(&mut started).await;
    assert!(running(child));

    driver.stop(&started.runtime_id).await.expect("stop");
    assert!(!running(child), "the exited leader's child outlived stop");
}

#[tokio::test]
async fn stop_and_adopt_reject_runtime_ids_they_did_not_write() {
    let f = Fixture::new();
    let driver = f.driver(f.config(&["true"]));
    let addr = "127.0.0.1:1".parse().expect("addr");
    for garbage in ["", "1234", "pid=1;start=x;port=1", "container:abc"] {
        assert!(
            matches!(
                driver.stop(garbage).await,
                Err(DriverError::BadRuntimeId(_))
            ),
            "{garbage}"
        );
        assert!(
            matches!(
                driver.adopt(garbage, &[Endpoint::new(addr, "")]).await,
                Err(DriverError::BadRuntimeId(_))
            ),
            "{garbage}"
        );
    }
}

#[tokio::test]
async fn adopt_finds_a_live_release_and_rejects_a_reused_pid() {
    let f = Fixture::new();
    let spec = f.spec(Slot::Blue);
    let (started, id) = {
        let first_run = f.driver(f.config(&["sleep", "30"]));
        f.start(&first_run, &spec).await
        // The driver is dropped here, as when cutover restarts: the
        // release keeps running.
    };
    let (runtime_id, addr) = (started.runtime_id.clone(), started.first_addr());
    drop(started);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(running(id.pid), "the release died with its driver");

    let restarted = f.driver(f.config(&["sleep", "30"]));
    // Same pid, another start time: another process that got the pid.
    let reused = RuntimeId {
        start: id.start + 1,
        ..id
    }
    .to_string();
    assert!(restarted
        .adopt(&reused, &[Endpoint::new(addr, "")])
        .await
        .expect("adopt")
        .is_none());
    restarted
        .stop(&reused)
        .await
        .expect("stop of a gone release succeeds");
    assert!(
        running(id.pid),
        "stop signalled a process that only shares the pid"
    );

    let mut adopted = restarted
        .adopt(&runtime_id, &[Endpoint::new(addr, "")])
        .await
        .expect("adopt")
        .expect("release is live");
    assert_eq!(adopted.runtime_id, runtime_id);
    assert_eq!(adopted.first_addr(), addr);
    assert!(adopted.exited.exited().is_none());

    restarted.stop(&runtime_id).await.expect("stop");
    assert!(!running(id.pid));
    assert_eq!(
        wait_exit(&mut adopted).await,
        "exited (observed after restart)"
    );
    assert!(restarted
        .adopt(&runtime_id, &[Endpoint::new(addr, "")])
        .await
        .expect("adopt")
        .is_none());
}

#[tokio::test]
async fn stop_orphans_stops_only_this_instances_unrecorded_releases() {
    let f = Fixture::new();
    let config = f.config(&["sleep", "30"]);
    let web = f.driver(config.clone());
    let (kept, kept_id) = f.start(&web, &f.spec(Slot::Blue)).await;
    let (orphan, orphan_id) = f.start(&web, &f.spec(Slot::Green)).await;

    let api = ProcessDriver::new("api", config.clone(), &f.instance());
    let api_spec = ReleaseSpec {
        app: "api".to_string(),
        ..f.spec(Slot::Blue)
    };
    let (_, api_id) = f.start(&api, &api_spec).await;

    let other_instance =
        ProcessDriver::new("web", config, &f.path("other-state").display().to_string());
    let (_, other_id) = f.start(&other_instance, &f.spec(Slot::Green)).await;

    let stopped = web
        .stop_orphans("web", std::slice::from_ref(&kept.runtime_id))
        .await
        .expect("stop_orphans");
    assert_eq!(stopped, vec![orphan.runtime_id.clone()]);
    assert!(!running(orphan_id.pid), "the orphan still runs");
    assert!(running(kept_id.pid), "a kept release was stopped");
    assert!(running(api_id.pid), "another app's release was stopped");
    assert!(
        running(other_id.pid),
        "another cutover instance's release was stopped"
    );

    assert_eq!(
        web.stop_orphans("web", std::slice::from_ref(&kept.runtime_id))
            .await
            .expect("again"),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn stop_orphans_spares_daemons_of_kept_releases_and_stops_those_of_orphans() {
    let f = Fixture::new();
    // The release starts a daemon in its own session (so its own group leader).
    let script = r#"setsid sleep 60 &
echo "daemon=$!"
exec sleep 60"#;
    let web = f.driver(f.config(&["sh", "-c", script]));
    let spec = f.spec(Slot::Blue);
    let (release, release_id) = f.start(&web, &spec).await;
    let daemon = printed_pid(&spec.log_path, "daemon").await;
    f.kill_group_at_end(daemon);
    eventually("the daemon leads its own group", || {
        std::fs::read_to_string(format!("/proc/{daemon}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().nth(2) == Some(&daemon.to_string()))
            })
            .unwrap_or(false)
    })
    .await;

    let stopped = web
        .stop_orphans("web", std::slice::from_ref(&release.runtime_id))
        .await
        .expect("stop_orphans");
    assert!(stopped.is_empty(), "stopped {stopped:?}");
    assert!(running(daemon) && running(release_id.pid));

    let stopped = web.stop_orphans("web", &[]).await.expect("stop_orphans");
    assert_eq!(
        stopped.len(),
        2,
        "expected the release and its daemon: {stopped:?}"
    );
    assert!(stopped.contains(&release.runtime_id));
    assert!(!running(daemon) && !running(release_id.pid));
}

#[tokio::test]
async fn placeholders_are_expanded_and_arguments_never_reach_a_shell() {
    let f = Fixture::new();
    let pwned = f.path("pwned");
    let injection = format!("$(touch {})", pwned.display());
    let semicolon = format!("; touch {}", pwned.display());
    let driver = f.driver(f.config(&[
        "printf",
        "%s\\n",
        "port={port}",
        "version={version}",
        "slot={slot}",
        "app={app}",
        "artifact=[{artifact}]",
        &injection,
        &semicolon,
        "{unknown} {port",
    ]));
    let spec = ReleaseSpec {
        // A value holding a placeholder is not expanded again.
        version: "2.0-{slot}".to_string(),
        artifact: Some(PathBuf::from("/srv/builds/web 2.0.jar")),
        ..f.spec(Slot::Green)
    };
    let (mut started, _) = f.start(&driver, &spec).await;
    assert_eq!(wait_exit(&mut started).await, "exited with code 0");
    let log = std::fs::read_to_string(&spec.log_path).expect("log");
    let port = started.first_addr().port();
    let expected = format!(
        "port={port}\nversion=2.0-{{slot}}\nslot=green\napp=web\nartifact=[/srv/builds/web 2.0.jar]\n{injection}\n{semicolon}\n{{unknown}} {{port\n"
    );
    assert_eq!(log, expected);
    assert!(!pwned.exists(), "an argument was run by a shell");

    let spec = ReleaseSpec {
        log_path: f.path("no-artifact.log"),
        ..f.spec(Slot::Blue)
    };
    let driver = f.driver(f.config(&["printf", "%s\\n", "[{artifact}]"]));
    let (mut started, _) = f.start(&driver, &spec).await;
    wait_exit(&mut started).await;
    assert_eq!(
        std::fs::read_to_string(&spec.log_path).expect("log"),
        "[]\n"
    );
}

#[tokio::test]
async fn release_runs_in_its_working_dir_with_its_port_config_env_and_markers() {
    let f = Fixture::new();
    let app_dir = f.path("app");
    std::fs::create_dir_all(app_dir.join("bin")).expect("mkdir");
    let script = app_dir.join("bin/run");
    std::fs::write(&script, "#!/bin/sh\necho \"cwd=$(pwd -P)\"\nenv\n").expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut config = f.config(&["./bin/run"]);
    config.working_dir = app_dir.clone();
    config
        .env
        .insert("GREETING".to_string(), "hello world".to_string());
    let driver = f.driver(config);
    let spec = f.spec(Slot::Green);
    let (mut started, _) = f.start(&driver, &spec).await;
    assert_eq!(wait_exit(&mut started).await, "exited with code 0");

    let log = std::fs::read_to_string(&spec.log_path).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    let port = started.first_addr().port();
    let cwd = format!(
        "cwd={}",
        app_dir.canonicalize().expect("canonical").display()
    );
    let instance = format!("CUTOVER_INSTANCE={}", f.instance());
    let port_line = format!("PORT={port}");
    let cutover_port_line = format!("CUTOVER_PORT={port}");
    for expected in [
        cwd.as_str(),
        port_line.as_str(),
        cutover_port_line.as_str(),
        "GREETING=hello world",
        "CUTOVER_APP=web",
        "CUTOVER_SLOT=green",
        "CUTOVER_VERSION=1.0",
        "CUTOVER_DEPLOYMENT=7",
        instance.as_str(),
    ] {
        assert!(lines.contains(&expected), "missing `{expected}` in:\n{log}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("PATH=")),
        "PATH was not inherited:\n{log}"
    );
}

#[tokio::test]
async fn prepare_fails_early_on_a_program_or_working_dir_that_does_not_exist() {
    let f = Fixture::new();
    let spec = f.spec(Slot::Blue);

    let ok = f.driver(f.config(&["sh", "-c", "true"]));
    ok.prepare(&spec).await.expect("sh is on PATH");

    let missing = f.driver(f.config(&["./bin/missing-{version}", "--port={port}"]));
    let err = missing.prepare(&spec).await.expect_err("missing program");
    let text = err.to_string();
    assert!(matches!(err, DriverError::Program { .. }), "{err:?}");
    assert!(
        text.contains("bin/missing-1.0") && text.contains("does not exist"),
        "{text}"
    );
    assert!(
        text.contains(&f.dir.path().display().to_string()),
        "working dir not named: {text}"
    );
    let err = missing
        .start(&spec)
        .await
        .expect_err("start fails the same way");
    assert!(matches!(err, DriverError::Program { .. }), "{err:?}");

    let typo = f.driver(f.config(&["pyhton3-no-such-program", "app.py"]));
    let text = typo
        .prepare(&spec)
        .await
        .expect_err("not on PATH")
        .to_string();
    assert!(
        text.contains("pyhton3-no-such-program") && text.contains("not found on PATH"),
        "{text}"
    );

    let mut config = f.config(&["sh"]);
    config.working_dir = f.path("does-not-exist");
    let err = f
        .driver(config)
        .prepare(&spec)
        .await
        .expect_err("missing working dir");
    assert!(matches!(err, DriverError::WorkingDir { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

/// Set for the copy of this test binary that plays a cutover which gets
/// `kill -9`ed: its value is the directory to work in.
const HELPER_ENV: &str = "CUTOVER_DRIVERS_TEST_KILLED_CUTOVER";

/// Only does something when run by the kill -9 test below (as a separate
/// process): starts a release, records its runtime id and waits to be killed.
#[tokio::test]
async fn helper_cutover_that_gets_killed() {
    let Some(dir) = std::env::var_os(HELPER_ENV).map(PathBuf::from) else {
        return;
    };
    let driver = ProcessDriver::new("web", ticking_config(&dir), &dir.display().to_string());
    let spec = ReleaseSpec {
        app: "web".to_string(),
        slot: Slot::Blue,
        version: "1.0".to_string(),
        deployment_id: 1,
        log_path: dir.join("release.log"),
        artifact: None,
    };
    let started = driver.start(&spec).await.expect("start");
    std::fs::write(dir.join("runtime-id.tmp"), &started.runtime_id).expect("write id");
    std::fs::rename(dir.join("runtime-id.tmp"), dir.join("runtime-id")).expect("publish id");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// A release that logs a line every 50ms.
fn ticking_config(dir: &Path) -> ProcessConfig {
    ProcessConfig {
        advertise: None,
        command: ["sh", "-c", "while :; do echo tick; sleep 0.05; done"]
            .map(String::from)
            .to_vec(),
        ports: None,
        env: BTreeMap::new(),
        working_dir: dir.to_path_buf(),
        stop_signal: StopSignal::Term,
        stop_timeout: STOP_TIMEOUT,
    }
}

#[tokio::test]
async fn release_keeps_running_and_logging_after_cutover_is_killed_with_sigkill() {
    let f = Fixture::new();
    let dir = f.dir.path().to_path_buf();
    let mut cutover = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "helper_cutover_that_gets_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the helper cutover");
    let id_file = dir.join("runtime-id");
    let mut runtime_id = String::new();
    eventually("the helper cutover started its release", || {
        runtime_id = std::fs::read_to_string(&id_file).unwrap_or_default();
        !runtime_id.is_empty()
    })
    .await;
    let id: RuntimeId = runtime_id.parse().expect("runtime id");
    f.kill_group_at_end(id.pid);

    cutover.kill().await.expect("kill -9 the helper cutover");
    let log = dir.join("release.log");
    let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running(id.pid), "the release died with cutover");
    eventually("the release keeps logging", || {
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > before
    })
    .await;

    let restarted = ProcessDriver::new("web", ticking_config(&dir), &dir.display().to_string());
    let addr = format!("127.0.0.1:{}", id.port).parse().expect("addr");
    let mut adopted = restarted
        .adopt(&runtime_id, &[Endpoint::new(addr, "")])
        .await
        .expect("adopt")
        .expect("release is live");
    assert!(restarted
        .stop_orphans("web", std::slice::from_ref(&runtime_id))
        .await
        .expect("orphans")
        .is_empty());
    restarted.stop(&runtime_id).await.expect("stop");
    assert!(!running(id.pid));
    assert_eq!(
        wait_exit(&mut adopted).await,
        "exited (observed after restart)"
    );
}
