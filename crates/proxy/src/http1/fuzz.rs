//! Bounded fuzzing of the codec on stable Rust: a deterministic generator
//! (fastrand, fixed seed) feeds the head parser (requests and responses)
//! and the body decoder with well-formed messages built from a model, and
//! with mutations of them.
//!
//! - Well-formed heads are checked against `reference_*`: the RFC 9112
//!   framing decision restated over the model (not over bytes), so a
//!   disagreement is a bug in one of the two.
//! - Every input, mutated or not, is also parsed fed in two pieces: the
//!   answer must not depend on how the bytes arrived.
//! - Chunked bodies decode to what was encoded, in random pieces; mutated
//!   ones end (data, error or need-more) without a panic, within a bounded
//!   number of steps, and decode alike however they are split.
//!
//! `CUTOVER_FUZZ_CASES` sets the cases per harness (default 100,000, the CI
//! budget); `CUTOVER_FUZZ_SEED` the seed.

use bytes::BytesMut;
pub(super) use cutover_test_support::fuzz::{cases, rng};
use http::StatusCode;

use super::body::{Decoded, Decoder};
use super::head::{self, BodyLength, HeadError, ParsedResponse};

/// Bytes that matter to HTTP/1 framing, favoured by mutations.
const INTERESTING: &[u8] = b"\r\n\0 \t:,;=\x7f\x80\xff0aF-/";

pub(super) fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>) {
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=input.len());
        let byte = if rng.bool() {
            INTERESTING[rng.usize(..INTERESTING.len())]
        } else {
            rng.u8(..)
        };
        match rng.u8(..5) {
            0 if at < input.len() => input[at] = byte,
            1 => input.insert(at, byte),
            2 if at < input.len() => {
                input.remove(at);
            }
            3 if at < input.len() => {
                let end = rng.usize(at..=input.len().min(at + 16));
                let copy = input[at..end].to_vec();
                input.splice(at..at, copy);
            }
            _ => input.truncate(at),
        }
    }
}

/// The outcome of a request parse, comparable across runs.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    NeedMore,
    Refused(StatusCode),
    Head {
        body: BodyLength,
        keep_alive: bool,
        rest: usize,
    },
}

fn parse_request(input: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(input);
    match head::parse_request(&mut buf) {
        Ok(None) => Outcome::NeedMore,
        Err(e) => Outcome::Refused(e.status()),
        Ok(Some(head)) => Outcome::Head {
            body: head.body,
            keep_alive: head.keep_alive,
            rest: buf.len(),
        },
    }
}

/// Parses `input` fed in two pieces split at `at`.
fn parse_request_split(input: &[u8], at: usize) -> Outcome {
    let mut buf = BytesMut::from(&input[..at]);
    match head::parse_request(&mut buf) {
        Ok(None) => {}
        Err(e) => return Outcome::Refused(e.status()),
        Ok(Some(head)) => {
            return Outcome::Head {
                body: head.body,
                keep_alive: head.keep_alive,
                rest: buf.len() + input.len() - at,
            }
        }
    }
    buf.extend_from_slice(&input[at..]);
    match head::parse_request(&mut buf) {
        Ok(None) => Outcome::NeedMore,
        Err(e) => Outcome::Refused(e.status()),
        Ok(Some(head)) => Outcome::Head {
            body: head.body,
            keep_alive: head.keep_alive,
            rest: buf.len(),
        },
    }
}

/// A message head as a model: what the generator chose.
#[derive(Debug, Clone)]
pub(super) struct Model {
    http10: bool,
    hosts: usize,
    /// `Content-Length` field values as written.
    pub(super) lengths: Vec<String>,
    /// `Transfer-Encoding` field values as written.
    pub(super) codings: Vec<String>,
    /// `Connection` tokens.
    connection: Vec<&'static str>,
    extra: usize,
}

fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

pub(super) fn model(rng: &mut fastrand::Rng) -> Model {
    let length_values = [
        "0",
        "5",
        "05",
        "5, 5",
        "5,6",
        "+5",
        "5x",
        "",
        "18446744073709551616",
    ];
    let coding_values = [
        "chunked",
        "Chunked",
        "gzip, chunked",
        "chunked, gzip",
        "chunked, chunked",
        "gzip",
        ", chunked",
        "",
    ];
    let count = |rng: &mut fastrand::Rng| match rng.u8(..10) {
        0..=5 => 0,
        6..=8 => 1,
        _ => 2,
    };
    let lengths = (0..count(rng))
        .map(|_| pick(rng, &length_values).to_owned())
        .collect();
    let codings = (0..count(rng))
        .map(|_| pick(rng, &coding_values).to_owned())
        .collect();
    let connection = (0..count(rng))
        .map(|_| pick(rng, &["close", "keep-alive", "upgrade", "x-other"]))
        .collect();
    Model {
        http10: rng.u8(..4) == 0,
        hosts: count(rng),
        lengths,
        codings,
        connection,
        extra: rng.usize(..4),
    }
}

fn write_fields(model: &Model, out: &mut String) {
    for _ in 0..model.hosts {
        out.push_str("Host: example.com\r\n");
    }
    for value in &model.lengths {
        out.push_str(&format!("Content-Length: {value}\r\n"));
    }
    for value in &model.codings {
        out.push_str(&format!("Transfer-Encoding: {value}\r\n"));
    }
    if !model.connection.is_empty() {
        out.push_str(&format!("Connection: {}\r\n", model.connection.join(", ")));
    }
    for i in 0..model.extra {
        out.push_str(&format!("X-Extra-{i}: value {i}\r\n"));
    }
    out.push_str("\r\n");
}

pub(super) fn request_bytes(model: &Model) -> String {
    let version = if model.http10 { "1.0" } else { "1.1" };
    let mut out = format!("POST /p?q=1 HTTP/{version}\r\n");
    write_fields(model, &mut out);
    out
}

/// `1*DIGIT` values of a Content-Length field list, all equal.
fn reference_length(values: &[String]) -> Result<Option<u64>, ()> {
    let mut length = None;
    for part in values.iter().flat_map(|v| v.split(',')) {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        let n: u64 = part.parse().map_err(|_| ())?;
        if length.is_some_and(|l| l != n) {
            return Err(());
        }
        length = Some(n);
    }
    Ok(length)
}

/// The transfer codings, empty elements skipped.
fn coding_list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect()
}

/// RFC 9112 (3.2, 6.1, 6.3, 9.3) for a request, over the model.
fn reference_request(model: &Model) -> Outcome {
    let bad = Outcome::Refused(StatusCode::BAD_REQUEST);
    if model.hosts > 1 || (model.hosts == 0 && !model.http10) {
        return bad;
    }
    let te = !model.codings.is_empty();
    let body = if te {
        if model.http10 {
            return bad;
        }
        let codings = coding_list(&model.codings);
        let chunked = codings.iter().filter(|c| *c == "chunked").count();
        if codings.last().map(String::as_str) != Some("chunked") || chunked > 1 {
            return bad;
        }
        if chunked != codings.len() {
            return Outcome::Refused(StatusCode::NOT_IMPLEMENTED);
        }
        BodyLength::Chunked
    } else {
        match reference_length(&model.lengths) {
            Err(()) => return bad,
            Ok(None | Some(0)) => BodyLength::Empty,
            Ok(Some(n)) => BodyLength::Exact(n),
        }
    };
    let has = |token: &str| model.connection.contains(&token);
    let persistent = !has("close") && (!model.http10 || has("keep-alive"));
    Outcome::Head {
        body,
        // Both framings: read as chunked, then the connection closes.
        keep_alive: persistent && (!te || model.lengths.is_empty()),
        rest: 0,
    }
}

/// RFC 9112 6.3 for a response, over the model: `Err` is a 502.
fn reference_response(model: &Model, status: u16, to_head: bool) -> Result<(BodyLength, bool), ()> {
    let te = !model.codings.is_empty();
    if te && !model.lengths.is_empty() {
        return Err(());
    }
    let body = if to_head || status == 204 || status == 304 {
        BodyLength::Empty
    } else if te {
        let codings = coding_list(&model.codings);
        if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            return Err(());
        }
        if codings.last().map(String::as_str) == Some("chunked") {
            BodyLength::Chunked
        } else {
            BodyLength::UntilClose
        }
    } else {
        match reference_length(&model.lengths)? {
            Some(0) => BodyLength::Empty,
            Some(n) => BodyLength::Exact(n),
            None => BodyLength::UntilClose,
        }
    };
    let has = |token: &str| model.connection.contains(&token);
    let persistent = !has("close") && (!model.http10 || has("keep-alive"));
    Ok((body, persistent && body != BodyLength::UntilClose))
}

#[test]
fn request_heads_agree_with_the_reference_and_never_panic() {
    let mut rng = rng(1);
    let (mut disagreements, mut mutated_heads) = (Vec::new(), 0usize);
    for case in 0..cases() {
        let model = model(&mut rng);
        let text = request_bytes(&model);
        let got = parse_request(text.as_bytes());
        let expected = reference_request(&model);
        if got != expected && disagreements.len() < 10 {
            disagreements.push(format!("{text:?}: got {got:?}, reference {expected:?}"));
        }
        let mut bytes = text.into_bytes();
        if case % 2 == 0 {
            mutate(&mut rng, &mut bytes);
        }
        let whole = parse_request(&bytes);
        mutated_heads += usize::from(matches!(whole, Outcome::Head { .. }));
        let at = rng.usize(..=bytes.len());
        let split = parse_request_split(&bytes, at);
        if whole != split && disagreements.len() < 10 {
            disagreements.push(format!(
                "{:?} split at {at}: {whole:?} vs {split:?}",
                String::from_utf8_lossy(&bytes)
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    assert!(mutated_heads > 0);
}

#[test]
fn response_heads_agree_with_the_reference_and_never_panic() {
    let mut rng = rng(2);
    let mut disagreements = Vec::new();
    for case in 0..cases() {
        let model = model(&mut rng);
        let status = [200u16, 204, 304, 404, 500][rng.usize(..5)];
        let to_head = rng.u8(..5) == 0;
        let version = if model.http10 { "1.0" } else { "1.1" };
        let mut text = format!("HTTP/{version} {status} Whatever\r\n");
        write_fields(&model, &mut text);
        let mut buf = BytesMut::from(text.as_bytes());
        let got = match head::parse_response(&mut buf, to_head) {
            Ok(Some(ParsedResponse::Final(head))) => Ok((head.body, head.reusable)),
            Err(HeadError::BadFraming(_)) => Err(()),
            other => panic!("{text:?}: {other:?}"),
        };
        let expected = reference_response(&model, status, to_head);
        if got != expected && disagreements.len() < 10 {
            disagreements.push(format!(
                "{text:?} (HEAD: {to_head}): got {got:?}, reference {expected:?}"
            ));
        }
        let mut bytes = text.into_bytes();
        if case % 2 == 0 {
            mutate(&mut rng, &mut bytes);
        }
        // Mutated: any answer but a panic; an accepted head consumed bytes.
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(_)) = head::parse_response(&mut buf, to_head) {
            assert!(buf.len() < bytes.len());
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// Decodes `input` fed in pieces of `piece` bytes: the data, whether it
/// ended cleanly, and the bytes left after the body. Bounded: each step
/// consumes input or asks for more.
fn decode(length: BodyLength, input: &[u8], piece: usize) -> (Vec<u8>, Result<usize, String>) {
    let mut decoder = Decoder::new(length);
    let mut buf = BytesMut::new();
    let (mut data, mut fed, mut steps) = (Vec::new(), 0, 0usize);
    loop {
        steps += 1;
        assert!(steps <= 4 * input.len() + 16, "the decoder loops");
        match decoder.decode(&mut buf) {
            Err(e) => return (data, Err(e.to_string())),
            Ok(Decoded::Data(d)) => {
                assert!(!d.is_empty(), "empty data frame");
                data.extend_from_slice(&d);
            }
            Ok(Decoded::Trailers(_) | Decoded::End) => {
                return (data, Ok(buf.len() + input.len() - fed))
            }
            Ok(Decoded::NeedMore) if fed == input.len() => {
                return (data, decoder.at_eof().map(|_| 0).map_err(|e| e.to_string()));
            }
            Ok(Decoded::NeedMore) => {
                let end = (fed + piece).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

/// A chunked body from random chunks, extensions and trailers.
pub(super) fn chunked_body(rng: &mut fastrand::Rng) -> (Vec<u8>, Vec<u8>) {
    let (mut encoded, mut data) = (Vec::new(), Vec::new());
    for _ in 0..rng.usize(..5) {
        let chunk: Vec<u8> = (0..rng.usize(1..40)).map(|_| rng.u8(..)).collect();
        let size = format!("{:x}", chunk.len());
        let size = if rng.bool() {
            size.to_uppercase()
        } else {
            size
        };
        encoded.extend_from_slice(size.as_bytes());
        if rng.u8(..4) == 0 {
            encoded.extend_from_slice(b" ;name=\"v a\";x");
        }
        encoded.extend_from_slice(b"\r\n");
        encoded.extend_from_slice(&chunk);
        encoded.extend_from_slice(b"\r\n");
        data.extend_from_slice(&chunk);
    }
    encoded.extend_from_slice(b"0\r\n");
    for i in 0..rng.usize(..3) {
        encoded.extend_from_slice(format!("x-t{i}: {i}\r\n").as_bytes());
    }
    encoded.extend_from_slice(b"\r\n");
    (encoded, data)
}

#[test]
fn bodies_decode_to_what_was_encoded_and_mutations_end_alike_however_split() {
    let mut rng = rng(3);
    let mut disagreements = Vec::new();
    for case in 0..cases() {
        let (mut input, data) = chunked_body(&mut rng);
        input.extend_from_slice(b"NEXT");
        let piece = rng.usize(1..=input.len());
        let (got, ended) = decode(BodyLength::Chunked, &input, piece);
        if (got.as_slice(), &ended) != (data.as_slice(), &Ok(4)) && disagreements.len() < 10 {
            disagreements.push(format!(
                "{:?} in pieces of {piece}: {ended:?}",
                String::from_utf8_lossy(&input)
            ));
        }
        if case % 2 == 0 {
            mutate(&mut rng, &mut input);
        }
        let length = match rng.u8(..4) {
            0 => BodyLength::Exact(rng.u64(1..64)),
            _ => BodyLength::Chunked,
        };
        let whole = decode(length, &input, input.len().max(1));
        let split = decode(length, &input, rng.usize(1..=input.len().max(1)));
        assert!(whole.0.len() <= input.len());
        // Errors may differ in wording; the data and the outcome agree.
        let kind = |r: &Result<usize, String>| r.as_ref().map_err(|_| ()).copied();
        let differ = whole.0 != split.0 || kind(&whole.1) != kind(&split.1);
        if differ && disagreements.len() < 10 {
            disagreements.push(format!(
                "{:?} ({length:?}): {whole:?} vs {split:?}",
                String::from_utf8_lossy(&input)
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
