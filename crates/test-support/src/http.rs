//! A blocking HTTP/1.1 client that writes exactly the request it is given
//! and reads one framed response, so tests control which connection each
//! request uses and see the framing. Over TCP or a unix socket (the admin
//! API); [`exchange`] sends raw bytes on a fresh connection and reads until
//! the server closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a read may wait before the request fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A response read from a connection; header names as the server sent them.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One client connection, kept alive across requests.
pub struct Connection<S = TcpStream> {
    reader: BufReader<S>,
    host: String,
    user_agent: Option<String>,
}

impl Connection<TcpStream> {
    /// Connects to 127.0.0.1:`port`; requests carry `Host: 127.0.0.1:<port>`
    /// and `User-Agent: cutover-e2e`.
    pub fn open(port: u16) -> std::io::Result<Connection> {
        let connection = Connection::to(SocketAddr::from(([127, 0, 0, 1], port)))?;
        Ok(connection.user_agent(Some("cutover-e2e")))
    }

    /// Connects to `addr`; requests carry `Host: <addr>` and no User-Agent.
    pub fn to(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Connection::over(stream, &addr.to_string()))
    }
}

impl Connection<UnixStream> {
    /// Connects to the unix socket at `path` (cutover's admin API).
    pub fn unix(path: &Path, host: &str) -> std::io::Result<Connection<UnixStream>> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Connection::over(stream, host))
    }
}

impl<S: Read + Write> Connection<S> {
    /// A connection over `stream` whose requests carry `Host: <host>`.
    pub fn over(stream: S, host: &str) -> Connection<S> {
        Connection {
            reader: BufReader::new(stream),
            host: host.to_string(),
            user_agent: None,
        }
    }

    /// Sends this Host header from now on.
    pub fn host(mut self, host: &str) -> Connection<S> {
        self.host = host.to_string();
        self
    }

    /// Sends this User-Agent (or none) from now on.
    pub fn user_agent(mut self, agent: Option<&str>) -> Connection<S> {
        self.user_agent = agent.map(str::to_string);
        self
    }

    pub fn stream(&mut self) -> &mut S {
        self.reader.get_mut()
    }

    /// The buffered reader, for tests that read the raw answer.
    pub fn reader(&mut self) -> &mut BufReader<S> {
        &mut self.reader
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.get_with(path, &[])
    }

    /// GET with extra request headers (`name`, `value`).
    pub fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        self.request("GET", path, headers, b"")
    }

    /// Sends a request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.send(method, path, headers, body)?;
        self.read_response()
    }

    /// Writes a request: Host, User-Agent, `headers` in order, then
    /// Content-Length unless `headers` frame the body themselves (a
    /// `Transfer-Encoding` or `Content-Length`), then `body` as given.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(agent) = &self.user_agent {
            head.push_str(&format!("User-Agent: {agent}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let framed = headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("content-length")
        });
        if !framed && (!body.is_empty() || method == "POST" || method == "PUT") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    }

    /// Reads the status line and headers of the next response.
    pub fn read_head(&mut self) -> std::io::Result<(u16, Vec<(String, String)>)> {
        read_head(&mut self.reader)
    }

    /// Reads the next response, its body framed as the head says.
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        read_response(&mut self.reader)
    }

    /// True if the peer closed the connection (EOF) within the read timeout.
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    Ok(line)
}

/// The status line (HTTP/1.1, as every server under test speaks) and
/// headers of a response.
pub fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let line = read_line(reader)?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((status, headers))
}

/// A whole response: no body for 1xx, 204 and 304; else by Content-Length,
/// chunked, or until the server closes.
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let (status, headers) = read_head(reader)?;
    let mut body = Vec::new();
    if status < 200 || status == 204 || status == 304 {
        // No body.
    } else if let Some(length) = header(&headers, "content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad content-length {length}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = read_chunked(reader)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size = read_line(reader)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| invalid(format!("bad chunk size {size:?}")))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// One GET on a fresh connection to 127.0.0.1:`port`.
pub fn try_get(port: u16, path: &str) -> std::io::Result<Response> {
    Connection::open(port)?.get(path)
}

/// [`try_get`] that must succeed.
pub fn get(port: u16, path: &str) -> Response {
    try_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port} failed: {e}"))
}

/// What one request on its own connection got back, and how long it took.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub took: Duration,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `bytes` as they are on a fresh connection to `addr` and reads the
/// answer until the server closes. Write errors are ignored: a server may
/// answer (413) and close before reading everything.
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    reply_of(&answer, started.elapsed())
}

/// The [`Reply`] in a whole answer read until the server closed.
pub fn reply_of(answer: &[u8], took: Duration) -> Reply {
    let response = read_response(&mut &answer[..]).unwrap_or_else(|e| {
        panic!(
            "no HTTP answer ({e}): {:?}",
            String::from_utf8_lossy(answer)
        )
    });
    Reply {
        status: response.status,
        body: response.text(),
        took,
    }
}

/// One POST on a fresh connection (`Connection: close`, Content-Length added).
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    exchange(addr, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server on a free port that reads one request head per entry of
    /// `answers` on one connection and writes that answer back; closes after
    /// the last. Returns the port and the request heads it received.
    fn serve(answers: &'static [&'static str]) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut heads = Vec::new();
            for answer in answers {
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                heads.push(head);
                reader.get_mut().write_all(answer.as_bytes()).unwrap();
            }
            heads
        });
        (port, server)
    }

    #[test]
    fn keep_alive_connection_reads_length_chunked_and_close_delimited_bodies_in_turn() {
        let (port, server) = serve(&[
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nuntil close",
        ]);
        let mut connection = Connection::open(port).unwrap();
        assert_eq!(connection.get("/a").unwrap().text(), "hello");
        assert_eq!(connection.get("/b").unwrap().text(), "abcde");
        let empty = connection.get("/c").unwrap();
        assert_eq!((empty.status, empty.body.len()), (204, 0));
        let last = connection.get_with("/d", &[("X-Test", "1")]).unwrap();
        assert_eq!(last.status, 503);
        assert_eq!(last.header("connection"), Some("close"));
        assert_eq!(last.text(), "until close");
        let heads = server.join().unwrap();
        assert!(heads[0].starts_with(&format!(
            "GET /a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: cutover-e2e\r\n"
        )));
        assert!(heads[3].contains("X-Test: 1\r\n"), "{}", heads[3]);
    }

    #[test]
    fn a_status_line_that_is_not_http_1_1_is_an_error() {
        let (port, _server) = serve(&["SSH-2.0-OpenSSH\r\n\r\n"]);
        let error = Connection::open(port).unwrap().get("/").unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn post_adds_content_length_and_reads_the_reply_until_close() {
        let (port, server) = serve(&["HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"]);
        let reply = post(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/hook",
            &[("X-Event", "push")],
            b"{}",
        );
        assert_eq!((reply.status, reply.body.as_str()), (202, "ok"));
        let head = &server.join().unwrap()[0];
        assert!(head.contains("Content-Length: 2\r\n"), "{head}");
        assert!(head.contains("X-Event: push\r\n"), "{head}");
    }
}
