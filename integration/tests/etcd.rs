//! etcd discovery end to end: a real three-member etcd cluster (integration/etcd-cluster.sh),
//! the real binary and real HAProxy, all on 127.0.0.1. Each test uses its own key prefix;
//! tests that stop members or turn authentication on run alone and restore the cluster.

use std::time::Duration;

use anyhow::Result;
use myelin_integration::etcd::{Cluster, Etcd};
use myelin_integration::{get, wait_for, Backend, Env, Proc};

/// Generous: changes arrive in milliseconds (see `make bench`), the bound only keeps a broken
/// build from hanging.
const BOUND: Duration = Duration::from_secs(5);

/// Nerve's JSON for a test backend.
fn nerve(b: &Backend) -> String {
    format!(r#"{{"host":"127.0.0.1","port":{},"name":"{}","weight":1,"labels":{{"az":"a"}}}}"#, b.port, b.name)
}

struct Running {
    env: Env,
    admin: u16,
    prefix: String,
    _haproxy: Proc,
    myelin: Proc,
}

impl Running {
    fn key(&self, id: &str) -> String {
        format!("{}/{id}", self.prefix)
    }

    fn routed(&self) -> Vec<String> {
        let mut v = self.env.routable_servers().unwrap_or_default();
        v.sort();
        v
    }

    /// Wait until HAProxy routes exactly `names`.
    fn converges(&self, names: &[&str]) -> bool {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_for(BOUND, || self.routed() == want).is_some()
    }

    fn status(&self) -> serde_json::Value {
        let (_, body) = get(self.admin, "/status").unwrap_or((0, "{}".into()));
        serde_json::from_str(&body).unwrap_or_default()
    }

    fn reloads(&self) -> u32 {
        self.env.reloads().unwrap_or_else(|e| panic!("{e}: {}", self.myelin.log()))
    }
}

/// Register `initial` under a fresh prefix, start HAProxy and myelin (runtime API, admin
/// listener) on `endpoints`, and wait until they are routed.
fn running(cluster: &Cluster, test: &str, etcd: &mut Etcd, initial: &[&Backend], raw: &[(&str, &str)]) -> Running {
    let prefix = format!("/myelin-test/{test}-{}", std::process::id());
    etcd.delete_prefix(&format!("{prefix}/")).unwrap();
    for b in initial {
        etcd.put(&format!("{prefix}/{}", b.name), &nerve(b)).unwrap();
    }
    for (id, value) in raw {
        etcd.put(&format!("{prefix}/{id}"), value).unwrap();
    }
    let env = Env::new();
    let admin = myelin_integration::free_port();
    let discovery = format!("      method: etcd\n      endpoints: {}\n      path: {prefix}\n", cluster.yaml_endpoints());
    let extra = format!("{}  drain_timeout: 1\nadmin:\n  bind: {admin}\n", env.runtime_extra());
    let cfg = env.write_config_with(&discovery, "", &extra);
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    let r = Running { env, admin, prefix, _haproxy, myelin };
    let names: Vec<&str> = initial.iter().map(|b| b.name.as_str()).collect();
    assert!(r.converges(&names), "initial set not routed: {:?}\n{}", r.routed(), r.myelin.log());
    // HAProxy started with what `myelin render` read; wait for the daemon's own watch.
    assert!(wait_for(BOUND, || r.status()["services"]["web"]["watcher"] == "synced").is_some(), "{}", r.status());
    r
}

#[test]
fn put_delete_and_lease_expiry_without_a_reload() {
    let cluster = Cluster::get();
    let _g = cluster.shared();
    let mut etcd = cluster.client().unwrap();
    let (a, b, c, d) = (Backend::start("a"), Backend::start("b"), Backend::start("c"), Backend::start("d"));
    let r = running(cluster, "put-delete", &mut etcd, &[&a, &b], &[]);
    let reloads = r.reloads();

    etcd.put(&r.key("c"), &nerve(&c)).unwrap();
    assert!(r.converges(&["a", "b", "c"]), "{:?}\n{}", r.routed(), r.myelin.log());
    etcd.delete(&r.key("a")).unwrap();
    assert!(r.converges(&["b", "c"]), "{:?}\n{}", r.routed(), r.myelin.log());
    // A plain host:port value (no name: the server is called host:port).
    etcd.put(&r.key("plain"), &format!("127.0.0.1:{}", d.port)).unwrap();
    let plain = format!("127.0.0.1:{}", d.port);
    assert!(r.converges(&["b", "c", &plain]), "{:?}\n{}", r.routed(), r.myelin.log());
    etcd.delete(&r.key("plain")).unwrap();
    // Registered with a lease nobody keeps alive: routed, then gone when it expires.
    let lease = etcd.lease(2).unwrap();
    etcd.put_with_lease(&r.key("d"), &nerve(&d), lease).unwrap();
    assert!(r.converges(&["b", "c", "d"]), "{:?}\n{}", r.routed(), r.myelin.log());
    assert!(wait_for(Duration::from_secs(10), || r.routed() == ["b", "c"]).is_some(), "lease expiry: {:?}\n{}", r.routed(), r.myelin.log());
    // Traffic reaches what is routed.
    let (seen, failed) = myelin_integration::spray(r.env.frontend_port, 20);
    assert_eq!(failed, 0);
    assert!(seen.iter().all(|s| s == "b" || s == "c"), "{seen:?}");
    assert_eq!(r.reloads(), reloads, "membership changes reloaded HAProxy");
    let s = r.status();
    assert_eq!(s["services"]["web"]["watcher"], "synced", "{s}");
    assert_eq!(s["services"]["web"]["method"], "etcd", "{s}");
}

#[test]
fn malformed_values_are_skipped_and_logged_the_rest_routed() {
    let cluster = Cluster::get();
    let _g = cluster.shared();
    let mut etcd = cluster.client().unwrap();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    // Present before myelin starts: the first read skips it.
    let mut r = running(cluster, "malformed", &mut etcd, &[&a], &[("garbage", "not a registration")]);
    assert!(wait_for(BOUND, || r.myelin.log().contains("garbage")).is_some(), "the bad key is not named: {}", r.myelin.log());
    // Arriving later: skipped, the rest still follows.
    etcd.put(&r.key("broken-json"), r#"{"host":"127.0.0.1","port":"#).unwrap();
    etcd.put(&r.key("b"), &nerve(&b)).unwrap();
    assert!(r.converges(&["a", "b"]), "{:?}\n{}", r.routed(), r.myelin.log());
    assert!(wait_for(BOUND, || r.myelin.log().contains("broken-json")).is_some(), "{}", r.myelin.log());
    // A registration that turns malformed stops being routed; the others stay.
    etcd.put(&r.key("a"), "{}").unwrap();
    assert!(r.converges(&["b"]), "{:?}\n{}", r.routed(), r.myelin.log());
    let s = r.status();
    let last = s["services"]["web"]["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(last.contains(&r.key("a")) && last.contains("`host` is required"), "{s}");
    assert!(r.myelin.is_running(), "malformed values stopped myelin");
}

#[test]
fn compaction_past_the_watch_revision_reads_again_without_missing_a_change() {
    let cluster = Cluster::get();
    let _g = cluster.shared();
    let mut etcd = cluster.client().unwrap();
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let r = running(cluster, "compaction", &mut etcd, &[&a, &b], &[]);
    // myelin stops reading (SIGSTOP): etcd buffers its watch events until the watch falls
    // behind; then the changes and the history are compacted away.
    r.myelin.signal("STOP");
    etcd.delete(&r.key("a")).unwrap();
    etcd.put(&r.key("c"), &nerve(&c)).unwrap();
    // Fill the watch: 800 puts of a 60 kB registration (48 MB, well over what the connection's
    // windows, the socket buffers and etcd's per-watch queue hold), then gone again.
    let pad = "x".repeat(60_000);
    let filler = format!(r#"{{"host":"127.0.0.1","port":{},"name":"filler","pad":"{pad}"}}"#, c.port);
    etcd.put_many((0..800).map(|_| (r.key("filler"), filler.clone())).collect()).unwrap();
    etcd.delete(&r.key("filler")).unwrap();
    let rev = etcd.revision().unwrap();
    etcd.compact(rev).unwrap();
    r.myelin.signal("CONT");
    assert!(r.converges(&["b", "c"]), "{:?}\n{}", r.routed(), r.myelin.log());
    assert!(
        wait_for(BOUND, || r.myelin.log().contains("compacted past the watch revision")).is_some(),
        "the watch was not compacted: {}",
        r.myelin.log()
    );
    // And it follows on from the new revision.
    etcd.put(&r.key("a"), &nerve(&a)).unwrap();
    assert!(r.converges(&["a", "b", "c"]), "{:?}\n{}", r.routed(), r.myelin.log());
}

/// Member 1, the one myelin talks to first, is killed: myelin moves to another member and
/// what changed meanwhile arrives.
#[test]
fn the_member_in_use_is_killed_myelin_fails_over() {
    let cluster = Cluster::get();
    let _g = cluster.exclusive();
    let mut etcd = cluster.client().unwrap();
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let r = running(cluster, "failover", &mut etcd, &[&a, &b], &[]);
    let reloads = r.reloads();
    let used = cluster.connected_member(r.myelin.pid());
    assert_eq!(used, Some(1), "myelin should talk to the first endpoint");
    let result = (|| -> Result<()> {
        cluster.kill(1)?;
        // Changes while myelin reconnects, through the surviving members.
        let mut rest = Etcd::connect(&cluster.endpoints[1..], None)?;
        rest.delete(&r.key("a"))?;
        rest.put(&r.key("c"), &nerve(&c))?;
        anyhow::ensure!(r.converges(&["b", "c"]), "{:?}\n{}", r.routed(), r.myelin.log());
        let now = cluster.connected_member(r.myelin.pid());
        anyhow::ensure!(matches!(now, Some(2 | 3)), "myelin is connected to {now:?}");
        // And it keeps following there.
        rest.put(&r.key("a"), &nerve(&a))?;
        anyhow::ensure!(r.converges(&["a", "b", "c"]), "{:?}\n{}", r.routed(), r.myelin.log());
        Ok(())
    })();
    cluster.restore().unwrap();
    result.unwrap();
    assert_eq!(r.reloads(), reloads);
}

/// Every member stopped: HAProxy keeps every backend and /status says what is wrong; the
/// cluster back with keys changed: myelin converges.
#[test]
fn all_members_down_keeps_the_backends_then_converges() {
    let cluster = Cluster::get();
    let _g = cluster.exclusive();
    let mut etcd = cluster.client().unwrap();
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let r = running(cluster, "outage", &mut etcd, &[&a, &b], &[]);
    drop(etcd);
    let result = (|| -> Result<()> {
        for n in 1..=3 {
            cluster.kill(n)?;
        }
        let disconnected = || r.status()["services"]["web"]["watcher"] == "disconnected";
        anyhow::ensure!(wait_for(BOUND, disconnected).is_some(), "{}", r.status());
        // Down for a while (several reopenings): nothing changes in HAProxy.
        std::thread::sleep(Duration::from_secs(3));
        anyhow::ensure!(r.routed() == ["a", "b"], "backends lost while etcd is down: {:?}", r.routed());
        let (_, failed) = myelin_integration::spray(r.env.frontend_port, 10);
        anyhow::ensure!(failed == 0, "{failed} requests failed while etcd was down");
        let s = r.status();
        let last = s["services"]["web"]["last_error"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(last.contains("etcd") && (last.contains("no member answered") || last.contains("unreachable")), "{s}");
        // Back, and changed at once (before myelin's next attempt, which backs off).
        cluster.restore()?;
        let mut etcd = cluster.client()?;
        etcd.delete(&r.key("a"))?;
        etcd.put(&r.key("c"), &nerve(&c))?;
        anyhow::ensure!(wait_for(Duration::from_secs(20), || r.routed() == ["b", "c"]).is_some(), "{:?}\n{}", r.routed(), r.myelin.log());
        anyhow::ensure!(r.myelin.log().contains("etcd reachable again"), "{}", r.myelin.log());
        Ok(())
    })();
    cluster.restore().unwrap();
    result.unwrap();
}

/// The member in use loses its quorum (the two others killed): it has no leader, refuses to
/// serve, and HAProxy keeps every backend; with the quorum back, changes arrive.
#[test]
fn no_quorum_keeps_the_backends() {
    let cluster = Cluster::get();
    let _g = cluster.exclusive();
    let mut etcd = cluster.client().unwrap();
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let r = running(cluster, "quorum", &mut etcd, &[&a, &b], &[]);
    drop(etcd);
    let result = (|| -> Result<()> {
        anyhow::ensure!(cluster.connected_member(r.myelin.pid()) == Some(1));
        cluster.kill(2)?;
        cluster.kill(3)?;
        let no_leader = || r.status()["services"]["web"]["last_error"].as_str().is_some_and(|e| e.contains("no leader"));
        anyhow::ensure!(wait_for(Duration::from_secs(10), no_leader).is_some(), "{}\n{}", r.status(), r.myelin.log());
        anyhow::ensure!(r.routed() == ["a", "b"], "backends lost without quorum: {:?}", r.routed());
        cluster.restore()?;
        let mut etcd = cluster.client()?;
        etcd.put(&r.key("c"), &nerve(&c))?;
        anyhow::ensure!(wait_for(Duration::from_secs(20), || r.routed() == ["a", "b", "c"]).is_some(), "{:?}\n{}", r.routed(), r.myelin.log());
        Ok(())
    })();
    cluster.restore().unwrap();
    result.unwrap();
}

/// Leadership moves twice (`etcdctl move-leader`) while myelin watches: changes made around each
/// move arrive, none is lost.
#[test]
fn leader_changes_lose_nothing() {
    let cluster = Cluster::get();
    let _g = cluster.exclusive();
    let mut etcd = cluster.client().unwrap();
    let pool: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("n{i}"))).collect();
    let r = running(cluster, "leader", &mut etcd, &[&pool[0]], &[]);
    let eps = &cluster.endpoints;
    let status = || -> Vec<(String, u64, u64)> {
        let out = Etcd::etcdctl(eps, &["endpoint", "status", "-w", "json"]).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["Endpoint"].as_str()?.to_owned(), e["Status"]["header"]["member_id"].as_u64()?, e["Status"]["leader"].as_u64()?)))
            .collect()
    };
    let mut names = vec!["n0".to_owned()];
    for (round, b) in pool[1..].iter().enumerate() {
        let members = status();
        let (leader_ep, leader) = members.iter().find(|m| m.1 == m.2).map(|m| (m.0.clone(), m.1)).expect("a leader");
        let target = members.iter().find(|m| m.1 != leader).map(|m| m.1).unwrap();
        etcd.put(&r.key(&b.name), &nerve(b)).unwrap();
        Etcd::etcdctl(&[leader_ep], &["move-leader", &format!("{target:x}")]).unwrap();
        names.push(b.name.clone());
        if round == 1 {
            etcd.delete(&r.key("n0")).unwrap();
            names.retain(|n| n != "n0");
        }
        let want: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(r.converges(&want), "round {round}: {:?}\n{}", r.routed(), r.myelin.log());
        assert!(status().iter().all(|m| m.2 == target), "leadership did not move");
    }
}

/// Authentication on: myelin with the right password routes; after the password changes and
/// myelin has to reconnect, the error is clear and the backends stay.
#[test]
fn authentication_and_a_wrong_password() {
    let cluster = Cluster::get();
    let _g = cluster.exclusive();
    let eps = &cluster.endpoints;
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut etcd = cluster.client().unwrap();
    let prefix = format!("/myelin-test/auth-{}", std::process::id());
    etcd.put(&format!("{prefix}/a"), &nerve(&a)).unwrap();
    etcd.put(&format!("{prefix}/b"), &nerve(&b)).unwrap();
    Etcd::etcdctl(eps, &["user", "add", "root:first-pw"]).unwrap();
    Etcd::etcdctl(eps, &["user", "grant-role", "root", "root"]).unwrap();
    Etcd::etcdctl(eps, &["auth", "enable"]).unwrap();
    let result = (|| -> Result<()> {
        let env = Env::new();
        let admin = myelin_integration::free_port();
        let discovery = format!("      method: etcd\n      endpoints: {}\n      path: {prefix}\n      user: root\n      password: first-pw\n", cluster.yaml_endpoints());
        let extra = format!("{}admin:\n  bind: {admin}\n", env.runtime_extra());
        let cfg = env.write_config_with(&discovery, "", &extra);
        let (_h, myelin) = env.start(&cfg)?;
        let routed = || {
            let mut v = env.routable_servers().unwrap_or_default();
            v.sort();
            v
        };
        anyhow::ensure!(wait_for(BOUND, || routed() == ["a", "b"]).is_some(), "{:?}\n{}", routed(), myelin.log());
        // The password changes; myelin's connection breaks (its member is killed), and it
        // must authenticate again.
        // (etcdctl reads the new password from stdin with --interactive=false.)
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo second-pw | ETCDCTL_API=3 etcdctl --endpoints {} --user root:first-pw user passwd root --interactive=false", eps.join(",")))
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let member = cluster.connected_member(myelin.pid()).unwrap_or(1);
        cluster.kill(member)?;
        let status = || -> serde_json::Value { get(admin, "/status").ok().and_then(|(_, b)| serde_json::from_str(&b).ok()).unwrap_or_default() };
        let auth_error = || status()["services"]["web"]["last_error"].as_str().is_some_and(|e| e.contains("authentication failed"));
        anyhow::ensure!(wait_for(Duration::from_secs(10), auth_error).is_some(), "{}\n{}", status(), myelin.log());
        anyhow::ensure!(myelin.log().contains("authentication failed"), "{}", myelin.log());
        eprintln!("status after the password change: {}", status()["services"]["web"]["last_error"]);
        std::thread::sleep(Duration::from_secs(1));
        anyhow::ensure!(routed() == ["a", "b"], "backends lost on an authentication failure: {:?}", routed());
        let (_, failed) = myelin_integration::spray(env.frontend_port, 10);
        anyhow::ensure!(failed == 0);
        Ok(())
    })();
    cluster.restore().unwrap();
    let off = Etcd::etcdctl(eps, &["--user", "root:second-pw", "auth", "disable"]).or_else(|_| Etcd::etcdctl(eps, &["--user", "root:first-pw", "auth", "disable"]));
    let _ = Etcd::etcdctl(eps, &["user", "delete", "root"]);
    off.unwrap();
    result.unwrap();
}

#[test]
fn synapse_host_and_port_form() {
    let cluster = Cluster::get();
    let _g = cluster.shared();
    let mut etcd = cluster.client().unwrap();
    let a = Backend::start("a");
    let prefix = format!("/myelin-test/synapse-{}", std::process::id());
    etcd.put(&format!("{prefix}/a"), &nerve(&a)).unwrap();
    let env = Env::new();
    let (host, port) = cluster.endpoints[1].trim_start_matches("http://").rsplit_once(':').unwrap();
    let discovery = format!("      method: etcd\n      host: {host}\n      port: {port}\n      path: {prefix}\n");
    let cfg = env.write_config_with(&discovery, "", &env.runtime_extra());
    let (code, out, err) = env.myelin_once(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (_h, myelin) = env.start(&cfg).unwrap();
    assert!(wait_for(BOUND, || env.routable_servers().unwrap_or_default() == ["a"]).is_some(), "{}", myelin.log());
}

/// TLS with client certificates, on a single-member etcd of this test's own (the suite's
/// cluster stays plain): myelin reads and follows through TLS; without a client certificate the
/// member refuses it, with a clear error.
#[test]
fn tls_with_client_certificates() {
    let env = Env::new();
    let dir = env.path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=myelin etcd test CA' -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj '/CN=127.0.0.1' -keyout server-key.pem -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile server.ext -out server.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj '/CN=myelin' -keyout client-key.pem -out client.csr 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile client.ext -out client.pem 2>/dev/null");
    let (client_port, peer_port) = (
        myelin_integration::free_port(),
        myelin_integration::free_port(),
    );
    let url = format!("https://127.0.0.1:{client_port}");
    let log = std::fs::File::create(env.path("etcd-tls.log")).unwrap();
    let child = std::process::Command::new("etcd")
        .args(["--name", "tls", "--data-dir"])
        .arg(env.path("etcd-tls.data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ])
        .args([
            "--initial-cluster",
            &format!("tls=http://127.0.0.1:{peer_port}"),
        ])
        .arg("--cert-file")
        .arg(dir.join("server.pem"))
        .arg("--key-file")
        .arg(dir.join("server-key.pem"))
        .arg("--trusted-ca-file")
        .arg(dir.join("ca.pem"))
        .args(["--client-cert-auth", "--logger", "zap"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _etcd = Proc {
        child,
        log: env.path("etcd-tls.log"),
    };
    let etcdctl = |args: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ETCDCTL_API=3 etcdctl --endpoints {url} --cacert ca.pem --cert client.pem --key client-key.pem --command-timeout=2s {args}"))
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(20), || etcdctl("endpoint health")
            .status
            .success())
        .is_some(),
        "{}",
        _etcd.log()
    );
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    assert!(etcdctl(&format!("put /tls/web/a '{}'", nerve(&a)))
        .status
        .success());

    let discovery = format!(
        "      method: etcd\n      endpoints: [{url}]\n      path: /tls/web\n      tls:\n        ca_file: tls/ca.pem\n        cert_file: tls/client.pem\n        key_file: tls/client-key.pem\n"
    );
    let cfg = env.write_config_with(&discovery, "", &env.runtime_extra());
    let (_h, myelin) = env.start(&cfg).unwrap();
    let routed = || {
        let mut v = env.routable_servers().unwrap_or_default();
        v.sort();
        v
    };
    assert!(
        wait_for(BOUND, || routed() == ["a"]).is_some(),
        "{:?}\n{}",
        routed(),
        myelin.log()
    );
    assert!(etcdctl(&format!("put /tls/web/b '{}'", nerve(&b)))
        .status
        .success());
    assert!(
        wait_for(BOUND, || routed() == ["a", "b"]).is_some(),
        "{:?}\n{}",
        routed(),
        myelin.log()
    );

    // Without the client certificate: refused, and `render` says so.
    let env2 = Env::new();
    std::fs::create_dir_all(env2.path("tls")).unwrap();
    std::fs::copy(dir.join("ca.pem"), env2.path("tls/ca.pem")).unwrap();
    let discovery = format!("      method: etcd\n      endpoints: [{url}]\n      path: /tls/web\n      tls: {{ca_file: tls/ca.pem}}\n      timeout: 2\n");
    let cfg2 = env2.write_config_with(&discovery, "", "");
    let (_code, out, err) = env2.myelin_once(&["render", "-c", cfg2.to_str().unwrap()]);
    assert!(
        !out.contains("server a "),
        "rendered without a client certificate: {out}"
    );
    assert!(err.contains(&format!("etcd {url}")), "{err}");
    eprintln!(
        "render without a client certificate: {}",
        err.lines()
            .filter(|l| l.contains("etcd"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
}
