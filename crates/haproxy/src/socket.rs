//! Talking to HAProxy's sockets (the stats socket and the master CLI): one command, one reply.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Error;

/// Send one command to a HAProxy socket and read the whole reply.
pub(crate) async fn ask(socket: &Path, command: &str, timeout: Duration) -> Result<String, Error> {
    let io = |source| Error::Socket { socket: socket.to_path_buf(), command: command.to_owned(), source };
    let talk = async {
        let mut s = UnixStream::connect(socket).await.map_err(io)?;
        s.write_all(command.as_bytes()).await.map_err(io)?;
        s.write_all(b"\n").await.map_err(io)?;
        // The master CLI answers once the write side is closed.
        s.shutdown().await.map_err(io)?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.map_err(io)?;
        Ok(out)
    };
    tokio::time::timeout(timeout, talk).await.map_err(|_| {
        io(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no reply within {timeout:?}")))
    })?
}
