//! One client connection paired with its own upstream connection, and the
//! state machine of the exchanges on them. The byte handling (`received`)
//! never touches the ring; `flush` turns queued bytes into sends.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;

use crate::http::{self, Refused, RequestIds};
use crate::sys::{self, BufRing, Ring};

/// Operation kinds in the low byte of a completion's user data; the slot
/// of the connection is above them.
pub const CLIENT_RECV: u8 = 1;
pub const UPSTREAM_RECV: u8 = 2;
pub const CLIENT_SEND: u8 = 3;
pub const UPSTREAM_SEND: u8 = 4;

fn user_data(slot: u32, kind: u8) -> u64 {
    (u64::from(slot) << 8) | u64::from(kind)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// Where the connection is between a request and its response.
enum Exchange {
    /// Waiting for the next request head.
    Idle,
    /// The request went upstream; its response head has not arrived.
    AwaitingHead {
        id: [u8; 32],
        head_only: bool,
        keep_alive: bool,
    },
    /// Response body bytes still to come from upstream.
    Body { left: u64, keep_alive: bool },
    /// Nothing more is read: the last answer is sent, then both close.
    Closing,
}

/// Bytes to send on one socket: `sending` is in the kernel's hands while
/// `busy` (never touched then), `queued` collects what comes next.
#[derive(Default)]
struct Outbox {
    sending: Vec<u8>,
    offset: usize,
    queued: Vec<u8>,
    busy: bool,
}

impl Outbox {
    /// The bytes to send now, if no send is in flight and any are waiting.
    fn start(&mut self) -> Option<&[u8]> {
        if self.busy {
            return None;
        }
        if self.offset >= self.sending.len() {
            if self.queued.is_empty() {
                return None;
            }
            std::mem::swap(&mut self.sending, &mut self.queued);
            self.queued.clear();
            self.offset = 0;
        }
        self.busy = true;
        Some(&self.sending[self.offset..])
    }

    /// A send completed with `n` bytes written (a short send is resumed).
    fn sent(&mut self, n: usize) {
        self.busy = false;
        self.offset += n;
        if self.offset >= self.sending.len() {
            self.sending.clear();
            self.offset = 0;
        }
    }

    fn is_empty(&self) -> bool {
        !self.busy && self.sending.is_empty() && self.queued.is_empty()
    }
}

pub struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    client_ip: String,
    client_in: Vec<u8>,
    upstream_in: Vec<u8>,
    to_client: Outbox,
    to_upstream: Outbox,
    exchange: Exchange,
    request_body_left: u64,
    /// Operations of this connection the kernel still holds: the slot (and
    /// the buffers sends point into) lives until this is 0.
    in_flight: u32,
    recv_armed: [bool; 2],
    closing: bool,
}

impl Conn {
    pub fn new(client: TcpStream, upstream: TcpStream, client_ip: String) -> Conn {
        Conn {
            client,
            upstream,
            client_ip,
            client_in: Vec::new(),
            upstream_in: Vec::new(),
            to_client: Outbox::default(),
            to_upstream: Outbox::default(),
            exchange: Exchange::Idle,
            request_body_left: 0,
            in_flight: 0,
            recv_armed: [false; 2],
            closing: false,
        }
    }

    /// Closed and nothing of it left in the kernel: the slot can go.
    pub fn finished(&self) -> bool {
        self.closing && self.in_flight == 0
    }

    fn socket(&self, side: Side) -> &TcpStream {
        match side {
            Side::Client => &self.client,
            Side::Upstream => &self.upstream,
        }
    }

    /// Starts receiving on `side` unless a receive is armed or it closes.
    pub fn arm_recv(&mut self, side: Side, ring: &mut Ring, slot: u32) -> io::Result<()> {
        let armed = &mut self.recv_armed[side as usize];
        if *armed || self.closing {
            return Ok(());
        }
        let kind = match side {
            Side::Client => CLIENT_RECV,
            Side::Upstream => UPSTREAM_RECV,
        };
        *armed = true;
        self.in_flight += 1;
        let fd = self.socket(side).as_raw_fd();
        ring.recv(fd, user_data(slot, kind))
    }

    /// A receive completion: the bytes go through the state machine, the
    /// buffer back to the kernel, the receive is re-armed if it ended.
    #[allow(clippy::too_many_arguments)]
    pub fn on_recv(
        &mut self,
        side: Side,
        (result, flags): (i32, u32),
        ring: &mut Ring,
        bufs: &mut BufRing,
        ids: &mut RequestIds,
        slot: u32,
    ) -> io::Result<()> {
        if !sys::has_more(flags) {
            self.recv_armed[side as usize] = false;
            self.in_flight -= 1;
        }
        match (result, sys::buffer_id(flags)) {
            (n, Some(id)) if n > 0 => {
                self.received(side, bufs.received(id, n as usize), ids);
                bufs.recycle(id);
            }
            (n, _) if n < 0 && sys::is_out_of_buffers(n) => {}
            // End of stream or an error on either side ends the pair.
            _ => self.shut_down(),
        }
        self.arm_recv(side, ring, slot)?;
        self.flush(ring, slot)
    }

    /// A send completion.
    pub fn on_send(
        &mut self,
        side: Side,
        result: i32,
        ring: &mut Ring,
        slot: u32,
    ) -> io::Result<()> {
        self.in_flight -= 1;
        let outbox = match side {
            Side::Client => &mut self.to_client,
            Side::Upstream => &mut self.to_upstream,
        };
        match usize::try_from(result) {
            Ok(n) => outbox.sent(n),
            Err(_) => {
                outbox.busy = false;
                self.shut_down();
            }
        }
        self.flush(ring, slot)
    }

    /// Sends what is queued on either side; closes once the last answer of
    /// a closing connection is out.
    fn flush(&mut self, ring: &mut Ring, slot: u32) -> io::Result<()> {
        if self.closing {
            return Ok(());
        }
        if let Some(bytes) = self.to_upstream.start() {
            self.in_flight += 1;
            ring.send(
                self.upstream.as_raw_fd(),
                bytes,
                user_data(slot, UPSTREAM_SEND),
            )?;
        }
        if let Some(bytes) = self.to_client.start() {
            self.in_flight += 1;
            ring.send(self.client.as_raw_fd(), bytes, user_data(slot, CLIENT_SEND))?;
        }
        if matches!(self.exchange, Exchange::Closing) && self.to_client.is_empty() {
            self.shut_down();
        }
        Ok(())
    }

    /// Both sockets shut down: armed receives end, sends fail; the
    /// descriptors close when the slot is freed (nothing in flight).
    fn shut_down(&mut self) {
        if !self.closing {
            self.closing = true;
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.upstream.shutdown(Shutdown::Both);
        }
    }

    fn received(&mut self, side: Side, data: &[u8], ids: &mut RequestIds) {
        if self.closing {
            return;
        }
        match side {
            Side::Client => self.client_bytes(data, ids),
            Side::Upstream => self.upstream_bytes(data, ids),
        }
    }

    fn client_bytes(&mut self, mut data: &[u8], ids: &mut RequestIds) {
        if matches!(self.exchange, Exchange::Closing) {
            return;
        }
        if self.request_body_left > 0 && self.client_in.is_empty() {
            let take = data.len().min(clamp(self.request_body_left));
            self.to_upstream.queued.extend_from_slice(&data[..take]);
            self.request_body_left -= take as u64;
            data = &data[take..];
        }
        self.client_in.extend_from_slice(data);
        self.next_request(ids);
    }

    /// Parses and forwards the next request head once the previous
    /// exchange is over.
    fn next_request(&mut self, ids: &mut RequestIds) {
        if !matches!(self.exchange, Exchange::Idle) || self.client_in.is_empty() {
            return;
        }
        let id = ids.next();
        let out = &mut self.to_upstream.queued;
        match http::request(&self.client_in, &self.client_ip, &id, out) {
            Ok(None) => {}
            Ok(Some(request)) => {
                self.client_in.drain(..request.head_len);
                let take = self.client_in.len().min(clamp(request.body_len));
                out.extend(self.client_in.drain(..take));
                self.request_body_left = request.body_len - take as u64;
                self.exchange = Exchange::AwaitingHead {
                    id,
                    head_only: request.head_only,
                    keep_alive: request.keep_alive,
                };
            }
            Err(Refused(status)) => self.answer_and_close(status),
        }
    }

    fn answer_and_close(&mut self, status: u16) {
        http::refusal(status, &mut self.to_client.queued);
        self.exchange = Exchange::Closing;
    }

    fn upstream_bytes(&mut self, data: &[u8], ids: &mut RequestIds) {
        match self.exchange {
            Exchange::AwaitingHead {
                id,
                head_only,
                keep_alive,
            } => {
                self.upstream_in.extend_from_slice(data);
                let out = &mut self.to_client.queued;
                match http::response(&self.upstream_in, head_only, !keep_alive, &id, out) {
                    Ok(None) => {}
                    Ok(Some(response)) => {
                        let body = &self.upstream_in[response.head_len..];
                        let Some(left) = response.body_len.checked_sub(body.len() as u64) else {
                            // More than the framing said: never reuse this pair.
                            return self.shut_down();
                        };
                        self.to_client.queued.extend_from_slice(body);
                        self.upstream_in.clear();
                        self.body_progress(left, keep_alive, ids);
                    }
                    Err(Refused(status)) => self.answer_and_close(status),
                }
            }
            Exchange::Body { left, keep_alive } => {
                let Some(left) = left.checked_sub(data.len() as u64) else {
                    return self.shut_down();
                };
                self.to_client.queued.extend_from_slice(data);
                self.body_progress(left, keep_alive, ids);
            }
            // Bytes nobody asked for: the upstream connection is unusable.
            Exchange::Idle | Exchange::Closing => self.shut_down(),
        }
    }

    /// Response body bytes queued for the client, `left` still expected.
    fn body_progress(&mut self, left: u64, keep_alive: bool, ids: &mut RequestIds) {
        if left > 0 {
            self.exchange = Exchange::Body { left, keep_alive };
        } else if keep_alive && self.request_body_left == 0 {
            self.exchange = Exchange::Idle;
            self.next_request(ids);
        } else {
            self.exchange = Exchange::Closing;
        }
    }
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
