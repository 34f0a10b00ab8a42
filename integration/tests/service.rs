//! Running as a service: the admin listener (/health, /ready, /status, /metrics), `myelin
//! status`, systemd's notifications on a socket the test binds, SIGHUP outcomes as the status
//! shows them, and Synapse's file_output. Everything on 127.0.0.1.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use myelin_integration::{free_port, get, wait_for, Env};
use serde_json::Value;

/// What systemd would receive on NOTIFY_SOCKET. Read all the time, as systemd does: a
/// datagram socket holds only `net.unix.max_dgram_qlen` (10 here) unread messages, and the
/// daemon's next notification would wait for room.
struct Notifications {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Self {
        let sock = UnixDatagram::bind(path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads until the socket fails or a message finds the test gone; left blocked on the
        // socket when neither happens, until the test binary exits.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    return;
                }
            }
        });
        Self { rx, seen: Vec::new() }
    }

    fn drain(&mut self) {
        self.seen.extend(self.rx.try_iter());
    }

    /// Wait until a message (after those already consumed) contains every one of `parts`;
    /// consume up to it.
    fn wait(&mut self, parts: &[&str]) -> String {
        let mut found = None;
        wait_for(Duration::from_secs(10), || {
            self.drain();
            found = self.seen.iter().position(|m| parts.iter().all(|p| m.lines().any(|l| l.starts_with(p))));
            found.is_some()
        });
        let i = found.unwrap_or_else(|| panic!("no message with {parts:?} among {:?}", self.seen));
        let m = self.seen[i].clone();
        self.seen.drain(..=i);
        m
    }
}

fn status(port: u16) -> Value {
    let (code, body) = get(port, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of one Prometheus series.
fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = get(port, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

fn config(env: &Env, service: &str, admin: u16) -> String {
    format!(
        "admin: {{bind: {admin}}}
file_output: {{output_directory: out}}
services:
  {service}:
    discovery: {{method: file, path: backends.yaml}}
    haproxy: {{port: {port}, bind_address: 127.0.0.1, server_options: check}}
haproxy:
  config_file_path: {hcfg}
  do_reloads: false
  restart_interval: 0.1
",
        port = env.frontend_port,
        hcfg = env.haproxy_cfg().display(),
    )
}

fn entries(env: &Env, service: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(env.path("out").join(format!("{service}.json"))).ok()?;
    let v: Value = serde_json::from_str(&text).unwrap();
    Some(v.as_array().unwrap().iter().map(|e| format!("{}={}:{}", e["name"].as_str().unwrap(), e["host"].as_str().unwrap(), e["port"])).collect())
}

/// myelin running service `web` (see [`config`], written to `myelin.yaml`) with `vars` in its
/// environment, its admin listener answering: the listener's port and the process.
fn start_web(env: &Env, vars: &[(&str, &str)]) -> (u16, myelin_integration::Proc) {
    let admin = free_port();
    let cfg = env.path("myelin.yaml");
    std::fs::write(&cfg, config(env, "web", admin)).unwrap();
    let myelin = env.start_myelin_env(&cfg, vars).unwrap();
    assert!(wait_for(Duration::from_secs(5), || get(admin, "/health").is_ok_and(|r| r.0 == 200)).is_some(), "{}", myelin.log());
    (admin, myelin)
}

/// The variables of `pid`'s environment named `name`, as `NAME=value`.
fn environ(pid: u32, name: &str) -> Vec<String> {
    let all = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let prefix = format!("{name}=");
    all.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).filter(|v| v.starts_with(&prefix)).collect()
}

#[test]
fn admin_listener_status_metrics_notifications_and_file_output() {
    let env = Env::new();
    let mut notes = Notifications::bind(&env.path("notify.sock"));
    let notify = env.path("notify.sock");
    // The discovery file does not exist yet: the service cannot sync.
    let (admin, mut myelin) = start_web(&env, &[("NOTIFY_SOCKET", notify.to_str().unwrap()), ("WATCHDOG_USEC", "200000")]);
    let cfg = env.path("myelin.yaml");
    // The daemon runs with mimalloc returning freed memory at once, in the process started
    // (systemd follows that PID).
    assert_eq!(environ(myelin.pid(), "MIMALLOC_PURGE_DELAY"), ["MIMALLOC_PURGE_DELAY=0"]);
    // Still named myelin for ps, pidof and the journal.
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/comm", myelin.pid())).unwrap(), "myelin\n");

    // Not ready until discovery has synced.
    let (code, body) = get(admin, "/ready").unwrap();
    assert_eq!((code, body.as_str()), (503, "not ready: waiting for discovery of web\n"));
    let s = status(admin);
    assert_eq!(s["ready"], false);
    assert_eq!(s["services"]["web"]["watcher"], "starting");
    assert_eq!(s["services"]["web"]["method"], "file");
    let has_error = || status(admin)["services"]["web"]["last_error"].as_str().is_some_and(|e| e.contains("backends.yaml"));
    assert!(wait_for(Duration::from_secs(5), has_error).is_some(), "{}", status(admin));
    assert_eq!(metric(admin, "myelin_ready"), 0.0);
    // The watchdog is pinged at half of WATCHDOG_USEC.
    notes.wait(&["WATCHDOG=1"]);

    env.write_backends("- {name: alpha, host: 127.0.0.1, port: 18001}\n");
    assert!(wait_for(Duration::from_secs(5), || get(admin, "/ready").is_ok_and(|r| r.0 == 200)).is_some(), "{}", myelin.log());
    let ready = notes.wait(&["READY=1"]);
    assert!(!ready.contains("RELOADING"), "{ready}");
    notes.wait(&["STATUS=1 services, 1 servers; last apply: installed"]);
    let s = status(admin);
    assert_eq!(s["services"]["web"]["watcher"], "synced");
    assert_eq!(s["services"]["web"]["backends"], serde_json::json!([{"name": "alpha", "host": "127.0.0.1", "port": 18001}]));
    assert_eq!(s["services"]["web"]["last_apply"]["outcome"], "installed");
    assert_eq!(s["haproxy"]["last_apply"]["outcome"], "installed");
    assert!(s["services"]["web"]["last_update"].is_string());
    assert_eq!(entries(&env, "web"), Some(vec!["alpha=127.0.0.1:18001".to_string()]));

    // A change with a hostile record among good ones.
    env.write_backends(
        "- {name: alpha, host: 127.0.0.1, port: 18001}\n- {name: beta, host: 127.0.0.1, port: 18002}\n- {name: evil, host: \"x\\n  server y 1.2.3.4:1\", port: 1}\n",
    );
    assert!(
        wait_for(Duration::from_secs(5), || entries(&env, "web").is_some_and(|e| e.len() == 2)).is_some(),
        "{}",
        myelin.log()
    );
    assert!(wait_for(Duration::from_secs(5), || metric(admin, "myelin_backends{service=\"web\"}") == 2.0).is_some());
    assert_eq!(metric(admin, "myelin_rejected_inputs_total{service=\"web\"}"), 1.0);
    assert_eq!(metric(admin, "myelin_applies_total{outcome=\"installed\"}"), 2.0);
    assert_eq!(metric(admin, "myelin_applies_total{outcome=\"rejected\"}"), 0.0);
    assert_eq!(metric(admin, "myelin_update_to_apply_seconds_count"), 2.0);
    let sum = metric(admin, "myelin_update_to_apply_seconds_sum");
    assert!(sum > 0.0 && sum < 10.0, "{sum}");
    assert!(metric(admin, "myelin_watcher_errors_total{service=\"web\"}") >= 1.0, "the missing file was an error");
    assert_eq!(metric(admin, "myelin_haproxy_runtime_commands_total{outcome=\"ok\"}"), 0.0);
    assert_eq!(status(admin)["services"]["web"]["rejected"], 1);

    // `myelin status`, for a person, and as JSON.
    let (code, out, err) = env.myelin_once(&["status", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with("web ")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row.split_whitespace().take(4).collect::<Vec<_>>(), ["web", "file", "synced", "2"], "{out}");
    assert!(out.contains("  beta  127.0.0.1:18002"), "{out}");
    let (code, out, _) = env.myelin_once(&["status", "--admin", &admin.to_string(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["services"]["web"]["backends"].as_array().unwrap().len(), 2);

    // SIGHUP with a bad config: refused, reported, the old one keeps running.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("bind_address: 127.0.0.1,", "bind_adress: 127.0.0.1,")).unwrap();
    myelin.signal("HUP");
    let reloading = notes.wait(&["RELOADING=1", "MONOTONIC_USEC="]);
    assert!(reloading.contains("STATUS=Reloading"), "{reloading}");
    let refused = notes.wait(&["READY=1", "STATUS=Configuration reload refused"]);
    assert!(refused.contains("did you mean `bind_address`?"), "{refused}");
    let s = status(admin);
    assert_eq!(s["config"]["last_reload"]["outcome"], "invalid", "{s}");
    let e = s["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(e.contains("myelin.yaml:6:") && e.contains("bind_adress"), "{e}");
    assert_eq!(metric(admin, "myelin_config_reloads_total{outcome=\"invalid\"}"), 1.0);
    assert!(myelin.is_running());
    let (_, out, _) = env.myelin_once(&["status", "--admin", &admin.to_string()]);
    assert!(out.contains("last reload: invalid") && out.contains("did you mean `bind_address`?"), "{out}");

    // A good config renames the service: its file_output follows, the stale file goes.
    std::fs::write(&cfg, good.replace("  web:", "  api:")).unwrap();
    myelin.signal("HUP");
    notes.wait(&["READY=1", "STATUS=Configuration reloaded"]);
    assert!(wait_for(Duration::from_secs(5), || entries(&env, "api").is_some_and(|e| e.len() == 2)).is_some(), "{}", myelin.log());
    assert_eq!(entries(&env, "web"), None);
    let s = status(admin);
    assert_eq!(s["config"]["last_reload"]["outcome"], "ok");
    assert!(s["services"].get("web").is_none() && s["services"]["api"]["watcher"] == "synced", "{s}");
    assert_eq!(metric(admin, "myelin_config_reloads_total{outcome=\"ok\"}"), 1.0);
    assert!(!get(admin, "/metrics").unwrap().1.contains("service=\"web\""));

    // Two SIGHUPs in a row, the file changed between them: whatever the first load read, the
    // configuration of the last one runs.
    std::fs::write(&cfg, good.replace("  web:", "  one:")).unwrap();
    myelin.signal("HUP");
    std::fs::write(&cfg, good.replace("  web:", "  two:")).unwrap();
    myelin.signal("HUP");
    assert!(wait_for(Duration::from_secs(5), || entries(&env, "two").is_some_and(|e| e.len() == 2)).is_some(), "{}", myelin.log());
    let settled = wait_for(Duration::from_secs(5), || {
        let s = status(admin);
        s["services"].as_object().is_some_and(|m| m.len() == 1) && s["services"]["two"]["watcher"] == "synced"
    });
    assert!(settled.is_some(), "{}", status(admin));

    myelin.signal("TERM");
    notes.wait(&["STOPPING=1"]);
    assert_eq!(myelin.wait_exit(Duration::from_secs(5)), Some(0), "{}", myelin.log());
}

#[test]
fn a_taken_admin_port_stops_the_start_with_a_clear_error() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = env.path("myelin.yaml");
    std::fs::write(&cfg, config(&env, "web", port)).unwrap();
    let (code, _, err) = env.myelin_once(&["run", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("starting the admin listener (`admin.bind`): cannot listen on 127.0.0.1:{port}")), "{err}");
    // Nothing was written.
    assert!(!env.haproxy_cfg().exists());
}

#[test]
fn an_operators_mimalloc_purge_delay_is_kept() {
    let env = Env::new();
    let (_, myelin) = start_web(&env, &[("MIMALLOC_PURGE_DELAY", "25")]);
    assert_eq!(environ(myelin.pid(), "MIMALLOC_PURGE_DELAY"), ["MIMALLOC_PURGE_DELAY=25"]);
}

#[test]
fn status_without_an_admin_listener_says_how_to_turn_it_on() {
    let env = Env::new();
    let cfg = env.path("myelin.yaml");
    std::fs::write(&cfg, "haproxy: {do_reloads: false}\n").unwrap();
    let (code, _, err) = env.myelin_once(&["status", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("the admin listener is off") && err.contains("admin: {bind: 127.0.0.1:9213}"), "{err}");
}

/// `file_output` tells other consumers what discovery found, as Synapse's does: a config that
/// the check refuses (for a reason that has nothing to do with the backends) does not hold it
/// back, while haproxy.cfg stays the last good one.
#[test]
fn file_output_follows_discovery_even_when_the_check_refuses_the_config() {
    let env = Env::new();
    let admin = free_port();
    let cfg = env.path("myelin.yaml");
    // The check refuses any candidate that routes to port 9.
    let check = format!("  check_command: \"! grep -q ':9 ' {}\"\n", env.haproxy_cfg().display());
    std::fs::write(&cfg, config(&env, "web", admin) + &check).unwrap();
    std::fs::write(env.path("backends.yaml"), "- {name: a, host: 127.0.0.1, port: 8}\n").unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    assert!(wait_for(Duration::from_secs(5), || entries(&env, "web") == Some(vec!["a=127.0.0.1:8".to_string()])).is_some(), "{}", myelin.log());
    assert!(std::fs::read_to_string(env.haproxy_cfg()).unwrap().contains("127.0.0.1:8"));

    std::fs::write(env.path("backends.yaml"), "- {name: a, host: 127.0.0.1, port: 8}\n- {name: b, host: 127.0.0.1, port: 9}\n").unwrap();
    let both = Some(vec!["a=127.0.0.1:8".to_string(), "b=127.0.0.1:9".to_string()]);
    assert!(wait_for(Duration::from_secs(5), || entries(&env, "web") == both).is_some(), "{}", myelin.log());
    assert!(wait_for(Duration::from_secs(5), || status(admin)["haproxy"]["last_apply"]["outcome"] == "rejected").is_some(), "{}", status(admin));
    let running = std::fs::read_to_string(env.haproxy_cfg()).unwrap();
    assert!(running.contains("127.0.0.1:8") && !running.contains("127.0.0.1:9"), "{running}");
}
