//! systemd's notification protocol (`NOTIFY_SOCKET`): `READY=1`, `RELOADING=1`, `STATUS=`,
//! `STOPPING=1` and the watchdog. Every call is a no-op when systemd did not ask for them.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tracing::{debug, info};

/// systemd's notification socket (`NOTIFY_SOCKET`); every call is a no-op without one.
pub struct Notifier {
    pub watchdog: Option<Duration>,
    pub next_ping: Option<Instant>,
    /// `NOTIFY_SOCKET` was set at start (it is not looked up again at every call).
    on: bool,
    /// The last `STATUS=` sent.
    status: Option<String>,
}

impl Notifier {
    pub fn from_env() -> Self {
        let watchdog = watchdog_usec(std::env::var("WATCHDOG_USEC").ok(), std::env::var("WATCHDOG_PID").ok(), std::process::id())
            .map(|usec| Duration::from_micros(usec) / 2);
        if let Some(w) = watchdog {
            info!(ping_every_ms = w.as_millis() as u64, "systemd watchdog is on.");
        }
        Self { watchdog, next_ping: watchdog.map(|w| Instant::now() + w), on: std::env::var_os("NOTIFY_SOCKET").is_some(), status: None }
    }

    /// Whether systemd listens: without it, nothing is worth preparing for it.
    pub fn on(&self) -> bool {
        self.on
    }

    pub fn send(&mut self, states: &[NotifyState]) {
        if !self.on {
            return;
        }
        match sd_notify::notify(false, states) {
            Ok(()) => {
                if let Some(text) = states.iter().find_map(|s| if let NotifyState::Status(t) = s { Some(t) } else { None }) {
                    self.status = Some((*text).to_owned());
                }
            }
            Err(e) => debug!("cannot notify systemd: {e}"),
        }
    }

    /// `STATUS=text`, unless it is what systemd shows already (every change would otherwise
    /// send the same line).
    pub fn status(&mut self, text: &str) {
        if self.status.as_deref() != Some(text) {
            self.send(&[NotifyState::Status(text)]);
        }
    }
}

/// As libsystemd's `sd_watchdog_enabled`: `WATCHDOG_USEC` applies to this process unless
/// `WATCHDOG_PID` names another one.
fn watchdog_usec(usec: Option<String>, pid: Option<String>, me: u32) -> Option<u64> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(me) => None,
        _ => Some(usec),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_ours_unless_another_pid_is_named() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(watchdog_usec(s("200000"), None, 7), Some(200_000));
        assert_eq!(watchdog_usec(s("200000"), s("7"), 7), Some(200_000));
        assert_eq!(watchdog_usec(s("200000"), s("8"), 7), None);
        assert_eq!(watchdog_usec(s("0"), None, 7), None);
        assert_eq!(watchdog_usec(s("soon"), None, 7), None);
        assert_eq!(watchdog_usec(None, s("7"), 7), None);
    }
}
