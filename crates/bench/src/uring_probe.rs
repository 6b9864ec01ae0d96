//! The uring-probe target: `cutover-uring-probe` (crates/uring-probe), the
//! io_uring measuring prototype of issue 19, in front of the shared
//! backend like the nginx targets. A prototype, not part of `cutover serve`.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::net;
use crate::pin::Pin;
use crate::processes::{Proc, Processes};

/// The probe running.
pub struct UringProbe {
    pub proc: Proc,
    pub port: u16,
}

/// How to start one probe.
pub struct UringProbeSpec<'a> {
    pub binary: &'a Path,
    pub pin: &'a Pin,
    pub workers: u32,
    pub backend_port: u16,
    /// `<log>.out` and `<log>.err` get its output.
    pub log: &'a Path,
}

impl UringProbeSpec<'_> {
    /// Starts it and waits until it proxies to the backend.
    pub fn start(&self, processes: &Processes) -> Result<UringProbe> {
        let port = net::free_port()?;
        let mut command = self.pin.command(self.binary);
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &format!("127.0.0.1:{}", self.backend_port)])
            .args(["--workers", &self.workers.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(self.log.with_extension("out"))?)
            .stderr(File::create(self.log.with_extension("err"))?);
        let proc = processes.spawn("cutover-uring-probe", command)?.proc;
        let up = net::wait_listening(port, Duration::from_secs(10), || {
            processes.is_running(&proc)
        });
        let checked = if up {
            net::check_version(port, "version=direct").context("the probe does not proxy")
        } else {
            let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
            Err(anyhow::anyhow!("the probe did not listen: {}", err.trim()))
        };
        if let Err(e) = checked {
            processes.stop(&proc);
            bail!("{e:#}");
        }
        Ok(UringProbe { proc, port })
    }
}
