//! `upgrade`: UPGRADES upgrades of the proxy itself, one a second, under
//! keep-alive load (wrk): `cutover upgrade`, nginx's `nginx -s reload`, and
//! nginx's binary upgrade (USR2, then WINCH and QUIT to the old master).
//! Failed requests (non-2xx and socket errors) and the p99 latency added
//! over the same run without upgrades.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bench::Bench;
use crate::config::WrkDuration;
use crate::nginx::{self, NginxSpec};
use crate::pin::Pins;
use crate::wrk::{Charged, Metrics, Wrk};

const WORKERS: u32 = 1;
/// Between two upgrades.
const EVERY: Duration = Duration::from_secs(1);

/// One target's two runs.
struct UpgradeRow {
    target: &'static str,
    upgrades_ok: u32,
    upgrades: u32,
    base: Metrics,
    during: Metrics,
}

pub fn run(bench: &Bench) -> Result<String> {
    let pins = bench.pins(WORKERS);
    let upgrades = bench.cli.upgrades;
    log!(
        "upgrade: {upgrades} upgrades under keep-alive load ({} connections)",
        bench.cli.conns
    );
    let mut rows = Vec::new();
    let measured = [
        ("cutover-upgrade", cutover_row as Measure),
        ("nginx-reload", nginx_reload_row),
        ("nginx-binary-upgrade", nginx_binary_row),
    ];
    for (target, measure) in measured {
        match measure(bench, &pins, target) {
            Ok(row) => rows.push(row),
            Err(e) => {
                bench.mark_failed();
                log!("  {target}: not measured: {e:#}");
            }
        }
        bench.processes.stop_all();
    }
    Ok(table(bench.cli.conns, &rows))
}

type Measure = fn(&Bench, &Pins, &'static str) -> Result<UpgradeRow>;

fn cutover_row(bench: &Bench, pins: &Pins, target: &'static str) -> Result<UpgradeRow> {
    if !bench.cutover_available() {
        bail!("{} is missing", bench.bins.cutover.display());
    }
    let cutover = bench.start_cutover(WORKERS, &pins.servers)?;
    let mut serving = u32::try_from(cutover.proc.pid).unwrap_or(0);
    let row = under_load(bench, pins, target, cutover.port, |_| {
        serving = cutover.upgrade(&bench.processes)?;
        Ok(())
    });
    // The last process took over outside the bench's children: stop it by
    // its PID (the first one exited after handing over).
    if serving > 1 {
        let _ = kill(Pid::from_raw(serving as i32), Signal::SIGTERM);
    }
    cutover.stop(&bench.processes);
    row
}

fn nginx_row(
    bench: &Bench,
    pins: &Pins,
    target: &'static str,
    upgrade: fn(&Path, &Path) -> Result<()>,
) -> Result<UpgradeRow> {
    let backend = bench.start_backend(WORKERS, &pins.servers)?;
    let port = crate::net::free_port()?;
    let dir = bench.fresh_dir(target);
    let nginx = bench.start_nginx(NginxSpec {
        site: nginx::keepalive_site(port, backend.port, bench.cli.nginx_headers),
        dir: dir.clone(),
        port,
        workers: WORKERS,
        worker_connections: nginx::DEFAULT_WORKER_CONNECTIONS,
        include: None,
        pin: &pins.servers,
    })?;
    let binary = nginx::binary().context("nginx not found")?;
    let row = under_load(bench, pins, target, port, |_| upgrade(&binary, &dir));
    // After a binary upgrade the master is a process of its own: by pid file.
    if let Some(master) = read_pid(&dir.join("nginx.pid")) {
        let _ = kill(master, Signal::SIGTERM);
    }
    bench.processes.stop(&nginx.proc);
    row
}

fn nginx_reload_row(bench: &Bench, pins: &Pins, target: &'static str) -> Result<UpgradeRow> {
    nginx_row(bench, pins, target, |binary, dir| {
        let reload = std::process::Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-s", "reload"])
            .output()?;
        match reload.status.success() {
            true => Ok(()),
            false => bail!(
                "nginx -s reload: {}",
                String::from_utf8_lossy(&reload.stderr)
            ),
        }
    })
}

/// nginx ignores USR2 while its parent is the process that started it
/// ("the changing binary signal is ignored"), so this one runs daemonized,
/// as in production: its master is re-parented to the bench (a child
/// subreaper) and found through its pid file.
fn nginx_binary_row(bench: &Bench, pins: &Pins, target: &'static str) -> Result<UpgradeRow> {
    let backend = bench.start_backend(WORKERS, &pins.servers)?;
    let port = crate::net::free_port()?;
    let dir = bench.fresh_dir(target);
    std::fs::create_dir_all(dir.join("tmp"))?;
    let as_root = nix::unistd::geteuid().is_root();
    let conf = nginx::main_conf(&dir, WORKERS, nginx::DEFAULT_WORKER_CONNECTIONS, as_root);
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let site = nginx::keepalive_site(port, backend.port, bench.cli.nginx_headers);
    std::fs::write(dir.join("site.conf"), site)?;
    let binary = nginx::binary().context("nginx not found")?;
    let mut command = pins.servers.command(&binary);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(std::process::Stdio::null());
    let launcher = bench.processes.spawn("nginx (daemon)", command)?.proc;
    match bench.processes.wait(&launcher, Duration::from_secs(10))? {
        Some(status) if status.success() => {}
        other => bail!("nginx did not start: {other:?}"),
    }
    if !crate::net::wait_listening(port, Duration::from_secs(10), || true) {
        bail!("nginx did not listen on {port}");
    }
    let row = under_load(bench, pins, target, port, |_| nginx_binary_upgrade(&dir));
    if let Some(master) = read_pid(&dir.join("nginx.pid")) {
        let _ = kill(master, Signal::SIGTERM);
    }
    row
}

/// nginx's documented binary upgrade: USR2 starts a new master (the old
/// pid file becomes `nginx.pid.oldbin`), WINCH stops the old workers
/// gracefully, QUIT ends the old master.
fn nginx_binary_upgrade(dir: &Path) -> Result<()> {
    let pid_file = dir.join("nginx.pid");
    let old = read_pid(&pid_file).context("no nginx.pid")?;
    kill(old, Signal::SIGUSR2)?;
    wait_until(Duration::from_secs(10), "the new nginx master", || {
        read_pid(&pid_file).is_some_and(|new| new != old)
    })?;
    kill(old, Signal::SIGWINCH)?;
    kill(old, Signal::SIGQUIT)?;
    wait_until(
        Duration::from_secs(30),
        "the old nginx master to exit",
        || kill(old, None).is_err() || is_zombie(old),
    )
}

fn read_pid(path: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 1)
        .map(Pid::from_raw)
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            bail!("waited {within:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// wrk without upgrades, then wrk again while `upgrade(1..=UPGRADES)` runs
/// one a second; each run lasts about 1.5 s per upgrade plus 3 s.
fn under_load(
    bench: &Bench,
    pins: &Pins,
    target: &'static str,
    port: u16,
    mut upgrade: impl FnMut(u32) -> Result<()>,
) -> Result<UpgradeRow> {
    let upgrades = bench.cli.upgrades;
    let seconds = u64::from(upgrades) * 3 / 2 + 3;
    let wrk = Wrk {
        processes: &bench.processes,
        pin: pins.load.clone(),
        conns: bench.cli.conns,
        duration: WrkDuration(format!("{seconds}s")),
        warmup: WrkDuration("2s".to_string()),
        newconn: false,
        dir: bench.fresh_dir(&format!("upgrade-{target}")),
    };
    std::fs::create_dir_all(&wrk.dir)?;
    let url = format!("http://127.0.0.1:{port}/");
    let charged = || Charged {
        proxy: None,
        app: &[],
    };
    let base = wrk.measure(&format!("{target}-base"), &url, charged())?;
    let wrk_no_warmup = Wrk {
        warmup: WrkDuration("0s".to_string()),
        ..wrk
    };
    let (during, upgrades_ok) = std::thread::scope(|scope| {
        // wrk on its own thread; the upgrades on this one.
        let measuring =
            scope.spawn(|| wrk_no_warmup.measure(&format!("{target}-upgrades"), &url, charged()));
        std::thread::sleep(EVERY);
        let mut ok = 0;
        for n in 1..=upgrades {
            match upgrade(n) {
                Ok(()) => ok += 1,
                Err(e) => log!("  {target}: upgrade {n} failed: {e:#}"),
            }
            std::thread::sleep(EVERY);
        }
        let during = measuring
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the wrk thread panicked")))
            .map(|mut metrics| {
                // The upgrades' children were reaped during wrk's run too:
                // the children's CPU time is not wrk's alone.
                metrics.load_cpu_us_per_request = None;
                metrics
            });
        (during, ok)
    });
    let row = UpgradeRow {
        target,
        upgrades_ok,
        upgrades,
        base,
        during: during?,
    };
    log!("  {}", row.line());
    Ok(row)
}

impl UpgradeRow {
    fn line(&self) -> String {
        format!(
            "{:<22} {:>8} {:>12} {:>10} {:>14.2} {:>12.2} {:>14.2}",
            self.target,
            format!("{}/{}", self.upgrades_ok, self.upgrades),
            self.during.requests_per_second.round(),
            self.during.errors,
            self.base.p99_us / 1000.0,
            self.during.p99_us / 1000.0,
            (self.during.p99_us - self.base.p99_us) / 1000.0,
        )
    }
}

fn table(conns: u32, rows: &[UpgradeRow]) -> String {
    let mut out = format!(
        "\n== upgrades of the proxy under keep-alive load ({conns} connections; failed = non-2xx + socket errors during the run with upgrades)\n"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>12} {:>10} {:>14} {:>12} {:>14}",
        "target", "upgrades", "req/s", "failed", "p99_base_ms", "p99_ms", "added_p99_ms"
    );
    for row in rows {
        let _ = writeln!(out, "{}", row.line());
    }
    out
}
