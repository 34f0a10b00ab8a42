//! The smallest HTTP client `myelin status` needs: one GET on the local admin listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Error;

/// One HTTP/1.0 GET: the status code and body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), Error> {
    let io = |error| Error::Request { addr, error };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    // Bounded: the admin listener's answers are small.
    s.take(64 << 20).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| Error::Response { addr, reason: "no end of headers".into() })?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Response { addr, reason: format!("bad status line {:?}", head.lines().next().unwrap_or("")) })?;
    Ok((code, body.to_owned()))
}

/// `/status`, parsed.
pub fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<crate::Snapshot, Error> {
    let (code, body) = get(addr, "/status", timeout)?;
    if code != 200 {
        return Err(Error::Response { addr, reason: format!("HTTP {code}") });
    }
    serde_json::from_str(&body).map_err(|e| Error::Response { addr, reason: format!("not a status document: {e}") })
}
