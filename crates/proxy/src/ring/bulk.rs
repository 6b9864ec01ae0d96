//! Large response bodies, relayed by a task of the worker's runtime: reads
//! from the upstream link and writes to the client as soon as each socket
//! is ready (epoll), the way the full path relays a body.
//!
//! Measured: relaying a 1 MB body on the ring cost more CPU than this
//! (the multishot receive copies what it reads out of the ring's buffers,
//! and whatever it read ahead of the head has to be gathered), and a
//! connection could wait long for its turn behind the others' bodies.
//! The loop keeps the connection, its link and its exchange; the task
//! works on duplicates of the two sockets and reports back how the body
//! ended, and the loop goes on from there.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use cutover_uring::ops;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http1::body::{Decoded, Decoder};
use crate::http1::encode;

/// What each read from the upstream asks for.
const READ_SIZE: usize = 128 * 1024;

/// A body for the task: the two sockets (duplicates: the loop keeps its
/// own), how the body is framed on each side, and the bytes the loop
/// already has.
pub(super) struct Body {
    pub(super) client: std::net::TcpStream,
    pub(super) link: std::net::TcpStream,
    pub(super) decoder: Decoder,
    /// The client gets the body chunked.
    pub(super) chunked: bool,
    /// Bytes for the client not yet sent, in order (the response head, at
    /// least).
    pub(super) pending: Vec<Vec<u8>>,
    /// Body bytes read from the upstream and not yet decoded.
    pub(super) upbuf: BytesMut,
}

/// How the body ended.
#[derive(Debug)]
pub(super) struct Relayed {
    /// Body bytes that reached the client (as the upstream framed them).
    pub(super) bytes: u64,
    pub(super) end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Whole; `exact`: nothing came after the end (the link may be reused).
    Whole { exact: bool },
    /// The upstream cut it short or framed it wrong: the client's
    /// connection closes (what it got so far stands).
    UpstreamFault,
    /// The client went away.
    ClientGone,
}

impl Body {
    /// Relays the body to its end (the upstream's pace, bounded by the
    /// client's: one read is written before the next).
    pub(super) async fn relay(self) -> Relayed {
        let mut relayed = Relayed {
            bytes: 0,
            end: End::ClientGone,
        };
        let Body {
            client,
            link,
            mut decoder,
            chunked,
            pending,
            mut upbuf,
        } = self;
        let (Ok(mut client), Ok(mut link)) =
            (TcpStream::from_std(client), TcpStream::from_std(link))
        else {
            return relayed;
        };
        if write_all_of(&mut client, pending).await.is_err() {
            return relayed;
        }
        let mut framed = Vec::new();
        relayed.end = loop {
            match decoder.decode(&mut upbuf) {
                Ok(Decoded::Data(data)) => {
                    relayed.bytes += data.len() as u64;
                    let written = if chunked {
                        framed.clear();
                        encode::chunk(&mut framed, &data);
                        client.write_all(&framed).await
                    } else {
                        client.write_all(&data).await
                    };
                    if written.is_err() {
                        break End::ClientGone;
                    }
                }
                Ok(Decoded::Trailers(_) | Decoded::End) => {
                    // More than the framing said: the link is not reused.
                    break finish(&mut client, chunked, upbuf.is_empty()).await;
                }
                Ok(Decoded::NeedMore) => match read(&mut link, &mut upbuf).await {
                    Ok(0) => match decoder.at_eof() {
                        // Delimited by the close: the link is done.
                        Ok(_) => break finish(&mut client, chunked, false).await,
                        Err(_) => break End::UpstreamFault,
                    },
                    Ok(_) => {}
                    Err(_) => break End::UpstreamFault,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "upstream response body is malformed");
                    break End::UpstreamFault;
                }
            }
        };
        relayed
    }
}

/// Writes `pieces` in order, as many per system call as it takes.
async fn write_all_of(client: &mut TcpStream, pieces: Vec<Vec<u8>>) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = pieces
        .iter()
        .filter(|piece| !piece.is_empty())
        .map(|piece| IoSlice::new(piece))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = client.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    drop(slices);
    for piece in pieces {
        ops::give_back(piece);
    }
    Ok(())
}

async fn read(link: &mut TcpStream, upbuf: &mut BytesMut) -> io::Result<usize> {
    upbuf.reserve(READ_SIZE);
    link.read_buf(upbuf).await
}

/// The body's end for the client (`exact`: the link may be reused).
async fn finish(client: &mut TcpStream, chunked: bool, exact: bool) -> End {
    if chunked && client.write_all(b"0\r\n\r\n").await.is_err() {
        return End::ClientGone;
    }
    End::Whole { exact }
}
