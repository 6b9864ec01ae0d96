//! `cutover-uring-probe --listen ADDR --upstream ADDR --workers N`: the
//! io_uring measuring prototype (see the library docs). Linux only.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    use cutover_uring_probe::{start, Options, RecvMode, TaskRun};

    /// A measuring prototype of cutover's HTTP/1.1 keep-alive path on
    /// io_uring. Not a server to deploy.
    #[derive(Parser)]
    #[command(version)]
    struct Args {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        upstream: std::net::SocketAddr,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, value_enum, default_value_t = RecvMode::Multishot)]
        recv: RecvMode,
        #[arg(long, value_enum, default_value_t = TaskRun::Defer)]
        taskrun: TaskRun,
    }

    let args = Args::parse();
    let options = Options {
        listen: args.listen,
        upstream: args.upstream,
        workers: args.workers,
        recv: args.recv,
        taskrun: args.taskrun,
    };
    let running = match start(&options) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("cutover-uring-probe: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "cutover-uring-probe listening on {} ({} workers, {:?} recv, {:?} task run)",
        running.addr, options.workers, options.recv, options.taskrun
    );
    if let Err(e) = running.wait() {
        eprintln!("cutover-uring-probe: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("cutover-uring-probe: io_uring is Linux only");
    std::process::ExitCode::FAILURE
}
