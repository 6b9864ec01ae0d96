//! Bounded keep-alive load: N clients, each on one connection (reopened
//! only if the server closes it cleanly between requests), recording every
//! answer so tests can assert 0 failures and the order of versions seen.

use crate::http::Connection;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    clients: Vec<JoinHandle<ClientReport>>,
}

/// How each load client behaves.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// An extra header sent with every request.
    pub header: Option<(String, String)>,
    /// Keep and send back cookies the server sets (like a browser).
    pub keep_cookies: bool,
    /// Pause between requests (default 2 ms).
    pub pause: Option<Duration>,
    /// Open a new connection for every request (and close it after).
    pub fresh_connections: bool,
}

#[derive(Debug, Default)]
pub struct ClientReport {
    /// Version answered by each successful request, in order.
    pub versions: Vec<String>,
    /// Failed requests: transport errors and non-200 answers.
    pub failures: Vec<String>,
}

#[derive(Debug)]
pub struct LoadReport {
    pub clients: Vec<ClientReport>,
}

impl LoadReport {
    pub fn requests(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.versions.len() + c.failures.len())
            .sum()
    }

    pub fn failures(&self) -> Vec<&str> {
        self.clients
            .iter()
            .flat_map(|c| c.failures.iter().map(String::as_str))
            .collect()
    }

    /// Asserts that every client saw `order` in sequence and never went back.
    pub fn assert_versions_in_order(&self, order: &[&str]) {
        for (index, client) in self.clients.iter().enumerate() {
            let mut position = 0;
            for version in &client.versions {
                let found = order
                    .iter()
                    .position(|v| v == version)
                    .unwrap_or_else(|| panic!("client {index} saw unexpected version {version}"));
                assert!(
                    found >= position,
                    "client {index} went back from {} to {version}",
                    order[position]
                );
                position = found;
            }
        }
    }
}

impl Load {
    /// Starts `clients` keep-alive clients sending `GET /` until stopped,
    /// each bounded to `max_requests` and `max_time`.
    pub fn start(port: u16, clients: usize, max_requests: usize, max_time: Duration) -> Load {
        Load::start_with(
            port,
            clients,
            max_requests,
            max_time,
            ClientOptions::default(),
        )
    }

    pub fn start_with(
        port: u16,
        clients: usize,
        max_requests: usize,
        max_time: Duration,
        options: ClientOptions,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let bounds = Bounds {
            max_requests,
            max_time,
        };
        let clients = (0..clients)
            .map(|_| {
                let (stop, answered) = (stop.clone(), answered.clone());
                let options = options.clone();
                std::thread::spawn(move || run_client(port, &stop, &answered, bounds, &options))
            })
            .collect();
        Load {
            stop,
            answered,
            clients,
        }
    }

    /// Requests answered with 200 so far, across all clients.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Waits for every client to reach its request bound, then reports.
    pub fn stop_when_done(self) -> LoadReport {
        LoadReport {
            clients: self
                .clients
                .into_iter()
                .map(|c| c.join().expect("load client panicked"))
                .collect(),
        }
    }

    /// Tells every client to stop after its current request, then reports.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.stop_when_done()
    }
}

/// When a client stops by itself.
#[derive(Clone, Copy)]
struct Bounds {
    max_requests: usize,
    max_time: Duration,
}

fn run_client(
    port: u16,
    stop: &AtomicBool,
    answered: &AtomicUsize,
    Bounds {
        max_requests,
        max_time,
    }: Bounds,
    options: &ClientOptions,
) -> ClientReport {
    let mut report = ClientReport::default();
    let mut cookie: Option<String> = None;
    let started = Instant::now();
    let mut connection = None;
    while !stop.load(Ordering::SeqCst)
        && report.versions.len() + report.failures.len() < max_requests
        && started.elapsed() < max_time
    {
        if connection.is_none() {
            match Connection::open(port) {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    report.failures.push(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some((name, value)) = &options.header {
            headers.push((name, value));
        }
        if let Some(cookie) = &cookie {
            headers.push(("Cookie", cookie));
        }
        match conn.get_with("/", &headers) {
            Ok(response) if response.status == 200 => {
                if options.keep_cookies {
                    if let Some(set) = response.header("set-cookie") {
                        cookie = set.split(';').next().map(str::to_string);
                    }
                }
                let body = response.text();
                let version = body.trim();
                let version = version.strip_prefix("version=").unwrap_or(version);
                report.versions.push(version.to_string());
                answered.fetch_add(1, Ordering::SeqCst);
                if options.fresh_connections
                    || response
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    connection = None;
                }
            }
            Ok(response) => {
                report.failures.push(format!(
                    "status {}: {}",
                    response.status,
                    response.text().trim()
                ));
                connection = None;
            }
            Err(e) => {
                report.failures.push(format!("request: {e}"));
                connection = None;
            }
        }
        // A short pause keeps 8 clients from saturating 2 cores, so the
        // deployment itself is not starved; it still gives hundreds of
        // requests per second across the switch.
        std::thread::sleep(options.pause.unwrap_or(Duration::from_millis(2)));
    }
    report
}
