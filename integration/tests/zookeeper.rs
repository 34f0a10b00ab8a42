//! ZooKeeper discovery end to end: the real myelin binary, real HAProxy (master-worker, runtime
//! API on) and a real ZooKeeper (Debian's, `integration/zookeeper.sh`), all on 127.0.0.1.
//! Instances are registered as Nerve and Finagle do: ephemeral sequential nodes holding JSON.
//! Bounds are generous (the machine is shared); speed is measured by `make bench`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use myelin_integration::zookeeper::{self, nerve, nerve_weighted, server_name, serverset, unique_path, PrivateEnsemble, PrivateZk, Registrar};
use myelin_integration::{free_port, get, load_loop, spray, wait_for, Backend, Env, Proc};

/// Registering sessions that must outlive a ZooKeeper restart on a loaded machine.
const LONG_SESSION: Duration = Duration::from_secs(30);
const SESSION: Duration = Duration::from_secs(10);
const BOUND: Duration = Duration::from_secs(5);

/// HAProxy and myelin on a `zookeeper` (or other) discovery block for service `web`, runtime
/// API on, short drains.
struct Running {
    env: Env,
    _haproxy: Proc,
    myelin: Proc,
}

fn start(discovery: &str) -> Running {
    start_with(discovery, String::new)
}

/// As [`start`]; `context` adds to the failure message (e.g. a private ZooKeeper's log).
fn start_with(discovery: &str, context: impl Fn() -> String) -> Running {
    let env = Env::new();
    let extra = format!("{}  drain_timeout: 1\n", env.runtime_extra());
    let cfg = env.write_config_with(discovery, "", &extra);
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    // The first render already holds what ZooKeeper had; wait for the daemon's own session too.
    assert!(wait_for(Duration::from_secs(15), || myelin.log().contains("Source synced.")).is_some(), "{}\n{}", myelin.log(), context());
    Running { env, _haproxy, myelin }
}

fn zk_discovery(address: &str, path: &str) -> String {
    format!("      method: zookeeper\n      hosts: [\"{address}\"]\n      path: {path}\n")
}

impl Running {
    fn routable(&self) -> BTreeSet<String> {
        self.env.routable_servers().unwrap_or_default().into_iter().collect()
    }

    /// Wait until the servers taking new connections are exactly `want`.
    fn converges(&self, want: &[String], within: Duration) {
        let want: BTreeSet<String> = want.iter().cloned().collect();
        if wait_for(within, || self.routable() == want).is_none() {
            panic!("HAProxy routes {:?}, not {want:?}\n{}", self.routable(), self.myelin.log());
        }
    }

    fn answers(&self, n: usize) -> BTreeSet<String> {
        let (seen, failed) = spray(self.env.frontend_port, n);
        assert_eq!(failed, 0, "{}", self.myelin.log());
        seen
    }

    fn reloads(&self) -> u32 {
        self.env.reloads().unwrap_or_else(|e| panic!("{e}: {}", self.myelin.log()))
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn nerve_nodes_are_routed_and_unrouted_through_the_runtime_api_without_a_reload() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("e2e-nerve");
    let (b1, b2, b3) = (Backend::start("b1"), Backend::start("b2"), Backend::start("b3"));
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&path).unwrap();
    let n1 = reg.register(&path, "b1_", &nerve("b1", b1.port)).unwrap();
    let other = Registrar::connect(&zk, SESSION).unwrap();
    other.register(&path, "b2_", &nerve("b2", b2.port)).unwrap();

    let r = start(&zk_discovery(&zk, &path));
    r.converges(&[server_name("b1", b1.port), server_name("b2", b2.port)], BOUND);
    assert_eq!(r.answers(10), set(&["b1", "b2"]));
    let reloads = r.reloads();

    // Created: in.
    let n3 = reg.register(&path, "b3_", &nerve("b3", b3.port)).unwrap();
    r.converges(&[server_name("b1", b1.port), server_name("b2", b2.port), server_name("b3", b3.port)], BOUND);
    assert_eq!(r.answers(12), set(&["b1", "b2", "b3"]));
    // Rewritten in place with a new weight (as Nerve does): HAProxy's weight follows.
    reg.set_data(&n3, &nerve_weighted("b3", b3.port, 5)).unwrap();
    let weight_of_b3 = || r.env.active_servers("web").unwrap_or_default().into_iter().find(|s| s.0 == server_name("b3", b3.port)).map(|s| s.2);
    assert!(wait_for(BOUND, || weight_of_b3() == Some(5)).is_some(), "{:?}\n{}", weight_of_b3(), r.myelin.log());
    // Deleted: out.
    reg.delete(&n1).unwrap();
    r.converges(&[server_name("b2", b2.port), server_name("b3", b3.port)], BOUND);
    // The registering session closes (Nerve stops): its node goes, and the server with it.
    drop(other);
    r.converges(&[server_name("b3", b3.port)], BOUND);
    assert_eq!(r.answers(5), set(&["b3"]));
    assert_eq!(r.reloads(), reloads, "a membership change reloaded HAProxy\n{}", r.myelin.log());
    reg.delete_tree(&path).unwrap();
}

#[test]
fn serverset_members_are_routed_on_the_chosen_endpoint_without_a_reload() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("e2e-serverset");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&path).unwrap();
    // The service endpoints are ports nothing listens on: only `http` answers.
    reg.register(&path, "member_", &serverset(0, free_port(), a.port)).unwrap();
    let discovery = format!("{}      decode: {{method: serverset, endpoint_name: http}}\n", zk_discovery(&zk, &path));
    let r = start(&discovery);
    r.converges(&[format!("0_127.0.0.1:{}", a.port)], BOUND);
    assert_eq!(r.answers(5), set(&["a"]));
    let reloads = r.reloads();

    // A member that is not alive yet is not routed; one that is, is.
    reg.register(&path, "member_", &serverset(1, free_port(), b.port).replace("ALIVE", "STARTING")).unwrap();
    let m2 = reg.register(&path, "member_", &serverset(2, free_port(), b.port)).unwrap();
    r.converges(&[format!("0_127.0.0.1:{}", a.port), format!("2_127.0.0.1:{}", b.port)], BOUND);
    assert_eq!(r.answers(10), set(&["a", "b"]));
    reg.delete(&m2).unwrap();
    r.converges(&[format!("0_127.0.0.1:{}", a.port)], BOUND);
    assert_eq!(r.reloads(), reloads, "{}", r.myelin.log());
    reg.delete_tree(&path).unwrap();
}

#[test]
fn zookeeper_poll_lists_the_path_every_interval() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("e2e-poll");
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&path).unwrap();
    let n1 = reg.register(&path, "b1_", &nerve("b1", b1.port)).unwrap();
    let discovery = format!("      method: zookeeper_poll\n      hosts: [\"{zk}\"]\n      path: {path}\n      polling_interval_sec: 0.5\n");
    let r = start(&discovery);
    r.converges(&[server_name("b1", b1.port)], BOUND);
    let reloads = r.reloads();
    reg.register(&path, "b2_", &nerve("b2", b2.port)).unwrap();
    reg.delete(&n1).unwrap();
    r.converges(&[server_name("b2", b2.port)], BOUND);
    assert_eq!(r.answers(5), set(&["b2"]));
    assert_eq!(r.reloads(), reloads, "{}", r.myelin.log());
    reg.delete_tree(&path).unwrap();
}

#[test]
fn a_missing_path_is_empty_and_malformed_nodes_are_skipped_and_logged() {
    let zk = zookeeper::shared().unwrap();
    let base = unique_path("e2e-missing");
    let path = format!("{base}/web");
    let r = start(&zk_discovery(&zk, &path));
    // No path: the service has no servers (HAProxy answers 503), and the log says why.
    assert!(wait_for(BOUND, || r.myelin.log().contains("The path does not exist")).is_some(), "{}", r.myelin.log());
    assert_eq!(get(r.env.frontend_port, "/").unwrap().0, 503);

    let good = Backend::start("good");
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&path).unwrap();
    let bad = reg.register(&path, "bad_", "{\"host\": \"127.0.0.1\", \"port\": \"not a port\"}").unwrap();
    let junk = reg.register(&path, "junk_", "this is not JSON").unwrap();
    reg.register(&path, "good_", &nerve("good", good.port)).unwrap();
    r.converges(&[server_name("good", good.port)], BOUND);
    assert_eq!(r.answers(5), set(&["good"]));
    // Each bad node is logged once, by its path.
    let log = r.myelin.log();
    assert!(log.contains(&format!("{junk:?} rejected")) && log.contains("not JSON"), "{log}");
    assert!(wait_for(BOUND, || r.myelin.log().contains("not a port")).is_some(), "{log}");
    assert!(log.contains("The path exists now"), "{log}");
    let _ = bad;
    reg.delete_tree(&base).unwrap();
}

#[test]
fn a_killed_registrar_expires_while_instances_change_and_nothing_is_lost() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("e2e-expiry");
    let (a, b1, b2) = (Backend::start("a"), Backend::start("b1"), Backend::start("b2"));
    // `a` is registered by a process that will be killed: its session is not closed, it
    // expires on the server 2 s after the kill.
    let killed = Registrar::connect_detached(&zk, Duration::from_secs(2)).unwrap();
    killed.ensure_path(&path).unwrap();
    killed.register(&path, "a_", &nerve("a", a.port)).unwrap();
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    let nb1 = reg.register(&path, "b1_", &nerve("b1", b1.port)).unwrap();
    let r = start(&zk_discovery(&zk, &path));
    r.converges(&[server_name("a", a.port), server_name("b1", b1.port)], BOUND);
    let reloads = r.reloads();

    let stop = Arc::new(AtomicBool::new(false));
    let load = load_loop(r.env.frontend_port, Duration::from_millis(10), 5_000, Duration::from_secs(60), stop.clone());
    drop(killed);
    // Meanwhile, instances change.
    reg.register(&path, "b2_", &nerve("b2", b2.port)).unwrap();
    reg.delete(&nb1).unwrap();
    r.converges(&[server_name("b2", b2.port)], Duration::from_secs(15));
    stop.store(true, Ordering::Relaxed);
    let (n, failed, why) = load.join().unwrap();
    assert!(n > 50, "{n} requests");
    assert_eq!(failed, 0, "{why:?}\n{}", r.myelin.log());
    assert_eq!(r.answers(5), set(&["b2"]));
    assert_eq!(r.reloads(), reloads, "{}", r.myelin.log());
    reg.delete_tree(&path).unwrap();
}

/// ZooKeeper goes down (killed) for a few seconds, comes back with its data; later it is
/// replaced by an empty one (every session expired, every node gone) and the instances register
/// again, as Nerve does. Throughout, HAProxy keeps serving every backend it had.
#[test]
fn zookeeper_down_keeps_every_backend_and_a_restarted_zookeeper_converges() {
    let zk = PrivateZk::start().unwrap();
    let path = "/services/web";
    let (b1, b2, b3, b4) = (Backend::start("b1"), Backend::start("b2"), Backend::start("b3"), Backend::start("b4"));
    let reg = Registrar::connect(&zk.address(), LONG_SESSION).unwrap();
    reg.ensure_path(path).unwrap();
    let nb1 = reg.register(path, "b1_", &nerve("b1", b1.port)).unwrap();
    reg.register(path, "b2_", &nerve("b2", b2.port)).unwrap();
    let r = start_with(&zk_discovery(&zk.address(), path), || format!("ZooKeeper's log:\n{}", zk.log()));
    r.converges(&[server_name("b1", b1.port), server_name("b2", b2.port)], BOUND);
    let reloads = r.reloads();
    let stop = Arc::new(AtomicBool::new(false));
    let load = load_loop(r.env.frontend_port, Duration::from_millis(10), 20_000, Duration::from_secs(120), stop.clone());

    // Down for 4 s (shorter than the registering session's 30 s, so it survives): every
    // backend stays.
    zk.kill().unwrap();
    assert!(wait_for(BOUND, || r.myelin.log().contains("keeping the last known backends")).is_some(), "{}\nZooKeeper's log:\n{}", r.myelin.log(), zk.log());
    for _ in 0..4 {
        assert_eq!(r.routable(), set(&[&server_name("b1", b1.port), &server_name("b2", b2.port)]));
        std::thread::sleep(Duration::from_secs(1));
    }
    zk.restart().unwrap();
    // Back: changes made now reach HAProxy once myelin's new session has read the path.
    reg.register(path, "b3_", &nerve("b3", b3.port)).unwrap();
    reg.delete(&nb1).unwrap();
    r.converges(&[server_name("b2", b2.port), server_name("b3", b3.port)], Duration::from_secs(40));

    // Replaced by an empty ZooKeeper: the path is gone, myelin keeps the last backends
    // (use_previous_backends); the instances register again, one of them new.
    zk.wipe().unwrap();
    drop(reg);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(r.routable(), set(&[&server_name("b2", b2.port), &server_name("b3", b3.port)]));
    let reg = Registrar::connect(&zk.address(), LONG_SESSION).unwrap();
    reg.ensure_path(path).unwrap();
    for (name, b) in [("b2", &b2), ("b3", &b3), ("b4", &b4)] {
        reg.register(path, &format!("{name}_"), &nerve(name, b.port)).unwrap();
    }
    r.converges(&[server_name("b2", b2.port), server_name("b3", b3.port), server_name("b4", b4.port)], Duration::from_secs(40));
    stop.store(true, Ordering::Relaxed);
    let (n, failed, why) = load.join().unwrap();
    assert!(n > 100, "{n} requests");
    assert_eq!(failed, 0, "{why:?}\n{}", r.myelin.log());
    assert_eq!(r.answers(12), set(&["b2", "b3", "b4"]));
    assert_eq!(r.reloads(), reloads, "{}", r.myelin.log());
}

/// Retry a registry write for up to 20 s: while an ensemble elects a leader, writes fail.
fn retry<T>(what: &str, mut f: impl FnMut() -> anyhow::Result<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what}: {e:#}"),
        }
    }
}

/// A three-server ensemble loses each member in turn (two keep the quorum) while instances
/// change: myelin's session moves to a live member when its own goes, HAProxy keeps serving,
/// and every change arrives.
#[test]
fn an_ensemble_loses_each_member_in_turn_and_myelin_follows() {
    let zk = PrivateEnsemble::start().unwrap();
    let path = "/services/web";
    let backends: Vec<Backend> = (0..5).map(|i| Backend::start(&format!("b{i}"))).collect();
    let name = |i: usize| server_name(&format!("b{i}"), backends[i].port);
    let reg = Registrar::connect(&zk.hosts().join(","), LONG_SESSION).unwrap();
    reg.ensure_path(path).unwrap();
    let mut nodes: Vec<(usize, String)> = (0..2).map(|i| (i, reg.register(path, &format!("b{i}_"), &nerve(&format!("b{i}"), backends[i].port)).unwrap())).collect();
    let hosts = zk.hosts().iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
    let r = start_with(&format!("      method: zookeeper\n      hosts: [{hosts}]\n      path: {path}\n"), || zk.logs());
    r.converges(&[name(0), name(1)], BOUND);
    let reloads = r.reloads();
    let stop = Arc::new(AtomicBool::new(false));
    let load = load_loop(r.env.frontend_port, Duration::from_millis(10), 30_000, Duration::from_secs(200), stop.clone());

    for member in 0..3 {
        zk.kill(member).unwrap();
        // One instance in, the oldest out.
        let new = member + 2;
        let node = retry("register", || reg.register(path, &format!("b{new}_"), &nerve(&format!("b{new}"), backends[new].port)));
        nodes.push((new, node));
        let (_, oldest) = nodes.remove(0);
        retry("delete", || match reg.delete(&oldest) {
            // A retried delete may find it gone already.
            Err(e) if format!("{e:#}").contains("node not exists") => Ok(()),
            other => other,
        });
        let want: Vec<String> = nodes.iter().map(|(i, _)| name(*i)).collect();
        if wait_for(Duration::from_secs(40), || r.routable() == want.iter().cloned().collect()).is_none() {
            panic!("member {member} down: HAProxy routes {:?}, not {want:?}\n{}\n{}", r.routable(), r.myelin.log(), zk.logs());
        }
        zk.restart(member).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (n, failed, why) = load.join().unwrap();
    assert!(n > 100, "{n} requests");
    assert_eq!(failed, 0, "{why:?}\n{}", r.myelin.log());
    assert!(r.myelin.log().contains("Source disconnected"), "myelin's member was never killed?\n{}", r.myelin.log());
    assert_eq!(r.answers(8), set(&["b3", "b4"]));
    assert_eq!(r.reloads(), reloads, "{}", r.myelin.log());
}

fn synapse_example() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/synapse-zookeeper.json.conf")
}

/// Synapse's example configuration of two ZooKeeper services, as it is: it loads, and renders
/// with its `default_servers` while its ZooKeeper (localhost:2181) cannot be reached. (HAProxy
/// 2.x itself rejects the example's `extra_sections` line `listen stats :3212`: an address on
/// a `listen` line is gone since HAProxy 1.x; that is not the ZooKeeper source's to fix.)
#[test]
fn synapse_example_zookeeper_config_loads_unchanged() {
    let env = Env::new();
    let (code, out, err) = env.myelin_once(&["render", "-c", synapse_example().to_str().unwrap(), "--timeout", "3"]);
    assert_eq!(code, 0, "{out}{err}");
    for want in ["frontend service1\n", "frontend service2\n", "option httpchk /health\n", "server default1 localhost:8423"] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    assert!(err.contains("zookeeper localhost:2181 is unreachable"), "{err}");
}

/// The same services routing: their `discovery` and `haproxy` sections unchanged but for the
/// addresses this machine gives (ZooKeeper's port, with a chroot of the test's own, and free
/// listening ports); the top-level `haproxy` section is the test harness's.
#[test]
fn synapse_example_zookeeper_services_route() {
    let zk = zookeeper::shared().unwrap();
    let chroot = unique_path("e2e-synapse");
    let env = Env::new();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(synapse_example()).unwrap()).unwrap();
    let mut ports = Vec::new();
    for (i, (_, svc)) in cfg["services"].as_object_mut().unwrap().iter_mut().enumerate() {
        assert_eq!(svc["discovery"]["hosts"], serde_json::json!(["localhost:2181"]));
        svc["discovery"]["hosts"] = serde_json::json!([format!("{zk}{chroot}")]);
        // The harness waits for HAProxy on its frontend port.
        let port = if i == 0 { env.frontend_port } else { free_port() };
        svc["haproxy"]["port"] = port.into();
        svc["haproxy"]["bind_address"] = "127.0.0.1".into();
        ports.push(port);
    }
    cfg["haproxy"] = serde_json::json!({
        "config_file_path": env.haproxy_cfg(),
        "reload_command": format!("kill -USR2 $(cat {})", env.path("haproxy.pid").display()),
        "socket_file_path": env.path("haproxy.sock"),
        "master_socket_path": env.path("master.sock"),
        "global": [format!("stats socket {} mode 600 level admin", env.path("haproxy.sock").display())],
        "defaults": ["mode http", "timeout connect 2s", "timeout client 10s", "timeout server 10s", "retries 3", "option redispatch"],
    });
    let path = env.path("synapse.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();

    // Backends whose answers contain `OK`, as service1's health check expects.
    let (s1, s2) = (Backend::start("OK service1"), Backend::start("OK service2"));
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&format!("{chroot}/services/service1")).unwrap();
    reg.ensure_path(&format!("{chroot}/services/service2")).unwrap();
    reg.register(&format!("{chroot}/services/service1"), "i-1_", &nerve("i-1", s1.port)).unwrap();
    reg.register(&format!("{chroot}/services/service2"), "i-2_", &nerve("i-2", s2.port)).unwrap();

    let (code, out, err) = env.myelin_once(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let _haproxy = env.start_haproxy(&path).unwrap();
    let myelin = env.start_myelin(&path).unwrap();
    for (port, want) in ports.iter().zip(["OK service1", "OK service2"]) {
        // Health checks (`check inter 2s rise 3`) must pass before a server takes traffic.
        let ok = wait_for(Duration::from_secs(20), || get(*port, "/").is_ok_and(|(s, b)| s == 200 && b == want));
        assert!(ok.is_some(), "{want} never answered on {port}: {:?}\n{}", get(*port, "/"), myelin.log());
    }
    reg.delete_tree(&chroot).unwrap();
}
