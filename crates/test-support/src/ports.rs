//! Free loopback ports.

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago (the listener that found
/// it is closed again), for configs that need a fixed port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
