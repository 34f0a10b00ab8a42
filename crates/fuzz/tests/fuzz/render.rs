//! Rendering: validated state built from fuzzed discovery records (hostile names, hosts, ports,
//! weights, labels), through the store, into haproxy.cfg. The file has exactly the lines of
//! the same config rendered with no records, plus one `server` line per backend the store
//! accepted (or the default servers when it accepted none), each exactly as the operator's
//! `server_options` make it: nothing a record holds becomes a directive. A bounded sample is
//! checked with `haproxy -c` as well, and the servers read back from the file (as myelin does
//! at start-up) are the state it was rendered from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use myelin_core::{Discovered, DesiredState, ServiceName, Store, StoreOptions, Update};
use myelin_fuzz::{config as fuzz_config, has_control, hostile};
use proptest::prelude::*;

/// The operator's config: a service whose `server_options` use every placeholder, and one
/// with a port override and a default server. `init-addr` lets `haproxy -c` accept host names
/// that do not resolve here (records name hosts of other networks).
const CONFIG: &str = r#"
services:
  web:
    discovery: {method: static}
    haproxy:
      port: 18080
      bind_address: 127.0.0.1
      server_options: check port %{port} inter 2s cookie %{name} # %{host}
      listen: [mode http, option httpchk GET /health, cookie SRV insert indirect nocache]
  api:
    discovery: {method: static}
    backend_port_override: 9000
    haproxy: {port: 18081, bind_address: 127.0.0.1, backend_order: desc, listen: [mode tcp]}
    default_servers: [{name: fallback, host: 192.0.2.1, port: 80}]
haproxy:
  do_reloads: false
  defaults: [mode http, timeout connect 5s, timeout client 30s, timeout server 30s, "default-server init-addr last,libc,none"]
"#;

/// How many candidates `haproxy -c` checks, at most, per run (each costs ~10 ms or more).
const HAPROXY_CHECKS: usize = 40;
static CHECKED: AtomicUsize = AtomicUsize::new(0);

/// Mostly one of `good`, at times hostile text: about half the records are accepted.
fn field(good: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![6 => prop::sample::select(good).prop_map(str::to_owned), 1 => hostile()].boxed()
}

fn record() -> BoxedStrategy<Discovered> {
    (
        prop::option::of(field(&["web-1", "a.b", "x:y", "s_1", "A"])),
        field(&["127.0.0.1", "192.0.2.7", "::1", "[2001:db8::1]", "db.example", "DB.Example", "a_b.example"]),
        field(&["80", "8080", "65535", " 81 ", "+82"]),
        prop::option::of(field(&["0", "1", "256", " 7"])),
        prop::collection::btree_map(hostile(), hostile(), 0..2),
    )
        .prop_map(|(name, host, port, weight, labels)| Discovered { name, host, port, weight, labels })
        .boxed()
}

/// haproxy.cfg's lines, without the `server` lines.
fn without_servers(cfg: &str) -> Vec<&str> {
    cfg.lines().filter(|l| !l.starts_with("    server ")).collect()
}

/// The `server` lines of each backend, by backend name.
fn server_lines(cfg: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut backend = None;
    for l in cfg.lines() {
        if let Some(b) = l.strip_prefix("backend ") {
            backend = Some(b.to_owned());
        } else if !l.starts_with(' ') {
            backend = None;
        }
        if l.starts_with("    server ") {
            out.entry(backend.clone().expect("a server line outside a backend")).or_default().push(l.to_owned());
        }
    }
    out
}

fn haproxy_check(cfg: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let out = match std::process::Command::new("haproxy").arg("-c").arg("-f").arg(&file).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run haproxy (integration/install-deps.sh installs it): {e}"),
    };
    prop_assert!(out.status.success(), "haproxy -c refused:\n{}\n{}\n--- haproxy.cfg:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), cfg);
    Ok(())
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn discovered_records_render_only_their_server_lines(web in prop::collection::vec(record(), 0..6), api in prop::collection::vec(record(), 0..4), upserts in prop::collection::vec(record(), 0..3)) {
        let loaded = myelin_config::load_str(Path::new("/etc/myelin/fuzz.yaml"), CONFIG).expect("the base config loads");
        let spec = &loaded.spec;
        let names: Vec<ServiceName> = spec.services.keys().cloned().collect();
        let mut store = Store::new(names.iter().map(|n| (n.clone(), StoreOptions::default())));
        let baseline = myelin_haproxy::render(&DesiredState::build(spec, &store));

        let (web_name, api_name) = (ServiceName::parse("web").unwrap(), ServiceName::parse("api").unwrap());
        store.apply(&web_name, "", Update::Reset(web));
        store.apply(&api_name, "", Update::Reset(api));
        for d in upserts {
            store.apply(&web_name, "", Update::Upsert(d));
        }
        let desired = DesiredState::build(spec, &store);
        let cfg = myelin_haproxy::render(&desired);
        // At start-up myelin reads back the servers of the file it wrote: the same state.
        prop_assert_eq!(myelin_haproxy::servers_on_disk(&cfg, &desired), Some(desired.clone()));

        // No line, section or directive but the servers differs from the baseline.
        prop_assert_eq!(without_servers(&cfg), without_servers(&baseline));
        prop_assert!(!has_control(&cfg.replace('\n', "")), "{:?}", cfg);

        // Each backend's servers: one line per accepted backend, exactly as the options make it.
        let lines = server_lines(&cfg);
        for name in &names {
            let svc = &spec.services[name];
            let mut backends = store.backends(name);
            if backends.is_empty() {
                backends = svc.default_servers.iter().map(|b| (b.name.clone(), b.clone())).collect();
            }
            let mut expected: Vec<String> = backends
                .values()
                .map(|b| {
                    let port = svc.backend_port_override.unwrap_or(b.port);
                    let addr = if b.host.as_str().contains(':') { format!("ipv6@{}:{port}", b.host) } else { format!("{}:{port}", b.host) };
                    let weight = b.weight.map(|w| format!(" weight {w}")).unwrap_or_default();
                    let options = svc.server_options.as_ref().map(|o| {
                        format!(" {}", o.as_str().replace("%{port}", &port.to_string()).replace("%{name}", b.name.as_str()).replace("%{host}", b.host.as_str()))
                    });
                    format!("    server {} {addr}{weight}{}", b.name, options.unwrap_or_default())
                })
                .collect();
            let mut got = lines.get(svc.backend_name.as_str()).cloned().unwrap_or_default();
            expected.sort();
            got.sort();
            prop_assert_eq!(got, expected);
        }

        // What HAProxy makes of it, for a bounded sample of the cases that have servers.
        if lines.values().map(Vec::len).sum::<usize>() > 1 && CHECKED.fetch_add(1, Ordering::SeqCst) < HAPROXY_CHECKS {
            haproxy_check(&cfg)?;
        }
    }
}

#[test]
fn the_baseline_is_accepted_by_haproxy() {
    let loaded = myelin_config::load_str(Path::new("/etc/myelin/fuzz.yaml"), CONFIG).unwrap();
    let store = Store::new(loaded.spec.services.keys().map(|n| (n.clone(), StoreOptions::default())));
    haproxy_check(&myelin_haproxy::render(&DesiredState::build(&loaded.spec, &store))).unwrap();
}

/// The generator is worth its cases: a good share of its records are accepted (and so reach
/// haproxy.cfg), the rest being rejected for every reason.
#[test]
fn generated_records_are_often_accepted() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = record();
    let n = 1000;
    let accepted = (0..n).filter(|_| strategy.new_tree(&mut runner).unwrap().current().validate().is_ok()).count();
    eprintln!("{accepted} of {n} generated records are accepted");
    assert!(accepted * 3 >= n, "only {accepted} of {n} generated records are accepted");
}
