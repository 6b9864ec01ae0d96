//! The one body decoder: exact length, chunked (with trailers), or until
//! the connection closes. Bytes in, data/trailers/end out; the caller owns
//! the buffer and reads more into it when told `NeedMore`.

use std::io;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Frame, SizeHint};

use super::head::BodyLength;

/// Largest chunk-size line.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    Exact(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section after the last chunk.
    Trailers,
}

/// What the buffered bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The trailer section (not empty); the body has ended.
    Trailers(HeaderMap),
    End,
    NeedMore,
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Decoder {
    pub(crate) fn new(length: BodyLength) -> Decoder {
        match length {
            BodyLength::Empty | BodyLength::Exact(0) => Decoder::Done,
            BodyLength::Exact(n) => Decoder::Exact(n),
            BodyLength::Chunked => Decoder::Chunked(Chunked::Size),
            BodyLength::UntilClose => Decoder::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Exact(n) => SizeHint::with_exact(*n),
            Decoder::Chunked(_) | Decoder::UntilClose => SizeHint::default(),
        }
    }

    /// Decodes what `buf` holds (consuming it). A data part that ends an
    /// exact-length body leaves the decoder `Done` at once.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                _ if buf.is_empty() => return Ok(Decoded::NeedMore),
                Decoder::Exact(remaining) => {
                    let data = take_up_to(buf, remaining);
                    let left = remaining - data.len() as u64;
                    *self = if left == 0 {
                        Decoder::Done
                    } else {
                        Decoder::Exact(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                Decoder::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                Decoder::Chunked(state) => match step_chunked(state, buf)? {
                    Step::Data(data, next) => {
                        *self = Decoder::Chunked(next);
                        return Ok(Decoded::Data(data));
                    }
                    Step::Next(next) => *self = Decoder::Chunked(next),
                    Step::Trailers(trailers) => {
                        *self = Decoder::Done;
                        return Ok(if trailers.is_empty() {
                            Decoded::End
                        } else {
                            Decoded::Trailers(trailers)
                        });
                    }
                    Step::NeedMore => return Ok(Decoded::NeedMore),
                },
            }
        }
    }

    /// The connection closed: the end of an until-close body, else an error.
    pub(crate) fn at_eof(&mut self) -> io::Result<Decoded> {
        match self {
            Decoder::UntilClose | Decoder::Done => {
                *self = Decoder::Done;
                Ok(Decoded::End)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before the end of the body",
            )),
        }
    }

    /// Polls the next body frame, reading more with `fill` (`Ok(0)`: EOF)
    /// whenever the buffer runs dry. Both sides' body types poll through
    /// here.
    pub(crate) fn poll_frame(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
        mut fill: impl FnMut(&mut BytesMut, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let decoded = match self.decode(buf) {
                Ok(Decoded::NeedMore) => match ready!(fill(buf, cx)) {
                    Ok(0) => self.at_eof(),
                    Ok(_) => continue,
                    Err(e) => Err(e),
                },
                decoded => decoded,
            };
            return Poll::Ready(match decoded {
                Ok(Decoded::Data(data)) => Some(Ok(Frame::data(data))),
                Ok(Decoded::Trailers(trailers)) => Some(Ok(Frame::trailers(trailers))),
                Ok(Decoded::End | Decoded::NeedMore) => None,
                Err(e) => {
                    *self = Decoder::Done;
                    Some(Err(e))
                }
            });
        }
    }
}

/// Up to `remaining` bytes from the front of `buf`.
fn take_up_to(buf: &mut BytesMut, remaining: u64) -> Bytes {
    let n = buf
        .len()
        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
    buf.split_to(n).freeze()
}

enum Step {
    Data(Bytes, Chunked),
    Next(Chunked),
    Trailers(HeaderMap),
    NeedMore,
}

/// One step of the chunked decoder over the buffered bytes.
fn step_chunked(state: Chunked, buf: &mut BytesMut) -> io::Result<Step> {
    match state {
        Chunked::Size => chunk_size(buf),
        Chunked::Data(remaining) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let data = take_up_to(buf, remaining);
            let left = remaining - data.len() as u64;
            let next = if left == 0 {
                Chunked::DataEnd
            } else {
                Chunked::Data(left)
            };
            Ok(Step::Data(data, next))
        }
        Chunked::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("missing CRLF after chunk data"));
            }
            buf.advance(2);
            Ok(Step::Next(Chunked::Size))
        }
        Chunked::Trailers => trailers(buf),
    }
}

/// `1a;name=value\r\n` (RFC 9112 7.1): hex digits from the line's first
/// byte, optional whitespace (BWS) before extensions, extensions ignored
/// but free of control characters, the line ended by CRLF (a bare LF or CR
/// is an error, as in every other chunked line).
fn chunk_size(buf: &mut BytesMut) -> io::Result<Step> {
    // The limit holds however the bytes arrived: a long line found whole
    // is refused like one still arriving.
    let Some(end) = find_crlf(&buf[..buf.len().min(MAX_CHUNK_LINE + 2)]) else {
        // Room for the longest line and its CRLF, and still none.
        if buf.len() >= MAX_CHUNK_LINE + 2 {
            return Err(invalid("chunk size line too long"));
        }
        return Ok(Step::NeedMore);
    };
    let line = &buf[..end];
    let split = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let (digits, extensions) = line.split_at(split);
    if extensions.iter().any(|&b| is_forbidden(b)) {
        return Err(invalid("invalid chunk extension"));
    }
    let digits = trim_bws_end(digits);
    if digits.is_empty() {
        return Err(invalid("invalid chunk size"));
    }
    let mut size: u64 = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(invalid("invalid chunk size")),
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(v)))
            .ok_or_else(|| invalid("chunk size overflows"))?;
    }
    buf.advance(end + 2);
    Ok(Step::Next(if size == 0 {
        Chunked::Trailers
    } else {
        Chunked::Data(size)
    }))
}

/// A control character other than HTAB (CR, LF and NUL included): never
/// part of a chunk line or a field.
fn is_forbidden(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Without trailing spaces and tabs (BWS before a chunk extension).
fn trim_bws_end(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The trailer section after the last chunk, ended by an empty line.
fn trailers(buf: &mut BytesMut) -> io::Result<Step> {
    let end = if buf.starts_with(b"\r\n") {
        Some(0)
    } else {
        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2)
    };
    let Some(end) = end.filter(|end| *end <= MAX_TRAILERS) else {
        // Room for the largest section and its last CRLF, and still none.
        if buf.len() >= MAX_TRAILERS + 2 {
            return Err(invalid("trailer section too large"));
        }
        return Ok(Step::NeedMore);
    };
    let section = buf.split_to(end + 2).freeze();
    let mut trailers = HeaderMap::new();
    // `section[..end]` is CRLF-ended lines: a piece without its CR held a
    // bare LF.
    let lines = section[..end].split(|b| *b == b'\n');
    for line in lines.take_while(|line| !line.is_empty()) {
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err(invalid("bare LF in the trailer section"));
        };
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(invalid("malformed trailer"));
        };
        let name =
            HeaderName::from_bytes(&line[..colon]).map_err(|_| invalid("invalid trailer name"))?;
        let value =
            HeaderValue::from_maybe_shared(section.slice_ref(line[colon + 1..].trim_ascii()))
                .map_err(|_| invalid("invalid trailer value"))?;
        trailers.append(name, value);
    }
    Ok(Step::Trailers(trailers))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; the body, the
    /// trailers, and what was left after the body.
    fn decode_in_pieces(
        length: BodyLength,
        input: &[u8],
        piece: usize,
    ) -> io::Result<(Vec<u8>, HeaderMap, Vec<u8>)> {
        let mut decoder = Decoder::new(length);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(t) => return Ok((body, t, buf.to_vec())),
                Decoded::End => return Ok((body, HeaderMap::new(), buf.to_vec())),
                Decoded::NeedMore if fed == input.len() => {
                    decoder.at_eof()?;
                    return Ok((body, HeaderMap::new(), Vec::new()));
                }
                Decoded::NeedMore => {
                    let end = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\nx-t: y\r\n\r\nNEXT";

    #[test]
    fn chunked_bodies_decode_alike_when_split_at_every_byte_boundary() {
        for piece in 1..=CHUNKED.len() {
            let (body, trailers, rest) =
                decode_in_pieces(BodyLength::Chunked, CHUNKED, piece).expect("valid");
            assert_eq!(body, b"hello 0123456789", "pieces of {piece}");
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
            assert_eq!(trailers.len(), 2);
            // What follows the body (a pipelined message) is left in place.
            assert!(b"NEXT".starts_with(&rest), "pieces of {piece}: {rest:?}");
        }
    }

    #[test]
    fn chunked_body_without_trailers_ends_after_the_last_chunk() {
        let (body, trailers, rest) =
            decode_in_pieces(BodyLength::Chunked, b"0\r\n\r\nGET", 64).expect("valid");
        assert!(body.is_empty() && trailers.is_empty());
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
            b"\r\n",
            b"0\r\nno colon\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0\r\nx: 1\nhidden: 2\r\n\r\n",
            b"0\r\nx : 1\r\n\r\n",
            b"0\r\nx: 1\r\n folded\r\n\r\n",
        ] {
            let result = decode_in_pieces(BodyLength::Chunked, bad, bad.len());
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_in_pieces(BodyLength::Chunked, &long_line, long_line.len()).is_err());
    }

    #[test]
    fn chunk_lines_take_bws_before_extensions_and_leading_zeros() {
        let input = b"05 ;a=b\t;c=\"d e\"\r\nhello\r\n000000000000000000001\t\r\n!\r\n0\r\n\r\n";
        let (body, _, _) =
            decode_in_pieces(BodyLength::Chunked, input, input.len()).expect("valid");
        assert_eq!(body, b"hello!");
    }

    #[test]
    fn line_and_trailer_limits_hold_however_the_bytes_arrive() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE + 1, b'x');
        line.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        let mut section = b"0\r\nx: ".to_vec();
        section.resize(MAX_TRAILERS + 8, b'y');
        section.extend_from_slice(b"\r\n\r\n");
        for input in [&line, &section] {
            for piece in [61, 1000, input.len()] {
                let result = decode_in_pieces(BodyLength::Chunked, input, piece);
                assert!(result.is_err(), "pieces of {piece}");
            }
        }
        let mut longest = b"1;".to_vec();
        longest.resize(MAX_CHUNK_LINE, b'x');
        longest.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        for piece in [1, 1000, longest.len()] {
            let (body, _, _) =
                decode_in_pieces(BodyLength::Chunked, &longest, piece).expect("at the limit");
            assert_eq!(body, b"a");
        }
    }

    #[test]
    fn a_chunked_body_cut_short_is_an_error() {
        for cut in 0..CHUNKED.len() - 4 {
            let result = decode_in_pieces(BodyLength::Chunked, &CHUNKED[..cut], 3);
            assert!(result.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn exact_bodies_stop_at_their_length_and_leave_the_rest() {
        for piece in 1..=12 {
            let (body, _, rest) =
                decode_in_pieces(BodyLength::Exact(5), b"helloGET /", piece).expect("valid");
            assert_eq!(body, b"hello");
            assert!(b"GET /".starts_with(&rest));
        }
        assert!(decode_in_pieces(BodyLength::Exact(5), b"hel", 1).is_err());
        let mut decoder = Decoder::new(BodyLength::Exact(3));
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            decoder.decode(&mut buf).expect("valid"),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert!(decoder.is_done(), "the last part ends the body at once");
    }

    #[test]
    fn until_close_bodies_end_at_eof_and_empty_ones_at_once() {
        let (body, _, _) =
            decode_in_pieces(BodyLength::UntilClose, b"all of it", 4).expect("valid");
        assert_eq!(body, b"all of it");
        let mut empty = Decoder::new(BodyLength::Empty);
        assert!(empty.is_done());
        assert_eq!(
            empty.decode(&mut BytesMut::from(&b"GET"[..])).expect("ok"),
            Decoded::End
        );
        assert_eq!(Decoder::new(BodyLength::Exact(0)), Decoder::Done);
    }
}
