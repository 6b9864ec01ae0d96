//! Debian's `pebble` (Let's Encrypt's test ACME server) for one test: its
//! own config with free ports for its ACME and management listeners, the
//! validation ports of the cutover under test (`httpPort`, `tlsPort`), its
//! HTTPS certificate from a test CA, and `-dnsserver` pointed at a DNS
//! answerer on a port-0 UDP socket of the test, which resolves every name
//! to 127.0.0.1 (except names it is told to refuse: NXDOMAIN). Challenges
//! are really validated by pebble against cutover's listeners
//! (`PEBBLE_VA_NOSLEEP` only skips pebble's random delay).

use crate::ports::free_port;
use crate::process::{spawn_logged, stop_child, wait_ready};
use crate::tls::Ca;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the pebble of a test does differently.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Lifetime of the certificates it issues, in seconds (default 5 years).
    pub validity_seconds: Option<u64>,
    /// Names pebble refuses to issue for (a rejected order).
    pub blocklist: Vec<String>,
    /// Names the DNS answerer refuses (NXDOMAIN) from the start, so their
    /// validation fails; set before anyone can ask for them.
    pub unresolvable: Vec<String>,
}

pub struct Pebble {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The ACME directory URL.
    pub directory: String,
    pub management_port: u16,
    /// The root of pebble's own HTTPS (for cutover's `ca_file`).
    pub ca_file: PathBuf,
    ca: Ca,
    dns: Dns,
}

impl Pebble {
    /// Starts pebble validating http-01 on `http_port` and tls-alpn-01 on
    /// `tls_port` of 127.0.0.1.
    pub fn start(http_port: u16, tls_port: u16, options: &PebbleOptions) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let (cert, key) = leaf.write(dir.path(), "pebble");
        let ca_file = dir.path().join("pebble-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let (acme_port, management_port) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": options.validity_seconds.unwrap_or(157_766_400),
            "domainBlocklist": options.blocklist,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let mut pebble = Pebble {
            dir,
            child: None,
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            management_port,
            ca_file,
            ca,
            dns: Dns::start(),
        };
        for name in &options.unresolvable {
            pebble.refuse_name(name);
        }
        pebble.spawn();
        pebble
    }

    /// Starts the server again (after [`Pebble::stop`]); it forgets every
    /// account and order and makes a new root.
    pub fn spawn(&mut self) {
        let mut command = Command::new("pebble");
        command
            .arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .arg("-dnsserver")
            .arg(self.dns.addr.clone())
            .env("PEBBLE_VA_NOSLEEP", "1");
        let mut child = spawn_logged(&mut command, &self.log_path()).expect("pebble starts");
        let port: u16 = self
            .directory
            .split(':')
            .nth(2)
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        wait_ready(
            &mut child,
            "pebble",
            (Duration::from_secs(20), Duration::from_millis(50)),
            || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", self.management_port)).is_ok()
            },
            || self.log(),
        );
        self.child = Some(child);
    }

    /// Stops the server (SIGTERM by PID).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
    }

    /// Makes the DNS answerer refuse `name` (NXDOMAIN), so validation fails.
    pub fn refuse_name(&self, name: &str) {
        self.dns
            .refused
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }

    /// The root pebble issues under now (PEM), from its management API.
    pub fn root_pem(&self) -> String {
        let connector = self.ca.blocking_client_config();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(connector, name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", self.management_port)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        // pebble closes without close_notify at times; what was read counts.
        let _ = tls.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a root in the answer");
        let end = text
            .find("-----END CERTIFICATE-----")
            .expect("a whole root")
            + 25;
        format!("{}\n", &text[start..end])
    }

    /// Whether pebble is on the path (scripts/test installs it).
    pub fn installed() -> bool {
        Command::new("pebble").arg("-h").output().is_ok()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The DNS answerer pebble resolves through: A → 127.0.0.1, anything else
/// (AAAA) → no answer, refused names → NXDOMAIN.
struct Dns {
    addr: String,
    refused: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dns {
    fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let refused = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (refused, stop) = (refused.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 512];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, peer)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    if let Some(answer) = dns_answer(&buffer[..n], &refused.lock().unwrap()) {
                        let _ = socket.send_to(&answer, peer);
                    }
                }
            })
        };
        Dns {
            addr,
            refused,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to one DNS query (RFC 1035 4.1), or None if it is not one.
fn dns_answer(query: &[u8], refused: &HashSet<String>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels, then QTYPE and QCLASS.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let length = usize::from(*query.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + length)?).to_ascii_lowercase());
        at += length;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    let nxdomain = refused.contains(&name);
    let answers: u16 = u16::from(qtype == 1 && !nxdomain);
    let mut answer = Vec::with_capacity(question_end + 16);
    answer.extend_from_slice(&query[..2]); // id
    answer.push(0x84 | (query[2] & 0x01)); // response, authoritative, RD copied
    answer.push(if nxdomain { 0x03 } else { 0x00 });
    answer.extend_from_slice(&[0, 1]); // one question
    answer.extend_from_slice(&answers.to_be_bytes());
    answer.extend_from_slice(&[0, 0, 0, 0]);
    answer.extend_from_slice(question);
    if answers == 1 {
        // A pointer to the question's name, type A, class IN, TTL 0, 127.0.0.1.
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
    }
    Some(answer)
}
