//! Consul discovery end to end: the Consul test double (`myelin_integration::consul`, written
//! from Consul's documented HTTP API), real HAProxy in master-worker mode with the runtime API,
//! the real myelin binary. Everything on 127.0.0.1.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use myelin_integration::consul::{Consul, Fault};
use myelin_integration::{free_port, get, spray, wait_for, Backend, Env, Proc};
use serde_json::Value;

const SOON: Duration = Duration::from_secs(5);

fn answers(port: u16, n: usize) -> BTreeSet<String> {
    spray(port, n).0
}

fn set(items: &[&Backend]) -> BTreeSet<String> {
    items.iter().map(|b| b.name.clone()).collect()
}

/// A running setup: the double, HAProxy, myelin (runtime API on, admin listener).
struct Running {
    env: Env,
    cfg: PathBuf,
    consul: Consul,
    admin: u16,
    _haproxy: Proc,
    myelin: Proc,
}

impl Running {
    /// `discovery` lines (below `method: consul` and `address`) for service `web`.
    fn start(consul: Consul, discovery: &str, vars: &[(&str, &str)]) -> Self {
        let env = Env::new();
        let admin = free_port();
        let disc = format!("      method: consul\n      address: {}\n{discovery}", consul.address());
        let extra = format!("{}  drain_timeout: 1\nadmin: {{bind: {admin}}}\n", env.runtime_extra());
        let cfg = env.write_config_with(&disc, "", &extra);
        let _haproxy = env.start_haproxy(&cfg).unwrap();
        let myelin = env.start_myelin_env(&cfg, vars).unwrap();
        Self { env, cfg, consul, admin, _haproxy, myelin }
    }

    fn serves(&self, want: &[&Backend]) -> bool {
        answers(self.env.frontend_port, 4 * want.len().max(1)) == set(want)
    }

    fn wait_serves(&self, want: &[&Backend], what: &str) {
        let ok = wait_for(SOON, || self.serves(want));
        assert!(ok.is_some(), "{what}: serves {:?}, want {:?}\n{}", answers(self.env.frontend_port, 12), set(want), self.myelin.log());
    }

    fn status(&self) -> Value {
        let (code, body) = get(self.admin, "/status").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn last_error(&self) -> String {
        self.status()["services"]["web"]["last_error"].as_str().unwrap_or("").to_owned()
    }
}

fn register(c: &Consul, b: &Backend, status: &str) {
    c.register(&b.name, "web", b.port, &[], status);
}

#[test]
fn registrations_checks_and_deregistrations_go_through_the_runtime_api() {
    let consul = Consul::start(100);
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(&format!("web-{i}"))).collect();
    register(&consul, &b[0], "passing");
    register(&consul, &b[1], "passing");
    let r = Running::start(consul, "      wait: 10\n", &[]);
    r.wait_serves(&[&b[0], &b[1]], "at start");
    let reloads = r.env.reloads().unwrap();

    register(&r.consul, &b[2], "critical");
    std::thread::sleep(Duration::from_millis(500));
    assert!(r.serves(&[&b[0], &b[1]]), "a critical instance is not routed");
    r.consul.check("web-3", "pass");
    r.wait_serves(&[&b[0], &b[1], &b[2]], "check passes");
    r.consul.check("web-1", "fail");
    r.wait_serves(&[&b[1], &b[2]], "check fails");
    r.consul.check("web-1", "warn");
    std::thread::sleep(Duration::from_millis(300));
    assert!(r.serves(&[&b[1], &b[2]]), "warning is not passing");
    r.consul.check("web-1", "pass");
    r.wait_serves(&[&b[0], &b[1], &b[2]], "check passes again");
    r.consul.deregister("web-2");
    r.wait_serves(&[&b[0], &b[2]], "deregistered");
    // All of it through the runtime API: HAProxy was not reloaded.
    assert_eq!(r.env.reloads().unwrap(), reloads, "{}", r.myelin.log());
    let names: BTreeSet<String> = r.env.routable_servers().unwrap().into_iter().collect();
    assert_eq!(names, ["node1:web-1", "node1:web-3"].map(String::from).into(), "server names are node:ID");
}

#[test]
fn a_lower_index_after_a_restart_of_consul_converges() {
    let consul = Consul::start(900_000);
    let b1 = Backend::start("web-1");
    let b2 = Backend::start("web-2");
    register(&consul, &b1, "passing");
    // A long wait: if the watcher kept asking with the old, higher index, the next change
    // would show only when that wait expires.
    let mut r = Running::start(consul, "      wait: 30\n", &[]);
    r.wait_serves(&[&b1], "at start");
    // The index drops under the blocked query (Consul answers it, as after a snapshot
    // restore): the watcher asks again from 0, then blocks from the new index.
    std::thread::sleep(Duration::from_millis(300));
    r.consul.restore(7);
    std::thread::sleep(Duration::from_millis(300));
    register(&r.consul, &b2, "passing");
    r.wait_serves(&[&b1, &b2], "after the index went backwards");
    let blocking = wait_for(SOON, || r.consul.reads().iter().any(|q| q.contains("index=8&")));
    assert!(blocking.is_some(), "{:?}", r.consul.reads());

    // Consul restarts with a lower index still: the blocked query's connection closes, the
    // watcher reconnects from 0 and follows the new index.
    let b3 = Backend::start("web-3");
    let old = std::mem::replace(&mut r.consul, Consul::start(1));
    r.consul = old.restart(3);
    std::thread::sleep(Duration::from_millis(300));
    register(&r.consul, &b3, "passing");
    r.wait_serves(&[&b1, &b2, &b3], "after a restart with a lower index");
    let blocking = wait_for(SOON, || r.consul.reads().iter().any(|q| q.contains("index=4&")));
    assert!(blocking.is_some(), "{:?}", r.consul.reads());
    assert!(r.serves(&[&b1, &b2, &b3]));
}

#[test]
fn faults_keep_every_backend_serving_and_recover() {
    let consul = Consul::start(100);
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(&format!("web-{i}"))).collect();
    register(&consul, &b[0], "passing");
    register(&consul, &b[1], "passing");
    // wait 1 s: a hanging Consul is given up after 1 + 1/16 + 2 s.
    let r = Running::start(consul, "      wait: 1\n", &[]);
    r.wait_serves(&[&b[0], &b[1]], "at start");
    let reloads = r.env.reloads().unwrap();
    let mut live = vec![&b[0], &b[1]];
    for (fault, shown) in [(Fault::Error500, "No cluster leader"), (Fault::Hang, "no answer within"), (Fault::Reset, "unreachable"), (Fault::Malformed, "malformed answer")] {
        r.consul.set_fault(fault);
        let seen = wait_for(Duration::from_secs(10), || r.last_error().contains(shown));
        assert!(seen.is_some(), "{fault:?}: status shows {:?}\n{}", r.last_error(), r.myelin.log());
        // Let the supervisor retry a few times meanwhile: every backend still serves.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(r.serves(&live), "{fault:?}: backends lost\n{}", r.myelin.log());
        // A change made during the first fault shows after recovery.
        if fault == Fault::Error500 {
            register(&r.consul, &b[2], "passing");
            live.push(&b[2]);
        }
        r.consul.set_fault(Fault::None);
        // Recovery waits for the supervisor's backoff (capped at 30 s; here a few seconds).
        let ok = wait_for(Duration::from_secs(20), || r.serves(&live));
        assert!(ok.is_some(), "{fault:?}: no recovery: serves {:?}\n{}", answers(r.env.frontend_port, 12), r.myelin.log());
    }
    // Each fault was logged once, however many retries it took.
    let log = r.myelin.log();
    for shown in ["No cluster leader", "malformed answer"] {
        assert_eq!(log.matches(shown).count(), 1, "{shown}:\n{log}");
    }
    assert_eq!(r.env.reloads().unwrap(), reloads);
}

#[test]
fn a_wrong_token_is_a_clear_error_and_the_token_never_shows() {
    let consul = Consul::start(100);
    let b1 = Backend::start("web-1");
    consul.set_token(Some("good-token-1234"));
    register(&consul, &b1, "passing");
    let r = Running::start(consul, "      token: good-token-1234\n      wait: 2\n", &[("CONSUL_HTTP_TOKEN", "env-token-5678")]);
    r.wait_serves(&[&b1], "at start");
    // The ACL changes under a running myelin: 403.
    r.consul.set_token(Some("rotated-token-9999"));
    let seen = wait_for(Duration::from_secs(10), || r.last_error().contains("403"));
    assert!(seen.is_some(), "{}", r.myelin.log());
    let e = r.last_error();
    assert!(e.contains("service \"web\"") && e.contains("ACL not found") && e.contains("ACL token"), "{e}");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(r.serves(&[&b1]), "backends lost:\n{}", r.myelin.log());
    // Nowhere to be seen: logs, status, render, check.
    let (_, rendered, render_err) = r.env.myelin_once(&["render", "-c", r.cfg.to_str().unwrap()]);
    let (_, checked, check_err) = r.env.myelin_once(&["check", "-c", r.cfg.to_str().unwrap()]);
    let everything = format!("{}{}{rendered}{render_err}{checked}{check_err}", r.myelin.log(), r.status());
    for secret in ["good-token", "env-token", "rotated-token"] {
        assert!(!everything.contains(secret), "{secret} shows:\n{everything}");
    }
    assert!(render_err.contains("403"), "render names the problem: {render_err}");
}

#[test]
fn tags_and_only_passing_false_with_warning_weights() {
    let consul = Consul::start(100);
    let b1 = Backend::start("web-1");
    let b2 = Backend::start("web-2");
    for (b, tags) in [(&b1, ["v2", "blue"]), (&b2, ["v2", "green"])] {
        consul.register_json(&serde_json::json!({"ID": b.name, "Name": "web", "Tags": tags, "Address": "127.0.0.1", "Port": b.port,
            "Weights": {"Passing": 10, "Warning": 3}, "Meta": {"zone": "a"}, "Check": {"TTL": "30s", "Status": "passing"}}));
    }
    let r = Running::start(consul, "      tags: [v2]\n      only_passing: false\n      wait: 5\n      label_filters: [{label: zone, value: a}]\n", &[]);
    r.wait_serves(&[&b1, &b2], "at start");
    r.consul.check("web-2", "warn");
    let weight = |name: &str| r.env.active_servers("web").unwrap().into_iter().find(|s| s.0 == name).map(|s| s.2);
    assert!(wait_for(SOON, || weight("node1:web-2") == Some(3)).is_some(), "{:?}", r.env.active_servers("web"));
    assert_eq!(weight("node1:web-1"), Some(10));
    r.consul.check("web-2", "fail");
    r.wait_serves(&[&b1], "critical is never routed");
}

#[test]
fn services_by_tag_get_their_frontend_without_a_config_change() {
    let consul = Consul::start(100);
    let web = Backend::start("web-1");
    let api = Backend::start("api-1");
    let billing = Backend::start("billing-1");
    let (api_port, billing_port) = (free_port(), free_port());
    register(&consul, &web, "passing");
    consul.register("api-1", "api", api.port, &["myelin", &format!("myelin-port={api_port}")], "passing");
    consul.register("other-1", "other", api.port, &["not-this-tag", "myelin-port=1"], "passing");
    let env = Env::new();
    let admin = free_port();
    let disc = format!("      method: consul\n      address: {}\n      wait: 5\n", consul.address());
    let extra = format!(
        "{}admin: {{bind: {admin}}}\nconsul_services:\n  tag: myelin\n  discovery: {{address: '{}', wait: 5}}\n  haproxy: {{bind_address: 127.0.0.1, server_options: check inter 500ms}}\n",
        env.runtime_extra(),
        consul.address()
    );
    let cfg = env.write_config_with(&disc, "", &extra);
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    let serves = |port: u16, who: &Backend| answers(port, 3) == set(&[who]);
    assert!(wait_for(Duration::from_secs(10), || serves(env.frontend_port, &web)).is_some(), "{}", myelin.log());
    assert!(wait_for(Duration::from_secs(10), || serves(api_port, &api)).is_some(), "api: {}", myelin.log());

    // A new tagged service: its own frontend, the config file untouched.
    consul.register("billing-1", "billing", billing.port, &["myelin", &format!("myelin-port={billing_port}")], "passing");
    let took = wait_for(Duration::from_secs(10), || serves(billing_port, &billing));
    assert!(took.is_some(), "billing: {}", myelin.log());
    eprintln!("new tagged service served after {took:?}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), cfg_text);
    let (_, body) = get(admin, "/status").unwrap();
    let status: Value = serde_json::from_str(&body).unwrap();
    assert!(status["services"]["billing"].is_object(), "{status}");
    assert!(status["services"].get("other").is_none(), "{status}");

    // Its instances follow Consul like any service's.
    let billing2 = Backend::start("billing-2");
    consul.register("billing-2", "billing", billing2.port, &["myelin", &format!("myelin-port={billing_port}")], "passing");
    assert!(wait_for(SOON, || answers(billing_port, 6) == set(&[&billing, &billing2])).is_some(), "{}", myelin.log());

    // Gone from Consul: its frontend goes, the others stay.
    consul.deregister("billing-1");
    consul.deregister("billing-2");
    let gone = wait_for(Duration::from_secs(10), || get(billing_port, "/").is_err());
    assert!(gone.is_some(), "billing still answers: {:?}\n{}", get(billing_port, "/"), myelin.log());
    assert!(!std::fs::read_to_string(env.haproxy_cfg()).unwrap().contains("billing"));
    assert!(serves(api_port, &api) && serves(env.frontend_port, &web));

    // myelin restarts: it waits for the catalog before its first apply, so the tagged
    // service's frontend is not dropped and HAProxy is not reloaded.
    let mut myelin = myelin;
    myelin.signal("TERM");
    assert!(myelin.wait_exit(Duration::from_secs(10)).is_some());
    let reloads = env.reloads().unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.reloads().unwrap(), reloads, "{}", myelin.log());
    assert!(serves(api_port, &api) && serves(env.frontend_port, &web));
}
