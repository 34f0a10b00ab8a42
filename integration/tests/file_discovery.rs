//! The foundation, end to end: file discovery -> myelin -> real HAProxy, on 127.0.0.1.

use std::time::{Duration, Instant};

use myelin_integration::{get, spray, wait_for, Backend, Env};

#[test]
fn backends_follow_the_discovery_file() {
    let env = Env::new();
    let a = Backend::start("alpha");
    let b = Backend::start("beta");
    env.write_backends(&a.entry());
    let cfg = env.write_config("");
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    let port = env.frontend_port;

    assert_eq!(get(port, "/").unwrap(), (200, "alpha".to_string()));
    // Starting on the config HAProxy already runs needs no reload.
    std::thread::sleep(Duration::from_millis(500));
    assert!(myelin.log().contains("already up to date"), "{}", myelin.log());

    // Added: answering within 1 s.
    let t0 = Instant::now();
    env.write_backends(&format!("{}{}", a.entry(), b.entry()));
    let took = wait_for(Duration::from_secs(5), || get(port, "/").is_ok_and(|(_, body)| body == "beta"));
    let took = took.unwrap_or_else(|| panic!("beta never answered: {}", myelin.log()));
    eprintln!("added backend answered after {:?} (from the file write: {:?})", took, t0.elapsed());
    // Typically 0.25-0.35 s on this path (reload); the 1 s target is measured by `make bench`
    // (docs/performance.md). The bound here only catches a change that was not applied promptly,
    // without flaking when the machine's two cores are busy with other tests.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let (seen, failed) = spray(port, 20);
    assert_eq!(failed, 0);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["alpha", "beta"]);

    // Removed: gets no more traffic.
    env.write_backends(&b.entry());
    assert!(wait_for(Duration::from_secs(5), || spray(port, 4).0.iter().all(|s| s == "beta")).is_some(), "{}", myelin.log());
    let before = a.hits.load(std::sync::atomic::Ordering::Relaxed);
    let (seen, failed) = spray(port, 20);
    assert_eq!((seen.into_iter().collect::<Vec<_>>(), failed), (vec!["beta".to_string()], 0));
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::Relaxed), before, "alpha still got requests");
    let cfg_text = std::fs::read_to_string(env.haproxy_cfg()).unwrap();
    assert!(cfg_text.contains(&format!("server beta 127.0.0.1:{} check inter 500ms", b.port)), "{cfg_text}");
    assert!(!cfg_text.contains("alpha"));
}

#[test]
fn malformed_entries_are_rejected_and_the_rest_keep_serving() {
    let env = Env::new();
    let a = Backend::start("alpha");
    let b = Backend::start("beta");
    env.write_backends(&a.entry());
    let cfg = env.write_config("");
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    let port = env.frontend_port;
    assert_eq!(get(port, "/").unwrap().1, "alpha");

    // One good new entry among hostile ones.
    env.write_backends(&format!(
        "{}{}- {{name: \"evil\\n  server injected 127.0.0.1:1\", host: 127.0.0.1, port: 1}}\n- {{name: hash, host: '127.0.0.1#x', port: 2}}\n- {{name: huge, host: 127.0.0.1, port: 99999999}}\n- {{name: nohost, port: 3}}\n- {{name: typo, host: 127.0.0.1, prot: 4}}\n",
        a.entry(),
        b.entry()
    ));
    assert!(wait_for(Duration::from_secs(5), || spray(port, 6).0.contains("beta")).is_some(), "{}", myelin.log());
    let (seen, failed) = spray(port, 20);
    assert_eq!((seen.into_iter().collect::<Vec<_>>(), failed), (vec!["alpha".to_string(), "beta".to_string()], 0));
    let text = std::fs::read_to_string(env.haproxy_cfg()).unwrap();
    for bad in ["injected", "evil", "#x", "99999999", "nohost", "typo"] {
        assert!(!text.contains(bad), "{bad} reached haproxy.cfg:\n{text}");
    }
    let log = myelin.log();
    assert!(log.contains("Rejected a discovery record") && log.contains("server=huge"), "{log}");
    // The hostile name is logged escaped: it cannot start a line of its own.
    assert!(log.contains("evil\\n  server injected"), "{log}");
    assert!(!log.lines().any(|l| l.trim_start().starts_with("server injected")), "{log}");
    assert!(log.contains("unknown field `prot`"), "{log}");

    // A file that does not parse at all keeps the previous backends.
    env.write_backends("- {host: [unclosed\n");
    assert!(wait_for(Duration::from_secs(5), || myelin.log().contains("is malformed")).is_some(), "{}", myelin.log());
    let (seen, failed) = spray(port, 10);
    assert_eq!((seen.len(), failed), (2, 0));
}

#[test]
fn a_config_haproxy_rejects_is_kept_aside_and_the_old_one_stays() {
    let env = Env::new();
    let a = Backend::start("alpha");
    env.write_backends(&a.entry());
    let cfg = env.write_config("");
    let (_haproxy, mut myelin) = env.start(&cfg).unwrap();
    let good = std::fs::read_to_string(env.haproxy_cfg()).unwrap();

    // A syntactically fine line that HAProxy refuses, brought in by a SIGHUP.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("    - retries 3\n", "    - retries 3\n    - balance no-such-algorithm\n");
    std::fs::write(&cfg, text).unwrap();
    myelin.signal("HUP");
    let rejected = env.path("haproxy.cfg.rejected");
    assert!(wait_for(Duration::from_secs(5), || rejected.exists()).is_some(), "{}", myelin.log());
    assert!(std::fs::read_to_string(&rejected).unwrap().contains("no-such-algorithm"));
    assert_eq!(std::fs::read_to_string(env.haproxy_cfg()).unwrap(), good);
    assert!(wait_for(Duration::from_secs(2), || myelin.log().contains("haproxy rejected the new configuration")).is_some(), "{}", myelin.log());
    assert_eq!(get(env.frontend_port, "/").unwrap().1, "alpha");
    assert!(myelin.is_running());
}

#[test]
fn bad_config_exits_2_and_touches_nothing() {
    let env = Env::new();
    let cfg = env.path("bad.yaml");
    std::fs::write(&cfg, "services:\n  web:\n    discovery: {method: file, path: b.yaml}\n    haproxy: {prot: 80}\n").unwrap();
    let (code, _, err) = env.myelin_once(&["run", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml:4:") && err.contains("services.web.haproxy.prot") && err.contains("did you mean `port`?"), "{err}");
    let (code, _, err) = env.myelin_once(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(std::fs::read_dir(env.dir.path()).unwrap().count(), 1, "something was written");
    let (code, _, err) = env.myelin_once(&["check", "-c", env.path("missing.yaml").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.yaml: cannot read"), "{err}");
}

#[test]
fn sighup_with_a_bad_config_keeps_running_and_sigterm_leaves_haproxy_serving() {
    let env = Env::new();
    let a = Backend::start("alpha");
    env.write_backends(&a.entry());
    let cfg = env.write_config("");
    let mut haproxy = env.start_haproxy(&cfg).unwrap();
    let mut myelin = env.start_myelin(&cfg).unwrap();
    let good = std::fs::read_to_string(&cfg).unwrap();

    std::fs::write(&cfg, "services: [this is not a mapping\n").unwrap();
    myelin.signal("HUP");
    assert!(wait_for(Duration::from_secs(5), || myelin.log().contains("keeping the running one")).is_some(), "{}", myelin.log());
    assert!(myelin.is_running());

    // Discovery still works on the old config.
    let b = Backend::start("beta");
    env.write_backends(&format!("{}{}", a.entry(), b.entry()));
    assert!(wait_for(Duration::from_secs(5), || spray(env.frontend_port, 4).0.contains("beta")).is_some(), "{}", myelin.log());

    // A valid config with a second service: picked up.
    let api_port = myelin_integration::free_port();
    let with_api = good.replace(
        "haproxy:\n  config_file_path",
        &format!("  api:\n    discovery: {{method: static}}\n    default_servers: [{{name: a1, host: 127.0.0.1, port: {}}}]\n    haproxy: {{port: {api_port}, bind_address: 127.0.0.1}}\nhaproxy:\n  config_file_path", a.port),
    );
    std::fs::write(&cfg, with_api).unwrap();
    myelin.signal("HUP");
    assert!(wait_for(Duration::from_secs(5), || get(api_port, "/").is_ok_and(|r| r.1 == "alpha")).is_some(), "{}", myelin.log());

    myelin.signal("TERM");
    assert_eq!(myelin.wait_exit(Duration::from_secs(5)), Some(0), "{}", myelin.log());
    assert!(haproxy.is_running());
    let (seen, failed) = spray(env.frontend_port, 10);
    assert_eq!((seen.len(), failed), (2, 0));
}

#[test]
fn the_tutorial_synapse_config_checks_with_real_haproxy() {
    let env = Env::new();
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/synapse.json.conf");
    let (code, out, err) = env.myelin_once(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("HAProxy accepts the haproxy.cfg it gives"), "{out}{err}");
    assert!(err.contains("synapse.json.conf:22: haproxy.defaults[0]: `contimeout 5000` is not accepted by HAProxy 2.x"), "{err}");
    let (code, rendered, err) = env.myelin_once(&["render", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(rendered.contains("    timeout connect 5000\n") && rendered.contains("frontend nodesrv\n") && rendered.contains("    option httpchk /\n"), "{rendered}");
}

/// A source that never syncs (here: its directory is gone, so it cannot even be watched) must
/// not empty a backend HAProxy serves, not even once the start-up timeout has passed.
#[test]
fn a_source_that_never_syncs_keeps_what_haproxy_runs() {
    let env = Env::new();
    let a = Backend::start("alpha");
    let sub = env.path("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("backends.yaml"), a.entry()).unwrap();
    let discovery = format!("      method: file\n      path: {}\n", sub.join("backends.yaml").display());
    let cfg = env.write_config_with(&discovery, "", "");
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    assert_eq!(get(env.frontend_port, "/").unwrap(), (200, "alpha".to_string()));

    std::fs::remove_dir_all(&sub).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    // Past the 10 s start-up timeout, the first apply has happened.
    assert!(wait_for(Duration::from_secs(20), || myelin.log().contains("already up to date") || myelin.log().contains("Installed")).is_some(), "{}", myelin.log());
    std::thread::sleep(Duration::from_secs(1));
    let (seen, failed) = spray(env.frontend_port, 10);
    assert_eq!((seen.into_iter().collect::<Vec<_>>(), failed), (vec!["alpha".to_string()], 0), "{}", myelin.log());
    assert!(std::fs::read_to_string(env.haproxy_cfg()).unwrap().contains(&format!("127.0.0.1:{}", a.port)));
}
