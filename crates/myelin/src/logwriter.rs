//! Log lines that discovery data cannot forge: every control character inside a line (a line
//! break, a carriage return, NUL, an ANSI escape) is written escaped (`\n`, `\r`, `\0`,
//! `\x1b`), whatever field or message carries it, so one hostile record cannot add lines that
//! look like myelin's own or repaint a terminal. Only the newline that ends each event is kept.
//! JSON logs are escaped by the JSON encoder already; this covers the text format.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Escape control characters in `line`, keeping a final `\n`; ANSI escapes are kept when
/// `ansi` (myelin's own colours on a terminal).
pub fn escape(line: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match line.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (line, &b""[..]),
    };
    let mut out = Vec::with_capacity(line.len());
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0x1b if ansi => out.push(b),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

/// A `MakeWriter` for stderr whose writers escape each event's text (tracing's fmt layer writes
/// one event per `write_all`).
pub struct Escaping {
    pub ansi: bool,
}

pub struct EscapingWriter {
    ansi: bool,
}

impl Write for EscapingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write_all(&escape(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Escaping {
    type Writer = EscapingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter { ansi: self.ansi }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_inside_a_line_are_escaped() {
        let forged = "WARN myelin::daemon: Rejected a discovery record. server=evil\n2026-11-22T00:00:00Z  INFO myelin: all good\x1b[2J\0\r\n";
        let out = String::from_utf8(escape(forged.as_bytes(), false)).unwrap();
        assert_eq!(out, "WARN myelin::daemon: Rejected a discovery record. server=evil\\n2026-11-22T00:00:00Z  INFO myelin: all good\\x1b[2J\\x00\\r\n");
        assert_eq!(out.lines().count(), 1);
        // myelin's own colours stay on a terminal.
        assert_eq!(escape(b"\x1b[32mINFO\x1b[0m x\n", true), b"\x1b[32mINFO\x1b[0m x\n");
        assert_eq!(escape("é ü\t ok".as_bytes(), false), "é ü\t ok".as_bytes());
    }
}
