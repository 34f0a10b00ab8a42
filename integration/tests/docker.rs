//! Docker discovery end to end: a real Docker engine (integration/docker-engine.sh), real
//! HAProxy in master-worker mode, the real myelin binary. Containers publish on 127.0.0.1 only;
//! every request goes to 127.0.0.1.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use myelin_integration::docker::{Engine, TcpFront};
use myelin_integration::{get, spray, wait_for, Env};

const CHECKS: &str = "      listen: [option httpchk GET /]\n";

fn answers(port: u16, n: usize) -> BTreeSet<String> {
    spray(port, n).0.into_iter().map(|b| b.trim().to_owned()).collect()
}

/// The pid of HAProxy's current worker: it changes at every reload.
fn worker_pid(env: &Env) -> String {
    let info = env.stats_cli("show info").unwrap();
    info.lines().find_map(|l| l.strip_prefix("Pid: ")).unwrap_or_else(|| panic!("no pid in {info}")).to_owned()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn containers_follow_start_and_stop() {
    let engine = Engine::get().unwrap();
    let env = Env::new();
    let cfg = env.write_config_with(&engine.discovery("follow"), CHECKS, "");
    let c1 = engine.run_published("follow", &[]).unwrap();
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    let port = env.frontend_port;

    // One container: answers through HAProxy (it was there at start-up).
    assert_eq!(get(port, "/").unwrap().1.trim(), c1.id);

    // A second one: both answer, soon after `docker run` returns.
    let t0 = Instant::now();
    let c2 = engine.run_published("follow", &[]).unwrap();
    let ran = t0.elapsed();
    let took = wait_for(Duration::from_secs(5), || answers(port, 4).contains(&c2.id));
    let took = took.unwrap_or_else(|| panic!("the second container was never routed: {}", myelin.log()));
    eprintln!("docker run took {ran:?}; routed {took:?} after it returned");
    let (seen, failed) = spray(port, 20);
    assert_eq!((seen.into_iter().map(|b| b.trim().to_owned()).collect::<BTreeSet<_>>(), failed), (set(&[&c1.id, &c2.id]), 0));

    // `docker kill -s HUP` is a reload, not a stop: it stays in rotation.
    engine.docker(&["kill", "-s", "HUP", &c2.id]).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(answers(port, 20), set(&[&c1.id, &c2.id]), "{}", myelin.log());

    // Stop one: only the other answers, and no request failed on the way.
    let name1 = c1.name().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let id1 = c1.id.clone();
    let stopper = std::thread::spawn(move || {
        let t = Instant::now();
        let r = Engine::docker_unlocked(&["stop", "-t", "3", &id1]);
        stop_tx.send(t.elapsed()).unwrap();
        r
    });
    let out = wait_for(Duration::from_secs(3), || env.live_servers().is_ok_and(|s| !s.contains(&name1)));
    assert!(out.is_some(), "still in rotation: {:?}\n{}", env.live_servers(), myelin.log());
    eprintln!("out of rotation {out:?} after `docker stop` started");
    let (seen, failed) = spray(port, 20);
    assert_eq!((seen.into_iter().map(|b| b.trim().to_owned()).collect::<BTreeSet<_>>(), failed), (set(&[&c2.id]), 0));
    stopper.join().unwrap().unwrap();
    assert!(stop_rx.recv().unwrap() >= Duration::from_secs(2), "busybox httpd should ignore SIGTERM for the whole timeout");

    // A container with a healthcheck is routed once healthy, not before.
    let c3 = engine
        .run_published("follow", &["--health-cmd", "/bin/busybox wget -q -O /dev/null http://127.0.0.1:8000/", "--health-interval", "1s"])
        .unwrap();
    let name3 = c3.name().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!std::fs::read_to_string(env.haproxy_cfg()).unwrap().contains(&name3), "routed before it was healthy");
    assert!(wait_for(Duration::from_secs(10), || answers(port, 4).contains(&c3.id)).is_some(), "{}", myelin.log());
}

#[test]
fn zero_failed_requests_while_containers_stop_and_are_replaced() {
    churn("churn", false);
}

/// The same through HAProxy's runtime API: a stopping container is drained, not reloaded away.
#[test]
fn zero_failed_requests_while_containers_stop_and_are_replaced_runtime_api() {
    churn("churn-rt", true);
}

fn churn(label: &str, runtime: bool) {
    let engine = Engine::get().unwrap();
    let env = Env::new();
    let extra = if runtime { env.runtime_extra() } else { String::new() };
    let cfg = env.write_config_with(&engine.discovery(label), CHECKS, &extra);
    let mut live: Vec<_> = (0..3).map(|_| engine.run_published(label, &[]).unwrap()).collect();
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    let port = env.frontend_port;
    let ids: BTreeSet<String> = live.iter().map(|c| c.id.clone()).collect();
    assert!(wait_for(Duration::from_secs(10), || answers(port, 12) == ids).is_some(), "{}", myelin.log());

    // ~50 requests/s, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let load = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let t0 = Instant::now();
        for i in 0..15_000u32 {
            if s.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(240) {
                break;
            }
            match get(port, "/") {
                Ok((200, _)) => ok += 1,
                other => failed.push(format!("request {i} at {:?}: {other:?}", t0.elapsed())),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    });

    let t0 = Instant::now();
    for round in 0..10 {
        // `docker stop` the oldest (its whole 3 s timeout: PID-1 httpd ignores SIGTERM), then a
        // replacement, routed before the next round.
        let old = live.remove(0);
        old.stop(3).unwrap();
        drop(old);
        let new = engine.run_published(label, &[]).unwrap();
        let routed = wait_for(Duration::from_secs(10), || env.live_servers().is_ok_and(|s| s.len() == 3) && answers(port, 6).contains(&new.id));
        assert!(routed.is_some(), "round {round}: replacement not routed: {:?}\n{}", env.live_servers(), myelin.log());
        live.push(new);
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    eprintln!("10 stops in {:?}: {ok} requests served, {} failed", t0.elapsed(), failed.len());
    assert!(failed.is_empty(), "failed requests: {failed:#?}\n{}", myelin.log());
    assert!(ok >= 500, "only {ok} requests were sent");
    if runtime {
        let log = myelin.log();
        assert!(!log.contains("Reloaded HAProxy"), "a membership change reloaded HAProxy:\n{log}");
        assert!(log.contains("Drained and deleted a server"), "{log}");
    }
}

#[test]
fn haproxy_keeps_serving_while_the_engine_is_down_and_resyncs_when_it_is_back() {
    let engine = Engine::get().unwrap();
    let env = Env::new();
    // Published ports go through Docker's userland proxy (the engine runs without iptables),
    // which stops with the daemon: these containers listen on the host's loopback themselves,
    // so they keep serving while the daemon is down (live-restore keeps them running).
    let cfg = env.write_config_with(&engine.discovery("down"), CHECKS, "");
    let host_net = |answer: &str| {
        let p = myelin_integration::free_port().to_string();
        let (listen, ans) = (format!("LISTEN=127.0.0.1:{p}"), format!("ANSWER={answer}"));
        engine.run(&["--network", "host", "-e", &listen, "-e", &ans, "-l", &format!("myelin.port={p}"), "-l", "myelin.test=down"]).unwrap()
    };
    let _a = host_net("alpha");
    let _b = host_net("beta");
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    let port = env.frontend_port;
    assert!(wait_for(Duration::from_secs(10), || answers(port, 8) == set(&["alpha", "beta"])).is_some(), "{}", myelin.log());
    // HAProxy may serve them from the config it started with: the engine goes down only once
    // myelin has them from it.
    assert!(wait_for(Duration::from_secs(10), || myelin.log().contains("Source synced.")).is_some(), "{}", myelin.log());
    let before = std::fs::read_to_string(env.haproxy_cfg()).unwrap();
    let worker = worker_pid(&env);

    engine.stop_daemon().unwrap();
    assert!(wait_for(Duration::from_secs(10), || myelin.log().contains("keeping the last known backends")).is_some(), "{}", myelin.log());
    // Let a few reconnections fail.
    std::thread::sleep(Duration::from_secs(2));
    let (seen, failed) = spray(port, 20);
    assert_eq!((seen.into_iter().map(|b| b.trim().to_owned()).collect::<BTreeSet<_>>(), failed), (set(&["alpha", "beta"]), 0));
    assert_eq!(std::fs::read_to_string(env.haproxy_cfg()).unwrap(), before, "haproxy.cfg changed while the engine was down");
    assert_eq!(worker_pid(&env), worker, "HAProxy was reloaded while the engine was down");
    // Reported once, not at every retry.
    let warned = myelin.log().lines().filter(|l| l.contains("WARN") && l.contains("is unreachable")).count();
    assert!(warned <= 1, "{}", myelin.log());

    engine.start_daemon().unwrap();
    let _c = host_net("gamma");
    let back = wait_for(Duration::from_secs(40), || answers(port, 9).contains("gamma"));
    assert!(back.is_some(), "not routed after the engine came back: {}", myelin.log());
    eprintln!("a new container was routed {back:?} after the engine came back");
    assert_eq!(answers(port, 20), set(&["alpha", "beta", "gamma"]));
}

#[test]
fn hostile_labels_are_rejected_and_the_others_keep_serving() {
    let engine = Engine::get().unwrap();
    let env = Env::new();
    let cfg = env.write_config_with(&engine.discovery("hostile"), CHECKS, "");
    let good = engine.run_published("hostile", &[]).unwrap();
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    let port = env.frontend_port;
    assert!(wait_for(Duration::from_secs(10), || answers(port, 4).contains(&good.id)).is_some(), "{}", myelin.log());

    let evil = engine.run_published("hostile", &["-l", "myelin.name=evil\n  server injected 127.0.0.1:1"]).unwrap();
    let hash = engine.run_published("hostile", &["-l", "myelin.name=web#1"]).unwrap();
    let huge = engine.run_published("hostile", &["-l", "myelin.port=99999999", "--name", "huge-port"]).unwrap();
    let heavy = engine.run_published("hostile", &["-l", "myelin.weight=100000", "--name", "heavy"]).unwrap();
    let good2 = engine.run_published("hostile", &[]).unwrap();
    assert!(wait_for(Duration::from_secs(10), || answers(port, 6).contains(&good2.id)).is_some(), "{}", myelin.log());
    assert!(wait_for(Duration::from_secs(5), || myelin.log().matches("Rejected a discovery record").count() >= 4).is_some(), "{}", myelin.log());
    let (seen, failed) = spray(port, 20);
    assert_eq!((seen.into_iter().map(|b| b.trim().to_owned()).collect::<BTreeSet<_>>(), failed), (set(&[&good.id, &good2.id]), 0));
    let text = std::fs::read_to_string(env.haproxy_cfg()).unwrap();
    for bad in ["injected", "evil", "web#1", "99999999", "huge-port", "heavy"] {
        assert!(!text.contains(bad), "{bad} reached haproxy.cfg:\n{text}");
    }
    let log = myelin.log();
    assert!(log.contains("server=huge-port") && log.contains("invalid port \"99999999\""), "{log}");
    assert!(log.contains("server=heavy") && log.contains("invalid weight"), "{log}");
    assert!(log.contains("server=web#1"), "{log}");
    drop((evil, hash, huge, heavy));
}

#[test]
fn engines_listed_in_servers_are_tracked_separately() {
    let engine = Engine::get().unwrap();
    let env = Env::new();
    let front_a = TcpFront::start(&engine, 0).unwrap();
    let front_b = TcpFront::start(&engine, 0).unwrap();
    let (pa, pb) = (front_a.port, front_b.port);
    // Synapse's form: plain TCP. Both "engines" are the same one here, so each container is
    // routed twice, once per engine, under each engine's name.
    let discovery = format!(
        "      method: docker\n      servers: [{{name: a, host: 127.0.0.1, port: {pa}}}, {{name: b, host: 127.0.0.1, port: {pb}}}]\n      image_name: local/nodeapp:latest\n      container_port: 8000\n      labels: {{myelin.test: parts}}\n"
    );
    let cfg = env.write_config_with(&discovery, CHECKS, "");
    let c1 = engine.run_published("parts", &[]).unwrap();
    let n1 = c1.name().unwrap();
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    let servers = |names: &[String]| env.live_servers().is_ok_and(|s| s.iter().cloned().collect::<BTreeSet<_>>() == names.iter().cloned().collect());
    let synced = |p: &str| myelin.log().contains(&format!("Source synced. service=web partition=\"{p}\""));
    assert!(wait_for(Duration::from_secs(10), || synced("a") && synced("b")).is_some(), "{}", myelin.log());
    assert!(wait_for(Duration::from_secs(10), || servers(&[format!("a_{n1}"), format!("b_{n1}")])).is_some(), "{:?}\n{}", env.live_servers(), myelin.log());

    // Engine `a` goes away: its backends stay; `b` goes on following changes.
    drop(front_a);
    assert!(wait_for(Duration::from_secs(10), || myelin.log().contains("Source disconnected; keeping the last known backends. service=web partition=\"a\"")).is_some(), "{}", myelin.log());
    let c2 = engine.run_published("parts", &[]).unwrap();
    let n2 = c2.name().unwrap();
    let both = [format!("a_{n1}"), format!("b_{n1}"), format!("b_{n2}")];
    assert!(wait_for(Duration::from_secs(10), || servers(&both)).is_some(), "{:?}\n{}", env.live_servers(), myelin.log());
    let (seen, failed) = spray(port_of(&env), 20);
    assert_eq!((seen.into_iter().map(|b| b.trim().to_owned()).collect::<BTreeSet<_>>(), failed), (set(&[&c1.id, &c2.id]), 0));

    // Back: resynced with a full set.
    let _front_a = TcpFront::start(&engine, pa).unwrap();
    let all = [format!("a_{n1}"), format!("a_{n2}"), format!("b_{n1}"), format!("b_{n2}")];
    assert!(wait_for(Duration::from_secs(40), || servers(&all)).is_some(), "{:?}\n{}", env.live_servers(), myelin.log());
    drop(front_b);
}

fn port_of(env: &Env) -> u16 {
    env.frontend_port
}

#[test]
fn tls_engine_with_client_certificates() {
    let engine = Engine::get().unwrap();
    let env = Env::new();
    let discovery = format!(
        "      method: docker\n      servers: [{{name: secure, host: 127.0.0.1, port: {}, cert_path: {}}}]\n      image_name: local/nodeapp\n      container_port: 8000\n      labels: {{myelin.test: tls}}\n",
        engine.tls_port(),
        engine.tls_client_dir().display()
    );
    let cfg = env.write_config_with(&discovery, CHECKS, "");
    let c1 = engine.run_published("tls", &[]).unwrap();
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    assert!(wait_for(Duration::from_secs(10), || answers(env.frontend_port, 4).contains(&c1.id)).is_some(), "{}", myelin.log());
    let name = c1.name().unwrap();
    assert_eq!(env.live_servers().unwrap(), [format!("secure_{name}")]);
    // A new container follows over the same TLS connection's events.
    let c2 = engine.run_published("tls", &[]).unwrap();
    assert!(wait_for(Duration::from_secs(10), || answers(env.frontend_port, 6).contains(&c2.id)).is_some(), "{}", myelin.log());
}
