use std::process::Stdio;
use std::time::Duration;

use crate::Error;

/// What a finished command printed.
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    pub output: String,
}

/// Run `argv` (no shell unless argv says so) with extra environment, kill it after `timeout`,
/// and fail unless it exits 0. stdout and stderr are returned together.
pub async fn run_command(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<CommandOutput, Error> {
    let shown = argv.join(" ");
    let (prog, args) = argv.split_first().ok_or_else(|| Error::Spawn {
        command: String::new(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
    })?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn { command: shown.clone(), source })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| Error::Spawn { command: shown.clone(), source })?,
        Err(_) => return Err(Error::Timeout { command: shown, seconds: timeout.as_secs() }),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = bounded(text.trim());
    if out.status.success() {
        Ok(CommandOutput { output: text })
    } else {
        Err(Error::Failed { command: shown, status: out.status.to_string(), output: text })
    }
}

/// At most this much of a command's output is kept (in errors, logs, the status).
const MAX_OUTPUT_LINES: usize = 40;
const MAX_OUTPUT_BYTES: usize = 4096;

/// The first [`MAX_OUTPUT_LINES`] lines and [`MAX_OUTPUT_BYTES`] bytes of `text`, with a note
/// of what was left out.
fn bounded(text: &str) -> String {
    let total = text.lines().count();
    let mut kept = String::new();
    let mut lines = 0;
    for line in text.lines().take(MAX_OUTPUT_LINES) {
        if kept.len() + line.len() + 1 > MAX_OUTPUT_BYTES {
            let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
            let mut end = room.min(line.len());
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            kept.push_str(&line[..end]);
            kept.push_str(" [...]");
            lines += 1;
            break;
        }
        if lines > 0 {
            kept.push('\n');
        }
        kept.push_str(line);
        lines += 1;
    }
    if lines < total {
        kept.push_str(&format!("\n[{} more lines not shown]", total - lines));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_bounded() {
        assert_eq!(bounded("a\nb"), "a\nb");
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let b = bounded(many.trim());
        assert_eq!(b.lines().count(), MAX_OUTPUT_LINES + 1);
        assert!(b.ends_with("[60 more lines not shown]"), "{b}");
        let wide = "é".repeat(5000);
        let b = bounded(&wide);
        assert!(b.len() <= MAX_OUTPUT_BYTES + 10 && b.ends_with(" [...]"), "{}", b.len());
        let b = bounded(&format!("{wide}\nsecond"));
        assert!(b.ends_with("[1 more lines not shown]"), "{b}");
    }

    fn sh(s: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), s.into()]
    }

    #[tokio::test]
    async fn success_failure_and_timeout() {
        let ok = run_command(&sh("echo hi; echo there >&2"), &[], Duration::from_secs(5)).await.unwrap();
        assert_eq!(ok.output, "hi\nthere");
        let e = run_command(&sh("echo bad >&2; exit 3"), &[], Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("exit status: 3") && e.to_string().contains("bad"), "{e}");
        let e = run_command(&sh("sleep 5"), &[], Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }));
        let e = run_command(&["/nonexistent/prog".to_string()], &[], Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, Error::Spawn { .. }));
        let ok = run_command(&sh("echo $X"), &[("X", "y")], Duration::from_secs(5)).await.unwrap();
        assert_eq!(ok.output, "y");
    }
}
