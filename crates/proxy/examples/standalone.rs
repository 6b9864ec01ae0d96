//! The proxy alone in front of one backend, for benchmarks and manual tests
//! before the full daemon is involved:
//!
//! ```sh
//! cargo run --release -p cutover-proxy --example standalone -- 127.0.0.1:8080 127.0.0.1:8081
//! ```
//!
//! Routes every Host to one app `app`, live on the upstream address. Worker
//! threads: `TOKIO_WORKER_THREADS` (tokio's default: one per core).
//! Ctrl-C (or `STANDALONE_SECS` seconds) shuts down gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;

use cutover_proxy::{ProxySettings, Router, Upstream};

fn main() -> ExitCode {
    // STANDALONE_CURRENT_THREAD=1: a single-threaded runtime (for profiling).
    let runtime = if std::env::var_os("STANDALONE_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("standalone: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: standalone LISTEN_ADDR UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    let (listen, upstream): (SocketAddr, SocketAddr) = match (listen.parse(), upstream.parse()) {
        (Ok(l), Ok(u)) => (l, u),
        _ => {
            eprintln!("standalone: addresses must be IP:PORT");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("standalone: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    let router = Router::new(vec![("app".into(), vec!["*".into()])]);
    router.set_live("app", Some(Upstream::new("app", "blue", "bench", upstream)));
    // STANDALONE_SECS=N: shut down by itself after N seconds (for scripts).
    let limit = std::env::var("STANDALONE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let shutdown = async move {
        match limit {
            Some(secs) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(secs)) => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    match cutover_proxy::serve(listener, router, ProxySettings::default(), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("standalone: {e}");
            ExitCode::from(1)
        }
    }
}
