//! One worker thread: its listener, its ring, its provided buffers, its
//! connections, and the loop that makes one kernel crossing per batch.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::conn::{Conn, Side, CLIENT_RECV, CLIENT_SEND, UPSTREAM_RECV, UPSTREAM_SEND};
use crate::http::RequestIds;
use crate::sys::{self, BufRing, Ring};
use crate::Options;

/// Submission queue size; completions get four times as many slots
/// (multishot operations post several per submission).
const RING_ENTRIES: u32 = 1024;
/// Provided buffers per worker: enough for every connection's two sockets
/// to have data waiting at once, small enough to stay in cache.
const BUFFERS: u16 = 1024;
const BUFFER_SIZE: usize = 16 * 1024;
/// The multishot accept's user data (connection slots use the rest).
const ACCEPT: u64 = u64::MAX;

pub struct Worker {
    // Field order is drop order: the ring (and its registration of the
    // buffer ring) goes before the buffers it points at.
    ring: Ring,
    bufs: BufRing,
    listener: TcpListener,
    upstream: SocketAddr,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    ids: RequestIds,
    completions: Vec<(u64, i32, u32)>,
}

impl Worker {
    pub fn new(index: usize, listener: TcpListener, options: &Options) -> io::Result<Worker> {
        let mut ring = Ring::new(RING_ENTRIES, options.taskrun, options.recv)?;
        let bufs = BufRing::new(BUFFERS, BUFFER_SIZE)?;
        ring.register(&bufs)?;
        Ok(Worker {
            ring,
            bufs,
            listener,
            upstream: options.upstream,
            conns: Vec::new(),
            free: Vec::new(),
            ids: RequestIds::new(index),
            completions: Vec::with_capacity(RING_ENTRIES as usize * 4),
        })
    }

    /// The event loop: one `submit_and_wait` submits everything the last
    /// batch of completions queued and waits for the next batch.
    pub fn run(mut self) -> io::Result<()> {
        self.ring.accept_multishot(&self.listener, ACCEPT)?;
        loop {
            self.ring.submit_and_wait()?;
            let mut batch = std::mem::take(&mut self.completions);
            self.ring.drain_completions(&mut batch);
            for &(user_data, result, flags) in &batch {
                self.complete(user_data, result, flags)?;
            }
            self.completions = batch;
        }
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) -> io::Result<()> {
        if user_data == ACCEPT {
            return self.accepted(result, flags);
        }
        let slot = (user_data >> 8) as u32;
        let Some(conn) = self.conns.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        let (ring, bufs, ids) = (&mut self.ring, &mut self.bufs, &mut self.ids);
        match user_data as u8 {
            CLIENT_RECV => conn.on_recv(Side::Client, (result, flags), ring, bufs, ids, slot)?,
            UPSTREAM_RECV => {
                conn.on_recv(Side::Upstream, (result, flags), ring, bufs, ids, slot)?
            }
            CLIENT_SEND => conn.on_send(Side::Client, result, ring, slot)?,
            UPSTREAM_SEND => conn.on_send(Side::Upstream, result, ring, slot)?,
            _ => {}
        }
        if conn.finished() {
            self.conns[slot as usize] = None;
            self.free.push(slot);
        }
        Ok(())
    }

    fn accepted(&mut self, result: i32, flags: u32) -> io::Result<()> {
        if !sys::has_more(flags) {
            self.ring.accept_multishot(&self.listener, ACCEPT)?;
        }
        if result < 0 {
            eprintln!(
                "uring-probe: accept failed: {}",
                io::Error::from_raw_os_error(-result)
            );
            return Ok(());
        }
        let client = sys::adopt_accepted(result);
        self.open(client)
    }

    /// Pairs a new client connection with its own upstream connection. A
    /// blocking loopback connect, once per client connection: the benchmark
    /// keeps its connections for the whole run.
    fn open(&mut self, client: TcpStream) -> io::Result<()> {
        let paired = client.set_nodelay(true).and_then(|()| {
            let ip = client.peer_addr()?.ip().to_string();
            let upstream = TcpStream::connect(self.upstream)?;
            upstream.set_nodelay(true)?;
            Ok((ip, upstream))
        });
        let (ip, upstream) = match paired {
            Ok(paired) => paired,
            Err(e) => {
                eprintln!("uring-probe: connection dropped: {e}");
                return Ok(());
            }
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        let mut conn = Conn::new(client, upstream, ip);
        conn.arm_recv(Side::Client, &mut self.ring, slot)?;
        conn.arm_recv(Side::Upstream, &mut self.ring, slot)?;
        self.conns[slot as usize] = Some(conn);
        Ok(())
    }
}
