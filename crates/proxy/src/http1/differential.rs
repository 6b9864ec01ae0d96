//! Differential check of the request side against an independent HTTP/1
//! implementation, hyper's server: the same bytes (a generated request, its
//! body, possibly mutated, then a second request) go to both, and each
//! side's transcript — the requests it delivered with their bodies, and
//! how the connection ended — is compared.
//!
//! - Both deliver a request but differ in its method, target or body, or
//!   in whether a next request follows: the two disagree on where a
//!   message ends, which is how requests are smuggled. Always a failure.
//! - hyper refuses what cutover delivers: cutover is more lenient than an
//!   established server. A failure unless a reviewed rule in
//!   [`CUTOVER_ACCEPTS_WHAT_HYPER_REFUSES`] explains it.
//! - cutover refuses what hyper delivers: cutover is stricter (RFC 9112's
//!   MUSTs that hyper leaves out). Reported by kind with a count and an
//!   example, never a failure; [`REGRESSIONS`] keeps one case per kind
//!   found, with the answer cutover must keep giving.
//!
//! `CUTOVER_FUZZ_CASES` / `CUTOVER_FUZZ_SEED` as for `fuzz`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body::{Decoded, Decoder};
use super::fuzz::{cases, chunked_body, model, mutate, request_bytes, rng, Model};
use super::head;

/// A request as delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivered {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// How a connection's input ended after the delivered requests.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Every byte was consumed by delivered requests, or the connection
    /// was not persistent after the last one.
    Clean,
    /// The next message was refused; cutover's reason, or hyper's status.
    Refused(String),
    /// The input stopped inside a message.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Transcript {
    delivered: Vec<Delivered>,
    end: End,
}

/// Requests after which a transcript stops: two are enough to see a desync.
const MAX_REQUESTS: usize = 3;

/// cutover's codec over `input`, all of it available at once.
fn cutover(input: &[u8]) -> Transcript {
    let mut buf = BytesMut::from(input);
    let mut delivered = Vec::new();
    let end = loop {
        if delivered.len() == MAX_REQUESTS {
            break End::Clean;
        }
        let head = match head::parse_request(&mut buf) {
            Ok(None) if buf.is_empty() => break End::Clean,
            Ok(None) => break End::Incomplete,
            Err(e) => break End::Refused(e.to_string()),
            Ok(Some(head)) => head,
        };
        let body = match read_body(Decoder::new(head.body), &mut buf) {
            Ok(Some(body)) => body,
            Ok(None) => break End::Incomplete,
            Err(reason) => break End::Refused(reason),
        };
        let (parts, ()) = head.request.into_parts();
        delivered.push(Delivered {
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            body,
        });
        if !head.keep_alive {
            break End::Clean;
        }
    };
    Transcript { delivered, end }
}

/// A whole body from `buf`; `None` if the input ends inside it.
fn read_body(mut decoder: Decoder, buf: &mut BytesMut) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        match decoder.decode(buf).map_err(|e| format!("bad body: {e}"))? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Trailers(_) | Decoded::End => return Ok(Some(body)),
            Decoded::NeedMore => return Ok(None),
        }
    }
}

/// hyper's HTTP/1 server over `input`: the client half writes everything
/// and shuts down its write side; the service records each request with
/// its whole body and answers 200.
async fn hyper(input: &[u8]) -> Transcript {
    let (client, server) = tokio::io::duplex(input.len() + 4096);
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes().to_vec());
            let _ = sender.send((parts.method.to_string(), parts.uri.to_string(), body));
            Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let input = input.to_vec();
    let exchange = async move {
        client_write.write_all(&input).await.ok();
        client_write.shutdown().await.ok();
        let mut answers = Vec::new();
        client_read.read_to_end(&mut answers).await.ok();
        answers
    };
    let (_, answers) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(connection, exchange)
    })
    .await
    .expect("hyper or the exchange hangs");
    let mut delivered = Vec::new();
    let mut body_failed = false;
    while let Ok((method, target, body)) = received.try_recv() {
        match body {
            // hyper answers a request whose body broke off too; that
            // answer is not a refusal of the next message.
            Err(_) => body_failed = true,
            Ok(_) if body_failed => {}
            Ok(body) => delivered.push(Delivered {
                method,
                target,
                body,
            }),
        }
    }
    let end = if body_failed {
        End::Incomplete
    } else {
        hyper_end(&answers, delivered.len())
    };
    delivered.truncate(MAX_REQUESTS);
    Transcript { delivered, end }
}

/// How hyper's connection ended, from what it wrote back: a status after
/// the delivered requests' answers is its refusal of the next message.
fn hyper_end(answers: &[u8], delivered: usize) -> End {
    let text = String::from_utf8_lossy(answers);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12))
        .collect();
    match statuses.get(delivered) {
        Some(status) => End::Refused(format!("hyper answered {status}")),
        None => End::Clean,
    }
}

/// A body for `model`'s framing, sometimes shorter or longer than it says.
fn body_for(rng: &mut fastrand::Rng, model: &Model) -> Vec<u8> {
    if !model.codings.is_empty() {
        return chunked_body(rng).0;
    }
    let declared = model
        .lengths
        .first()
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(64);
    let len = match rng.u8(..8) {
        0 => declared.saturating_sub(1),
        1 => declared + 3,
        _ => declared,
    };
    vec![b'b'; len]
}

const SECOND_REQUEST: &[u8] = b"GET /second HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// One generated input: a request, its body, a second request.
fn generated_input(rng: &mut fastrand::Rng, mutated: bool) -> Vec<u8> {
    let model = model(rng);
    let mut bytes = request_bytes(&model).into_bytes();
    bytes.extend_from_slice(&body_for(rng, &model));
    bytes.extend_from_slice(SECOND_REQUEST);
    if mutated {
        mutate(rng, &mut bytes);
    }
    bytes
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Both delivered, but not the same messages: never acceptable.
    Desync,
    /// hyper refused what cutover delivered.
    CutoverMoreLenient(String),
    /// cutover refused what hyper delivered.
    CutoverStricter(String),
    /// Both refused the same message, for different reasons.
    BothRefused,
    /// hyper refused a message the input stops inside of; cutover waits
    /// for the rest before it judges the head (and refuses it then).
    HyperRefusesSooner,
}

/// Where the two transcripts part, if they do.
fn compare(ours: &Transcript, theirs: &Transcript) -> Option<Kind> {
    if ours == theirs {
        return None;
    }
    let common = ours.delivered.len().min(theirs.delivered.len());
    if ours.delivered[..common] != theirs.delivered[..common] {
        return Some(Kind::Desync);
    }
    match (&ours.end, &theirs.end) {
        _ if ours.delivered.len() > theirs.delivered.len() => match &theirs.end {
            End::Refused(why) => Some(Kind::CutoverMoreLenient(why.clone())),
            _ => Some(Kind::Desync),
        },
        (End::Refused(why), _) if ours.delivered.len() < theirs.delivered.len() => {
            Some(Kind::CutoverStricter(why.clone()))
        }
        (End::Refused(_), End::Refused(_)) => Some(Kind::BothRefused),
        (End::Refused(why), _) => Some(Kind::CutoverStricter(why.clone())),
        (End::Incomplete, End::Refused(_)) => Some(Kind::HyperRefusesSooner),
        (_, End::Refused(why)) => Some(Kind::CutoverMoreLenient(why.clone())),
        _ if ours.delivered.len() < theirs.delivered.len() => Some(Kind::Desync),
        // Clean against incomplete after the same requests: bytes left
        // over that one reads as the start of a message and the other as
        // nothing; no request is delivered differently.
        _ => None,
    }
}

/// Whether a reviewed rule applies to an input.
type Applies = fn(&str) -> bool;

/// Inputs where cutover delivers a request hyper refuses, and why that is
/// right (each found by this harness and reviewed): a predicate over the
/// input's bytes and the reason.
const CUTOVER_ACCEPTS_WHAT_HYPER_REFUSES: &[(Applies, &str)] = &[
    (
        |input| has_field(input, "content-length") && has_field(input, "transfer-encoding"),
        "Content-Length with Transfer-Encoding: RFC 9112 6.3 lets a server read such a \
         request by Transfer-Encoding alone and close the connection after it, which cutover \
         does; hyper refuses it when the Content-Length value is malformed",
    ),
    (
        |input| field_values(input, "content-length").any(|v| v.contains(',')),
        "Content-Length as a list of identical values (`5, 5`): RFC 9110 8.6 lets a recipient \
         read it as the one value; cutover does, and sends the request upstream with a single \
         Content-Length of its own, so nothing downstream sees the list",
    ),
    (
        |input| {
            field_values(input, "transfer-encoding")
                .any(|v| v.split(',').any(|element| element.trim().is_empty()))
        },
        "empty elements in Transfer-Encoding (`chunked` then an empty field, `, chunked`): \
         RFC 9110 5.6.1 says a recipient MUST ignore them, so chunked stays the final coding; \
         cutover sends its own `transfer-encoding: chunked` upstream",
    ),
];

/// The values of the first message head's fields called `name` (lines end
/// in CRLF or a bare LF, as the codec reads them).
fn field_values<'a>(input: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    input
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(move |line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then_some(value)
        })
}

fn has_field(input: &str, name: &str) -> bool {
    field_values(input, name).next().is_some()
}

/// Whether a reviewed rule explains cutover delivering `input`.
fn known_leniency(input: &str) -> bool {
    CUTOVER_ACCEPTS_WHAT_HYPER_REFUSES
        .iter()
        .any(|(applies, _)| applies(input))
}

/// A disagreement of one kind: how often, and the first input.
struct Found {
    count: usize,
    input: String,
    example: String,
}

fn run(cases: usize) -> BTreeMap<Kind, Found> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a test runtime");
    let mut rng = rng(4);
    let mut found: BTreeMap<Kind, Found> = BTreeMap::new();
    for case in 0..cases {
        let input = generated_input(&mut rng, case % 2 == 1);
        let ours = cutover(&input);
        let theirs = runtime.block_on(hyper(&input));
        let Some(kind) = compare(&ours, &theirs) else {
            continue;
        };
        let input = String::from_utf8_lossy(&input).into_owned();
        // One entry per reviewed leniency, not one per hyper status.
        let kind = match kind {
            Kind::CutoverMoreLenient(_) if known_leniency(&input) => {
                Kind::CutoverMoreLenient("a reviewed leniency".to_string())
            }
            kind => kind,
        };
        let example = format!("{input:?}\n    cutover: {ours:?}\n    hyper:   {theirs:?}");
        found
            .entry(kind)
            .or_insert(Found {
                count: 0,
                input,
                example,
            })
            .count += 1;
    }
    found
}

#[test]
fn cutover_and_hyper_never_disagree_on_where_a_request_ends() {
    // hyper runs per input on a runtime: a tenth of the codec's budget.
    let cases = cases() / 10;
    let found = run(cases);
    let mut report = format!("{cases} inputs; disagreements by kind:\n");
    let mut failures = Vec::new();
    for (kind, found) in &found {
        report.push_str(&format!(
            "- {kind:?}: {}, e.g. {}\n",
            found.count, found.example
        ));
        let allowed = match kind {
            Kind::Desync => false,
            Kind::CutoverMoreLenient(_) => known_leniency(&found.input),
            Kind::CutoverStricter(_) | Kind::BothRefused | Kind::HyperRefusesSooner => true,
        };
        if !allowed {
            failures.push(format!("{kind:?}: {}", found.example));
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{report}\nfailing: {failures:#?}");
}

/// One input per kind of disagreement the full run found (1,000,000
/// inputs), with cutover's answer: requests delivered, then how it ended.
const REGRESSIONS: &[(&str, usize, &str)] = &[
    // A bug this harness found: close wins over keep-alive (hyper agrees).
    (
        "POST /p HTTP/1.0\r\nHost: a\r\nConnection: close, keep-alive\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
        1,
        "clean",
    ),
    // Reviewed leniencies (hyper: 400).
    (
        "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
        1,
        "clean",
    ),
    (
        "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nbbbbbGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
        2,
        "clean",
    ),
    (
        "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n1\r\nb\r\n0\r\n\r\n",
        1,
        "clean",
    ),
    // Stricter than hyper, as RFC 9112 requires (hyper: delivered).
    ("POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0, "without Host"),
    ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 0, "more than one Host"),
    ("GET / HTTP/1.1\r\nHost: a:b:c\r\n\r\n", 0, "invalid Host"),
    (
        "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        0,
        "more than once",
    ),
    (
        "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        0,
        "other than chunked",
    ),
    ("GET 0second HTTP/1.1\r\nHost: a\r\n\r\n", 0, "only for CONNECT"),
    (
        "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nbX0\r\n\r\n",
        0,
        "missing CRLF after chunk data",
    ),
    (
        "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx -t: 0\r\n\r\n",
        0,
        "invalid trailer name",
    ),
    // hyper refuses as soon as the version is wrong; cutover waits for the line.
    ("POST /p?q=1 HTTP/0.1", 0, "incomplete"),
];

#[test]
fn disagreements_found_by_the_differential_run_keep_their_answers() {
    for (input, delivered, end) in REGRESSIONS {
        let got = cutover(input.as_bytes());
        let ended = match &got.end {
            End::Clean => *end == "clean",
            End::Incomplete => *end == "incomplete",
            End::Refused(why) => why.contains(end),
        };
        assert!(
            got.delivered.len() == *delivered && ended,
            "{input:?}: expected {delivered} delivered then {end:?}, got {got:?}"
        );
    }
}
