//! The `file` source end to end: symlinks swapped as Kubernetes does, the file's directory
//! removed and created again, hundreds of file services in one directory, and a number too wide
//! for 64 bits in one entry. Real myelin and (where it matters) real HAProxy, on 127.0.0.1.

use std::os::unix::fs::symlink;
use std::time::Duration;

use myelin_integration::{free_port, get, spray, wait_for, Backend, Env};

fn serves_only(port: u16, names: &[&str]) -> bool {
    let (seen, failed) = spray(port, 8);
    failed == 0 && seen.iter().map(String::as_str).eq(names.iter().copied())
}

fn status(admin: u16) -> serde_json::Value {
    get(admin, "/status").ok().and_then(|(_, body)| serde_json::from_str(&body).ok()).unwrap_or_default()
}

#[test]
fn symlinks_swapped_as_kubernetes_does_and_an_edited_target_elsewhere_are_followed() {
    let env = Env::new();
    let (a, b, c) = (Backend::start("alpha"), Backend::start("beta"), Backend::start("gamma"));
    // A ConfigMap volume: backends.yaml -> ..data/backends.yaml, ..data -> ..2026_01.
    let cm = env.path("cm");
    std::fs::create_dir_all(cm.join("..2026_01")).unwrap();
    std::fs::write(cm.join("..2026_01/backends.yaml"), a.entry()).unwrap();
    symlink("..2026_01", cm.join("..data")).unwrap();
    symlink("..data/backends.yaml", cm.join("backends.yaml")).unwrap();
    let cfg = env.write_config_with(&format!("      method: file\n      path: {}\n", cm.join("backends.yaml").display()), "", "");
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    let port = env.frontend_port;
    assert_eq!(get(port, "/").unwrap().1, "alpha");

    // The ConfigMap updated as the kubelet does it: a new directory, `..data` swapped by rename.
    std::fs::create_dir(cm.join("..2026_02")).unwrap();
    std::fs::write(cm.join("..2026_02/backends.yaml"), b.entry()).unwrap();
    symlink("..2026_02", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(cm.join("..2026_01")).unwrap();
    assert!(wait_for(Duration::from_secs(5), || serves_only(port, &["beta"])).is_some(), "{}", myelin.log());

    // A deploy tool's link to a release directory elsewhere; then that file edited in place.
    let release = tempfile::tempdir().unwrap();
    let target = release.path().join("backends.yaml");
    std::fs::write(&target, format!("{}{}", a.entry(), b.entry())).unwrap();
    symlink(&target, cm.join("next")).unwrap();
    std::fs::rename(cm.join("next"), cm.join("backends.yaml")).unwrap();
    assert!(wait_for(Duration::from_secs(5), || serves_only(port, &["alpha", "beta"])).is_some(), "{}", myelin.log());
    std::fs::write(&target, c.entry()).unwrap();
    assert!(wait_for(Duration::from_secs(5), || serves_only(port, &["gamma"])).is_some(), "{}", myelin.log());
}

#[test]
fn the_directory_removed_and_created_again_is_followed_and_the_blind_spell_is_reported() {
    let env = Env::new();
    let (a, b) = (Backend::start("alpha"), Backend::start("beta"));
    let conf = env.path("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("backends.yaml"), a.entry()).unwrap();
    let admin = free_port();
    let cfg = env.write_config_with(&format!("      method: file\n      path: {}\n", conf.join("backends.yaml").display()), "", &format!("admin: {{bind: {admin}}}\n"));
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    let port = env.frontend_port;
    assert_eq!(get(port, "/").unwrap().1, "alpha");
    assert!(wait_for(Duration::from_secs(5), || status(admin)["services"]["web"]["watcher"] == "synced").is_some(), "{}", status(admin));

    std::fs::remove_dir_all(&conf).unwrap();
    let blind = |s: &serde_json::Value| s["services"]["web"]["last_error"].as_str().is_some_and(|e| e.contains("conf is missing); waiting for it"));
    assert!(wait_for(Duration::from_secs(5), || blind(&status(admin))).is_some(), "{}\n{}", status(admin), myelin.log());
    // Blind, the service keeps its backends, and the status does not call it synced.
    assert!(serves_only(port, &["alpha"]));
    assert_eq!(status(admin)["services"]["web"]["watcher"], "failing", "{}", status(admin));

    // Created again with a new file (as a deploy that recreates its directory does).
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("backends.yaml"), b.entry()).unwrap();
    assert!(wait_for(Duration::from_secs(5), || serves_only(port, &["beta"])).is_some(), "{}", myelin.log());
    assert_eq!(status(admin)["services"]["web"]["watcher"], "synced", "{}", status(admin));
    // And it keeps following it.
    std::fs::write(conf.join("backends.yaml"), format!("{}{}", a.entry(), b.entry())).unwrap();
    assert!(wait_for(Duration::from_secs(5), || serves_only(port, &["alpha", "beta"])).is_some(), "{}", myelin.log());
}

#[test]
fn two_hundred_file_services_in_one_directory_all_sync_with_the_default_inotify_limits() {
    // More services than `fs.inotify.max_user_instances` (128 by default): one instance for all.
    const N: u16 = 200;
    let env = Env::new();
    let files = env.path("files");
    std::fs::create_dir(&files).unwrap();
    let admin = free_port();
    let mut services = String::from("services:\n");
    for i in 0..N {
        std::fs::write(files.join(format!("s{i}.yaml")), format!("- {{name: s{i}, host: 127.0.0.1, port: {}}}\n", 20000 + i)).unwrap();
        services.push_str(&format!("  s{i}: {{discovery: {{method: file, path: files/s{i}.yaml}}, haproxy: {{port: {}, bind_address: 127.0.0.1}}}}\n", 30000 + i));
    }
    let cfg = env.path("myelin.yaml");
    std::fs::write(&cfg, format!("{services}haproxy: {{config_file_path: {}, do_reloads: false}}\nadmin: {{bind: {admin}}}\n", env.haproxy_cfg().display())).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    let ready = wait_for(Duration::from_secs(20), || get(admin, "/ready").is_ok_and(|(code, _)| code == 200));
    assert!(ready.is_some(), "{}\n{}", get(admin, "/ready").map(|r| r.1).unwrap_or_default(), myelin.log());
    // Ready comes as the sources sync; the file is written just after.
    let all = |t: &str| (0..N).all(|i| t.contains(&format!("server s{i} 127.0.0.1:{}", 20000 + i)));
    wait_for(Duration::from_secs(10), || std::fs::read_to_string(env.haproxy_cfg()).is_ok_and(|t| all(&t)));
    let text = std::fs::read_to_string(env.haproxy_cfg()).unwrap_or_default();
    for i in 0..N {
        assert!(text.contains(&format!("server s{i} 127.0.0.1:{}", 20000 + i)), "s{i} missing from haproxy.cfg");
    }
    assert!(!myelin.log().contains("cannot watch"), "{}", myelin.log());

    // A change to one file reaches haproxy.cfg; its neighbours are left alone.
    std::fs::write(files.join("s7.yaml"), "- {name: s7b, host: 127.0.0.1, port: 29999}\n").unwrap();
    let changed = wait_for(Duration::from_secs(5), || std::fs::read_to_string(env.haproxy_cfg()).is_ok_and(|t| t.contains("server s7b 127.0.0.1:29999")));
    assert!(changed.is_some(), "{}", myelin.log());
}

#[test]
fn a_port_too_wide_for_64_bits_spoils_only_its_entry() {
    let env = Env::new();
    let (a, b) = (Backend::start("alpha"), Backend::start("beta"));
    env.write_backends(&a.entry());
    let cfg = env.write_config("");
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    let port = env.frontend_port;
    assert_eq!(get(port, "/").unwrap().1, "alpha");

    env.write_backends(&format!(
        "{}{}- {{name: wide, host: 127.0.0.1, port: 18446744073709551616}}\n- {{name: heavy, host: 127.0.0.1, port: {}, weight: 18446744073709551616}}\n- {{name: frac, host: 127.0.0.1, port: 80.0}}\n",
        a.entry(),
        b.entry(),
        b.port
    ));
    assert!(wait_for(Duration::from_secs(5), || serves_only(port, &["alpha", "beta"])).is_some(), "{}", myelin.log());
    let text = std::fs::read_to_string(env.haproxy_cfg()).unwrap();
    for bad in ["wide", "heavy", "frac"] {
        assert!(!text.contains(bad), "{bad} reached haproxy.cfg:\n{text}");
    }
    assert!(wait_for(Duration::from_secs(2), || myelin.log().contains("server=heavy")).is_some(), "{}", myelin.log());
    let log = myelin.log();
    assert!(log.contains("Rejected a discovery record") && log.contains("server=wide"), "{log}");
    assert!(log.contains("`port` must be a whole number"), "{log}");
    assert!(!log.contains("is malformed"), "{log}");
}
