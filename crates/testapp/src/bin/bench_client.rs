//! `cutover-bench-client`: the two load shapes of `bench/run` that wrk does
//! not give.
//!
//! ```text
//! cutover-bench-client load ADDR [--conns N] [--path P] [--host H]
//! cutover-bench-client idle ADDR [--conns N] [--path P]
//! ```
//!
//! - `load`: N keep-alive connections sending GET requests back to back until
//!   standard input closes (or a line arrives), then one summary line:
//!   `requests=… ok=… failed=… reconnects=… elapsed_s=… failures=kind:n,…`.
//!   A request counts as failed when it got no complete 2xx response within
//!   10 s: a refused or reset connection, a connection closed before or
//!   during the response, no answer, or any other status. A failed
//!   connection is reopened.
//! - `idle`: opens N connections, sends one GET on each (so that they are
//!   established through the proxy as keep-alive connections), prints
//!   `ready N` and keeps them open, idle, until standard input closes.
//!
//! Single-threaded (the load generator should not take more than one core).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request without a complete answer by then counts as failed (`timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: cutover-bench-client load|idle ADDR [--conns N] [--path P] [--host H]";

struct Options {
    mode: String,
    addr: SocketAddr,
    conns: usize,
    path: String,
    host: String,
}

fn parse(args: Vec<String>) -> Result<Options, String> {
    let mut it = args.into_iter();
    let mode = it.next().ok_or("missing mode")?;
    if mode != "load" && mode != "idle" {
        return Err(format!("unknown mode {mode:?}"));
    }
    let addr = it
        .next()
        .ok_or("missing ADDR")?
        .parse::<SocketAddr>()
        .map_err(|_| "ADDR must be IP:PORT".to_string())?;
    let mut options = Options {
        mode,
        addr,
        conns: 50,
        path: "/".into(),
        host: addr.to_string(),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--conns" => {
                options.conns = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--conns: a positive number")?
            }
            "--path" if value.starts_with('/') => options.path = value,
            "--host" => options.host = value,
            _ => return Err(format!("bad option {flag} {value}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1).collect()) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("cutover-bench-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cutover-bench-client: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Standard input closing (or any line) ends the run.
    std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            stop.store(true, Ordering::SeqCst);
        }
    });
    match options.mode.as_str() {
        "load" => runtime.block_on(load(options, stop)),
        _ => runtime.block_on(idle(options, stop)),
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect:{:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "handshake".to_string())?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET, its whole body read; the failure kind if it was not a 2xx.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str, host: &str) -> Result<(), String> {
    sender
        .ready()
        .await
        .map_err(|_| "closed-before-request".to_string())?;
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new())
        .map_err(|_| "bad-request".to_string())?;
    let response = sender.send_request(request).await.map_err(|e| {
        if e.is_incomplete_message() {
            "closed-before-response".to_string()
        } else if e.is_canceled() {
            "canceled".to_string()
        } else {
            "response-error".to_string()
        }
    })?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|_| "body-error".to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status-{}", status.as_u16()))
    }
}

async fn load(options: Options, stop: Arc<AtomicBool>) -> ExitCode {
    let local = tokio::task::LocalSet::new();
    let requests = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let started = Instant::now();
    let options = Arc::new(options);
    local
        .run_until(async {
            let mut clients = Vec::new();
            for _ in 0..options.conns {
                let (options, stop) = (options.clone(), stop.clone());
                let (requests, ok, reconnects, failures) = (
                    requests.clone(),
                    ok.clone(),
                    reconnects.clone(),
                    failures.clone(),
                );
                clients.push(tokio::task::spawn_local(async move {
                    let mut sender = None;
                    while !stop.load(Ordering::Relaxed) {
                        let conn = match &mut sender {
                            Some(conn) => conn,
                            None => match connect(options.addr).await {
                                Ok(conn) => sender.insert(conn),
                                Err(kind) => {
                                    record(&failures, kind);
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                        };
                        requests.fetch_add(1, Ordering::Relaxed);
                        let answered = tokio::time::timeout(
                            REQUEST_TIMEOUT,
                            get(conn, &options.path, &options.host),
                        )
                        .await
                        .unwrap_or_else(|_| Err("timeout".to_string()));
                        match answered {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(kind) => {
                                record(&failures, kind);
                                sender = None;
                                reconnects.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // A server closing an idle keep-alive connection between
                        // requests is not a failure: reconnect before the next.
                        if sender.as_ref().is_some_and(|s| s.is_closed()) {
                            sender = None;
                            reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            // Requests still running when asked to stop get a few seconds.
            let all = async {
                for client in clients {
                    let _ = client.await;
                }
            };
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, all).await;
        })
        .await;
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    let failed: u64 = failures
        .iter()
        .filter(|(kind, _)| !kind.starts_with("connect:"))
        .map(|(_, n)| n)
        .sum();
    let kinds: Vec<String> = failures.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    println!(
        "requests={} ok={} failed={} reconnects={} elapsed_s={:.1} failures={}",
        requests.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed),
        failed,
        reconnects.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(",")
        }
    );
    ExitCode::SUCCESS
}

fn record(failures: &Mutex<BTreeMap<String, u64>>, kind: String) {
    if let Ok(mut failures) = failures.lock() {
        *failures.entry(kind).or_default() += 1;
    }
}

async fn idle(options: Options, stop: Arc<AtomicBool>) -> ExitCode {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut held = Vec::with_capacity(options.conns);
            let mut failed = 0usize;
            for _ in 0..options.conns {
                match connect(options.addr).await {
                    Ok(mut sender) => match get(&mut sender, &options.path, &options.host).await {
                        Ok(()) => held.push(sender),
                        Err(_) => failed += 1,
                    },
                    Err(_) => failed += 1,
                }
            }
            println!("ready {} failed {failed}", held.len());
            let _ = std::io::stdout().flush();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let open = held.iter().filter(|s| !s.is_closed()).count();
            println!("still open {open}");
            drop(held);
        })
        .await;
    ExitCode::SUCCESS
}
