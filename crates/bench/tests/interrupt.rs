//! Ctrl-C in the middle of a measurement: the real `cutover-bench` binary,
//! with the real testapp and wrk, stops everything it started and exits 130.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(name).is_file())
}

/// Processes whose environment carries the bench's registry marker.
fn started_by(bench_pid: u32) -> Vec<(i32, String)> {
    let marker = format!("CUTOVER_BENCH_REGISTRY={bench_pid}-");
    let entries = std::fs::read_dir("/proc").expect("/proc");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|e| e.starts_with(marker.as_bytes()))
            })
        })
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat[stat.rfind(')')? + 2..].chars().next()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (state != 'Z').then(|| (pid, comm.trim().to_string()))
        })
        .collect()
}

#[test]
fn ctrl_c_during_a_measurement_stops_everything_the_bench_started() {
    let bench = Path::new(env!("CARGO_BIN_EXE_cutover-bench"));
    let bin_dir = bench.parent().unwrap();
    if !on_path("wrk") || !on_path("nginx") || !bin_dir.join("cutover-testapp").is_file() {
        eprintln!("needs wrk, nginx and a built cutover-testapp next to cutover-bench: skipped");
        return;
    }
    let mut child = Command::new(bench)
        .args(["table", "--targets=direct", "--duration=60s", "--warmup=0"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = started_by(child.id());
        if running.iter().any(|(_, comm)| comm == "wrk")
            && running
                .iter()
                .any(|(_, comm)| comm.starts_with("cutover-testapp"))
        {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the bench ended early");
        assert!(Instant::now() < deadline, "wrk never started: {running:?}");
        thread::sleep(Duration::from_millis(100));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the bench did not stop");
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    assert_eq!(started_by(child.id()), []);
}
