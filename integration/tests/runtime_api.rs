//! Membership changes through HAProxy's runtime API: no reloads, graceful drains, fallbacks,
//! state across restarts. Real HAProxy (master-worker), the real binary, 127.0.0.1 only.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use myelin_integration::{get, load_loop, spray, wait_for, Backend, Env};

/// The runtime API on: the stats socket, the master CLI for reloads, short drains.
fn runtime_config(env: &Env) -> std::path::PathBuf {
    env.write_config(&format!(
        "  socket_file_path: {}\n  master_socket_path: {}\n  state_file_path: {}\n  drain_timeout: 2\n  verify_interval: 2\n",
        env.path("haproxy.sock").display(),
        env.path("master.sock").display(),
        env.path("myelin-state.json").display(),
    ))
}

/// A structural change: a second service, `api`, on a new port, routed to `backend_port`;
/// brought in by SIGHUP. Waits until it answers.
fn add_api_service(cfg: &std::path::Path, myelin: &myelin_integration::Proc, backend_port: u16) {
    let api_port = myelin_integration::free_port();
    let text = std::fs::read_to_string(cfg).unwrap().replace(
        "haproxy:\n  config_file_path",
        &format!("  api:\n    discovery: {{method: static}}\n    default_servers: [{{name: s1, host: 127.0.0.1, port: {backend_port}}}]\n    haproxy: {{port: {api_port}, bind_address: 127.0.0.1}}\nhaproxy:\n  config_file_path"),
    );
    std::fs::write(cfg, text).unwrap();
    myelin.signal("HUP");
    assert!(wait_for(Duration::from_secs(10), || get(api_port, "/").is_ok_and(|r| r.0 == 200)).is_some(), "{}", myelin.log());
}

/// A running setup for the runtime-API tests: `backends` (weight 1) in the discovery file,
/// HAProxy, and myelin with the runtime API on.
struct Running {
    env: Env,
    cfg: std::path::PathBuf,
    _haproxy: myelin_integration::Proc,
    myelin: myelin_integration::Proc,
}

fn running(backends: &[&Backend]) -> Running {
    let env = Env::new();
    let cfg = runtime_config(&env);
    env.write_backends(&entries(backends, &vec![1; backends.len()]));
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    Running { env, cfg, _haproxy, myelin }
}

fn entries(backends: &[&Backend], weights: &[u16]) -> String {
    backends.iter().zip(weights).map(|(b, w)| format!("- {{name: {}, host: 127.0.0.1, port: {}, weight: {w}}}\n", b.name, b.port)).collect()
}

#[test]
fn a_hundred_membership_changes_under_load_without_a_reload() {
    let env = Env::new();
    let pool: Vec<Backend> = (0..6).map(|i| Backend::start(&format!("b{i}"))).collect();
    let cfg = runtime_config(&env);
    env.write_backends(&entries(&[&pool[0], &pool[1]], &[1, 1]));
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let reloads_before = env.reloads().unwrap_or_else(|e| panic!("{e}: {}", myelin.log()));

    let stop = Arc::new(AtomicBool::new(false));
    let load = load_loop(env.frontend_port, Duration::from_millis(5), 20_000, Duration::from_secs(120), stop.clone());

    // A deterministic walk: each step adds, removes or re-weights one backend; two or more stay.
    let mut members: Vec<(usize, u16)> = vec![(0, 1), (1, 1)];
    let t0 = Instant::now();
    for step in 0..100usize {
        let pick = (step * 7 + 3) % pool.len();
        let pos = members.iter().position(|(i, _)| *i == pick);
        match (step % 3, pos) {
            (0, None) => members.push((pick, 1 + (step % 5) as u16)),
            (1, Some(p)) if members.len() > 2 => {
                members.remove(p);
            }
            (_, Some(p)) => members[p].1 = 1 + ((members[p].1 as usize + step) % 9) as u16,
            (_, None) => members.push((pick, 2)),
        }
        members.sort();
        let list: Vec<&Backend> = members.iter().map(|(i, _)| &pool[*i]).collect();
        let weights: Vec<u16> = members.iter().map(|(_, w)| *w).collect();
        env.write_backends(&entries(&list, &weights));
        let want: Vec<(String, u16, u16)> = members.iter().map(|(i, w)| (pool[*i].name.clone(), pool[*i].port, *w)).collect();
        // Servers being drained are still listed for a moment: wait for the active set to match.
        let matched = wait_for(Duration::from_secs(10), || {
            env.servers("web").is_ok_and(|s| want.iter().all(|w| s.contains(w)) && s.iter().filter(|x| !want.contains(x)).count() <= pool.len())
        });
        assert!(matched.is_some(), "step {step}: HAProxy has {:?}, want {want:?}\n{}", env.servers("web"), myelin.log());
    }
    let elapsed = t0.elapsed();
    // Drains finish within drain_timeout: then HAProxy lists exactly the file's backends.
    let want: Vec<(String, u16, u16)> = members.iter().map(|(i, w)| (pool[*i].name.clone(), pool[*i].port, *w)).collect();
    assert!(wait_for(Duration::from_secs(10), || env.servers("web").is_ok_and(|s| s == want)).is_some(), "{:?} != {want:?}", env.servers("web"));
    // The walk can take under a second: the load goes on for 2 s in all, so that it makes its
    // hundred requests however fast the changes went through.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(t0.elapsed()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (requests, failed, why) = load.join().unwrap();
    let reloads = env.reloads().unwrap() - reloads_before;
    eprintln!("100 changes in {elapsed:?}; {requests} requests, {failed} failed, {reloads} reloads");
    assert_eq!(reloads, 0, "{}", myelin.log());
    assert_eq!(failed, 0, "{why:?}");
    assert!(requests > 100, "the load loop barely ran: {requests}");
    // The file on disk matches what runs (it is written right after the runtime change).
    let on_disk = || {
        let text = std::fs::read_to_string(env.haproxy_cfg()).unwrap();
        let servers = text.lines().filter(|l| l.trim_start().starts_with("server ")).count();
        servers == want.len() && want.iter().all(|(name, port, w)| text.contains(&format!("server {name} 127.0.0.1:{port} weight {w} ")))
    };
    assert!(wait_for(Duration::from_secs(5), on_disk).is_some(), "{}", std::fs::read_to_string(env.haproxy_cfg()).unwrap());
    assert!(myelin.log().contains("no reload"));
    assert!(!myelin.log().contains("Reloaded HAProxy"), "{}", myelin.log());
}

#[test]
fn a_structural_change_reloads_once_and_open_connections_complete() {
    let slow = Backend::start_slow("slow", Duration::from_millis(1500));
    let Running { env, cfg, _haproxy, myelin } = running(&[&slow]);
    std::thread::sleep(Duration::from_millis(1500));
    let before = env.reloads().unwrap();

    // Long requests opened before the reload.
    let port = env.frontend_port;
    let long: Vec<_> = (0..3).map(|_| std::thread::spawn(move || get(port, "/"))).collect();
    std::thread::sleep(Duration::from_millis(200));

    add_api_service(&cfg, &myelin, slow.port);
    for t in long {
        assert_eq!(t.join().unwrap().unwrap(), (200, "slow".to_string()));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.reloads().unwrap() - before, 1, "{}", myelin.log());
}

#[test]
fn sigkill_then_restart_with_the_source_gone_keeps_the_last_known_backends() {
    let a = Backend::start("alpha");
    let b = Backend::start("beta");
    let Running { env, cfg, _haproxy, mut myelin } = running(&[&a]);
    env.write_backends(&entries(&[&a, &b], &[1, 1]));
    assert!(wait_for(Duration::from_secs(5), || spray(env.frontend_port, 6).0.len() == 2).is_some(), "{}", myelin.log());
    assert!(wait_for(Duration::from_secs(5), || env.path("myelin-state.json").exists()).is_some());
    // haproxy.cfg follows the runtime API within a second (killed before, the next start would
    // repair the lag with a reload; that is not what this test is about).
    let on_disk = || std::fs::read_to_string(env.haproxy_cfg()).is_ok_and(|c| c.contains(&format!(":{}", b.port)));
    assert!(wait_for(Duration::from_secs(5), on_disk).is_some());

    myelin.signal("KILL");
    myelin.wait_exit(Duration::from_secs(5));
    std::fs::remove_file(env.path("backends.yaml")).unwrap();
    let before = env.reloads().unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    // The source never syncs; after the start-up wait (10 s) myelin applies what it knows.
    assert!(wait_for(Duration::from_secs(15), || myelin.log().contains("already up to date")).is_some(), "{}", myelin.log());
    assert!(myelin.log().contains("Using the backends from the state file"), "{}", myelin.log());
    let (seen, failed) = spray(env.frontend_port, 10);
    assert_eq!((seen.len(), failed), (2, 0));
    assert_eq!(env.reloads().unwrap(), before);
}

#[test]
fn a_failing_runtime_api_falls_back_to_a_reload() {
    let a = Backend::start("alpha");
    let b = Backend::start("beta");
    let Running { env, _haproxy, myelin, .. } = running(&[&a]);
    std::thread::sleep(Duration::from_millis(1500));
    let before = env.reloads().unwrap_or_else(|e| panic!("{e}: {}", myelin.log()));

    std::fs::remove_file(env.path("haproxy.sock")).unwrap();
    env.write_backends(&entries(&[&a, &b], &[1, 1]));
    assert!(wait_for(Duration::from_secs(10), || spray(env.frontend_port, 6).0.contains("beta")).is_some(), "{}", myelin.log());
    let log = myelin.log();
    assert!(log.contains("The runtime API failed") && log.contains("falling back to a reload"), "{log}");
    assert_eq!(env.reloads().unwrap() - before, 1, "{}", myelin.log());
    // HAProxy passes the socket's listener to the new worker, so the removed path stays gone:
    // every change keeps landing, each through a reload.
    let c = Backend::start("gamma");
    env.write_backends(&entries(&[&a, &b, &c], &[1, 1, 1]));
    assert!(wait_for(Duration::from_secs(10), || spray(env.frontend_port, 9).0.contains("gamma")).is_some(), "{}", myelin.log());
    assert_eq!(env.reloads().unwrap() - before, 2, "{}", myelin.log());
    // Known to fail, the socket is not tried again at the next change (each try of a socket
    // that hangs would hold the loop for its timeout): that change goes straight to a reload.
    assert_eq!(myelin.log().matches("falling back to a reload").count(), 1);
    let (seen, failed) = spray(env.frontend_port, 12);
    assert_eq!((seen.len(), failed), (3, 0));
}

#[test]
fn drift_is_repaired() {
    let a = Backend::start("alpha");
    let b = Backend::start("beta");
    let Running { env, _haproxy, myelin, .. } = running(&[&a, &b]);
    // After the first apply (which reads what HAProxy runs, and would repair it at once).
    assert!(wait_for(Duration::from_secs(10), || myelin.log().contains("already up to date")).is_some(), "{}", myelin.log());
    // Someone changes a weight behind myelin's back.
    env.runtime_cli("set server web/beta weight 50").unwrap();
    assert!(wait_for(Duration::from_secs(10), || myelin.log().contains("differ from the desired state")).is_some(), "{}", myelin.log());
    assert!(wait_for(Duration::from_secs(10), || env.servers("web").is_ok_and(|s| s.iter().all(|x| x.2 == 1))).is_some(), "{:?}", env.servers("web"));
}

#[test]
fn server_state_survives_a_reload() {
    let a = Backend::start("alpha");
    let b = Backend::start("beta");
    let Running { env, cfg, _haproxy, myelin } = running(&[&a, &b]);
    std::thread::sleep(Duration::from_millis(1500));
    let before = env.reloads().unwrap();

    // An operator takes beta out for maintenance through HAProxy's own API.
    env.runtime_cli("set server web/beta state maint").unwrap();
    // A structural change (a new service) reloads HAProxy.
    add_api_service(&cfg, &myelin, a.port);
    assert_eq!(env.reloads().unwrap() - before, 1);
    // The new worker loaded the state saved just before the reload: beta is still in maintenance.
    assert_eq!(env.active_servers("web").unwrap().iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["alpha"]);
    let (seen, failed) = spray(env.frontend_port, 10);
    assert_eq!((seen.into_iter().collect::<Vec<_>>(), failed), (vec!["alpha".to_string()], 0));
    assert!(std::fs::read_to_string(env.path("haproxy.cfg.state")).unwrap().contains(" beta "));
}

/// A server left in a drain that nobody runs (myelin killed while it drained, or a drain by
/// hand) takes no traffic: the drift check sets it ready again. An operator's maintenance is
/// left alone (see `server_state_survives_a_reload`).
#[test]
fn a_server_left_draining_is_set_ready_again() {
    let a = Backend::start("alpha");
    let b = Backend::start("beta");
    let Running { env, _haproxy, myelin, .. } = running(&[&a, &b]);
    std::thread::sleep(Duration::from_millis(1500));
    env.runtime_cli("set server web/beta state drain").unwrap();
    assert_eq!(env.routable_servers().unwrap(), ["alpha"]);
    assert!(
        wait_for(Duration::from_secs(10), || env.routable_servers().is_ok_and(|s| s == ["alpha", "beta"])).is_some(),
        "{:?}\n{}",
        env.routable_servers(),
        myelin.log()
    );
    assert!(myelin.log().contains("left draining"), "{}", myelin.log());
}
