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
    let text = text.trim().to_owned();
    if out.status.success() {
        Ok(CommandOutput { output: text })
    } else {
        Err(Error::Failed { command: shown, status: out.status.to_string(), output: text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
