//! One bench run's context: the settings, the child registry, the scratch
//! directory, the binaries, and how to start each piece of a target.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::backend::{Backend, TestApp};
use crate::config::Cli;
use crate::cutover::{Cutover, CutoverSpec};
use crate::nginx::{Nginx, NginxSpec};
use crate::pin::{self, Pin, Pins};
use crate::processes::Processes;
use crate::uring_probe::{UringProbe, UringProbeSpec};
use crate::wrk::Wrk;
use crate::{net, procfs, tools};

/// The release binaries the bench runs.
pub struct Binaries {
    pub testapp: PathBuf,
    pub client: PathBuf,
    pub cutover: PathBuf,
    /// The io_uring prototype (target `uring-probe`), next to the bench.
    pub uring_probe: PathBuf,
}

impl Binaries {
    fn locate(cli: &Cli) -> Result<Binaries> {
        let dir = match &cli.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("the bench binary has no directory")?
                .to_path_buf(),
        };
        let binaries = Binaries {
            testapp: dir.join("cutover-testapp"),
            client: dir.join("cutover-bench-client"),
            cutover: cli
                .cutover_bin
                .clone()
                .unwrap_or_else(|| dir.join("cutover")),
            uring_probe: dir.join("cutover-uring-probe"),
        };
        for needed in [&binaries.testapp, &binaries.client] {
            if !tools::is_executable(needed) {
                bail!(
                    "{} missing (cargo build --release -p cutover-testapp, or BUILD=1 bench/run)",
                    needed.display()
                );
            }
        }
        Ok(binaries)
    }
}

/// The scratch directory: configs, logs, raw wrk output; removed at the
/// end unless KEEP=1.
struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(keep: bool) -> Result<Scratch> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("cutover-bench.")
            .tempdir()
            .context("creating the scratch directory")?;
        // nginx workers (another user unless root) read their configs here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let path = dir.path().to_path_buf();
        Ok(Scratch {
            dir: Some(dir),
            path,
            keep,
        })
    }

    /// What to do with it when the bench is interrupted.
    fn on_interrupt(&self) -> impl FnOnce() + Send + 'static {
        let (path, keep) = (self.path.clone(), self.keep);
        move || {
            // The swarm mode's services and images are no children: by label.
            crate::swarm::remove_leftovers();
            finish_scratch(&path, keep)
        }
    }
}

fn finish_scratch(path: &Path, keep: bool) {
    if keep {
        eprintln!("bench: kept {}", path.display());
    } else {
        let _ = std::fs::remove_dir_all(path);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let path = dir.keep();
            finish_scratch(&path, self.keep);
        }
    }
}

/// One run of the bench. Field order matters: the children are stopped
/// (registry dropped) before the scratch directory they use goes.
pub struct Bench {
    pub processes: Processes,
    scratch: Scratch,
    pub cli: Cli,
    pub bins: Binaries,
    cpus: u32,
    taskset: bool,
    /// A target (cutover) could not be set up: the exit status is 1.
    failed: Cell<bool>,
    /// Numbers the scratch subdirectories.
    started: Cell<u32>,
}

impl Bench {
    /// Registry, signal handling and scratch directory first (so that
    /// nothing starts unguarded), then tools and binaries.
    pub fn new(cli: Cli) -> Result<Bench> {
        let processes = Processes::new()?;
        let scratch = Scratch::new(cli.keep)?;
        processes.stop_on_signals(scratch.on_interrupt())?;
        tools::ensure_wrk_and_nginx()?;
        let bins = Binaries::locate(&cli)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let taskset = tools::find("taskset", &[]).is_some();
        if !taskset {
            log!("taskset not found: nothing pinned");
        }
        let bench = Bench {
            processes,
            scratch,
            cli,
            bins,
            cpus,
            taskset,
            failed: Cell::new(false),
            started: Cell::new(0),
        };
        bench.warn_if_busy();
        log!("{}, {} cpus", tools::versions(), bench.cpus);
        Ok(bench)
    }

    fn warn_if_busy(&self) {
        if let Some(load) = procfs::load_average().filter(|l| *l > 0.5) {
            log!(
                "WARNING: load average is {load} before the run: something else is using the CPUs (a build?); numbers will be noisy"
            );
        }
    }

    pub fn kept_scratch(&self) -> Option<&Path> {
        self.scratch.keep.then_some(self.scratch.path.as_path())
    }

    pub fn mark_failed(&self) {
        self.failed.set(true);
    }

    pub fn has_failed(&self) -> bool {
        self.failed.get()
    }

    /// A fresh scratch subdirectory path, `<name>-<n>`.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let n = self.started.get() + 1;
        self.started.set(n);
        self.scratch.path.join(format!("{name}-{n}"))
    }

    pub fn pins(&self, workers: u32) -> Pins {
        pin::pins(
            workers,
            self.cpus,
            self.taskset,
            self.cli.server_cpus.as_deref(),
            self.cli.wrk_cpus.as_deref(),
        )
    }

    /// The testapp as the direct target and the nginx backends' backend.
    pub fn start_backend(&self, workers: u32, pin: &Pin) -> Result<Backend> {
        let log = self.fresh_dir(&format!("backend-w{workers}"));
        let backend = TestApp {
            binary: &self.bins.testapp,
            pin,
            port: None,
            version: "direct",
            threads: workers,
            log: &log,
        }
        .start(&self.processes)?;
        net::check_version(backend.port, "version=direct").context("testapp does not answer")?;
        Ok(backend)
    }

    pub fn cutover_available(&self) -> bool {
        tools::is_executable(&self.bins.cutover)
    }

    /// cutover with its default `[proxy] io` (io_uring here).
    pub fn start_cutover(&self, workers: u32, pin: &Pin) -> Result<Cutover> {
        self.start_cutover_with_io(workers, pin, "auto")
    }

    pub fn start_cutover_with_io(&self, workers: u32, pin: &Pin, io: &str) -> Result<Cutover> {
        Cutover::start(
            &self.processes,
            CutoverSpec {
                binary: &self.bins.cutover,
                testapp: &self.bins.testapp,
                pin,
                workers,
                io,
                dir: self.fresh_dir(&format!("cutover-{io}-w{workers}")),
            },
        )
    }

    pub fn uring_probe_available(&self) -> bool {
        tools::is_executable(&self.bins.uring_probe)
    }

    /// The io_uring prototype in front of `backend_port`.
    pub fn start_uring_probe(
        &self,
        workers: u32,
        pin: &Pin,
        backend_port: u16,
    ) -> Result<UringProbe> {
        UringProbeSpec {
            binary: &self.bins.uring_probe,
            pin,
            workers,
            backend_port,
            log: &self.fresh_dir(&format!("uring-probe-w{workers}")),
        }
        .start(&self.processes)
    }

    pub fn start_nginx(&self, spec: NginxSpec<'_>) -> Result<Nginx> {
        Nginx::start(&self.processes, spec)
    }

    /// wrk with this run's durations, `conns` connections, on `pin`.
    pub fn wrk(&self, pin: &Pin, conns: u32, newconn: bool) -> Wrk<'_> {
        Wrk {
            processes: &self.processes,
            pin: pin.clone(),
            conns,
            duration: self.cli.duration.clone(),
            warmup: self.cli.warmup.clone(),
            newconn,
            dir: self.scratch.path.clone(),
        }
    }

    /// Lets sockets settle between targets.
    pub fn pause(&self) {
        std::thread::sleep(Duration::from_secs(1));
    }
}
