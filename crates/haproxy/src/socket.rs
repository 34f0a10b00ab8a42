//! Talking to HAProxy's sockets (the stats socket and the master CLI): one command and its
//! reply, or many commands pipelined on one connection.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Error;

/// What a reply buffer holds before it grows.
const REPLY_ROOM: usize = 16 * 1024;

/// Send one command to a HAProxy socket and read the whole reply.
pub(crate) async fn ask(socket: &Path, command: &str, timeout: Duration) -> Result<String, Error> {
    let io = |source| Error::Socket { socket: socket.to_path_buf(), command: command.to_owned(), source };
    let talk = async {
        let mut s = UnixStream::connect(socket).await.map_err(io)?;
        s.write_all(format!("{command}\n").as_bytes()).await.map_err(io)?;
        // The master CLI answers once the write side is closed.
        s.shutdown().await.map_err(io)?;
        // Room for a typical reply at once (reads otherwise start at 32 bytes and double).
        let mut out = String::with_capacity(REPLY_ROOM);
        s.read_to_string(&mut out).await.map_err(io)?;
        Ok(out)
    };
    tokio::time::timeout(timeout, talk).await.map_err(|_| {
        io(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no reply within {timeout:?}")))
    })?
}

/// [`ask`] for the blocking pool: the same exchange on a blocking socket, each step within
/// `timeout`. For replies as large as the fleet (`show servers state`), so that neither the
/// reading nor what follows holds the thread that runs the daemon loop.
pub(crate) fn ask_blocking(socket: &Path, command: &str, timeout: Duration) -> Result<String, Error> {
    use std::io::{Read as _, Write as _};
    let io = |source| Error::Socket { socket: socket.to_path_buf(), command: command.to_owned(), source };
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
    s.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut out = String::with_capacity(REPLY_ROOM);
    s.read_to_string(&mut out).map_err(io)?;
    Ok(out)
}

/// The end of each reply in the CLI's interactive mode (`prompt`).
const PROMPT: &[u8] = b"\n> ";

/// Send `commands` on one connection of the stats socket, pipelined, and return their replies
/// in order. The CLI's interactive mode ends every reply with a prompt, which splits them; the
/// writes and reads overlap, so a long batch cannot fill both directions' buffers and stall.
/// For commands whose replies are short messages (`add`, `set`, `del` ...): a reply holding
/// the prompt itself would be split wrongly. Fewer replies than commands is an error.
pub(crate) async fn pipeline(socket: &Path, commands: &[String], timeout: Duration) -> Result<Vec<String>, Error> {
    let first = commands.first().cloned().unwrap_or_default();
    let io = |source| Error::Socket { socket: socket.to_path_buf(), command: first.clone(), source };
    let talk = async {
        let s = UnixStream::connect(socket).await.map_err(io)?;
        let (mut rd, mut wr) = s.into_split();
        let mut input = String::from("prompt\n");
        for c in commands {
            input.push_str(c);
            input.push('\n');
        }
        input.push_str("quit\n");
        let write = async {
            wr.write_all(input.as_bytes()).await?;
            wr.shutdown().await
        };
        let mut out = Vec::with_capacity(REPLY_ROOM);
        let (w, r) = tokio::join!(write, rd.read_to_end(&mut out));
        w.map_err(io)?;
        r.map_err(io)?;
        Ok(out)
    };
    let out = tokio::time::timeout(timeout, talk).await.map_err(|_| {
        io(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no reply within {timeout:?}")))
    })??;
    let mut replies = split_replies(&out);
    // The first reply is the prompt's own.
    if replies.len() < commands.len() + 1 {
        let missing = &commands[replies.len().saturating_sub(1).min(commands.len().saturating_sub(1))];
        return Err(Error::Runtime { command: missing.clone(), reply: "the connection closed before its reply".into() });
    }
    replies.remove(0);
    replies.truncate(commands.len());
    Ok(replies)
}

/// Replies separated by the prompt, without their trailing new lines.
fn split_replies(out: &[u8]) -> Vec<String> {
    let mut replies = Vec::new();
    let mut rest = out;
    while let Some(i) = rest.windows(PROMPT.len()).position(|w| w == PROMPT) {
        replies.push(String::from_utf8_lossy(&rest[..i]).trim_end_matches('\n').to_owned());
        rest = &rest[i + PROMPT.len()..];
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_split_at_each_prompt() {
        let out = b"\n> New server registered.\n\n> \n> No such server.\n\n> ";
        assert_eq!(split_replies(out), ["", "New server registered.", "", "No such server."]);
        // A reply cut short (the connection closed) is not counted.
        assert_eq!(split_replies(b"\n> New server"), [""]);
    }

    /// The blocking exchange: the command, the write side closed, then the whole reply (here
    /// larger than the first read's room); no socket is an error naming it.
    #[test]
    fn ask_blocking_sends_the_command_and_reads_the_whole_reply() {
        use std::io::{Read as _, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let reply: String = (0..5000).map(|i| format!("1 web {i} s{i} 127.0.0.1 2 0 1 1\n")).collect();
        let sent = reply.clone();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut command = String::new();
            c.read_to_string(&mut command).unwrap();
            c.write_all(sent.as_bytes()).unwrap();
            command
        });
        let got = ask_blocking(&path, "show servers state", Duration::from_secs(5)).unwrap();
        assert!(got.len() > REPLY_ROOM);
        assert_eq!(got, reply);
        assert_eq!(server.join().unwrap(), "show servers state\n");
        let err = ask_blocking(&dir.path().join("none.sock"), "show servers state", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
