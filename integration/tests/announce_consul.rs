//! Announcing to Consul, against the Consul test double (`myelin_integration::consul`, which
//! follows Consul's documented agent API: service registration, TTL checks that expire, the
//! reaper of critical services). The backend directly: publish, keepalive, withdraw, connect
//! listing only this owner's registrations, expiry when keepalives stop, and the token.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use myelin_announce::{AnnounceError, Instance, InstanceId, Owner, Registry};
use myelin_core::ServiceName;
use myelin_integration::consul::Consul;
use myelin_source::Context;
use myelin_watch_consul::payload::{self, Selection};
use myelin_watch_consul::{ConsulAnnounce, ConsulRegistry};
use serde_json::json;

fn cx() -> Context {
    Context { service: ServiceName::parse("web").unwrap(), config_file: "/etc/myelin/myelin.yaml".into() }
}

fn registry(c: &Consul, owner: &str, extra: &str) -> ConsulRegistry {
    let yaml = format!("{{address: '{}', {extra}}}", c.address());
    let a: ConsulAnnounce = serde_yaml_ng::from_str(&yaml).unwrap();
    assert!(a.check().is_empty(), "{:?}", a.check());
    a.registry(Owner::new(owner).unwrap(), &cx()).ok().unwrap()
}

fn instance(owner: &str, container: &str, port: u16, weight: Option<u16>) -> Instance {
    let id = InstanceId::new(&Owner::new(owner).unwrap(), container, 8080).unwrap();
    Instance { name: id.to_string(), id, host: "127.0.0.1".parse().unwrap(), port, weight, labels: [("az".to_owned(), "a".to_owned()), ("com.example.team".to_owned(), "x".to_owned())].into() }
}

/// What a watcher of the service routes now: (server name, port, weight) of each instance
/// `GET /v1/health/service/web?passing=1` gives, through the watcher's own payload code.
fn routed(c: &Consul) -> Vec<(String, String, Option<String>)> {
    let (code, body) = c.call("GET", "/v1/health/service/web?passing=1", "", None).unwrap();
    assert_eq!(code, 200, "{body}");
    let sel = Selection { tags: vec![], only_passing: true, tagged_address: None };
    payload::instances(body.as_bytes(), &sel).unwrap().records.into_iter().map(|d| (d.name.unwrap(), d.port, d.weight)).collect()
}

fn ids(v: &[&str]) -> BTreeSet<InstanceId> {
    v.iter().map(|s| InstanceId::parse(s).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_keepalive_withdraw_and_only_this_owners_registrations() {
    let c = Consul::start(10);
    // Another host's registration of the same service, and this host's of another service.
    c.register_json(&json!({"ID": "host-b_web_1_8080", "Name": "web", "Address": "127.0.0.1", "Port": 9100, "Meta": {"myelin_owner": "host-b"},
        "Check": {"TTL": "60s", "Status": "passing"}}));
    c.register_json(&json!({"ID": "host-a_db_1_5432", "Name": "db", "Address": "127.0.0.1", "Port": 9200, "Meta": {"myelin_owner": "host-a"}}));
    let mut r = registry(&c, "host-a", "ttl: 1, deregister_critical_after: 60");
    assert_eq!(r.target(), format!("consul {} service \"web\"", c.address()));
    assert_eq!((r.expiry(), r.keepalive_every()), (Duration::from_secs(1), Duration::from_secs(1) / 3));
    assert_eq!(r.connect().await.unwrap(), ids(&[]));

    let one = instance("host-a", "web_1", 9001, Some(5));
    let two = instance("host-a", "web_2", 9002, None);
    r.publish(&one).await.unwrap();
    r.publish(&two).await.unwrap();
    assert_eq!(
        routed(&c),
        [
            ("node1:host-a_web_1_8080".to_owned(), "9001".to_owned(), Some("5".to_owned())),
            ("node1:host-a_web_2_8080".to_owned(), "9002".to_owned(), Some("1".to_owned())),
            ("node1:host-b_web_1_8080".to_owned(), "9100".to_owned(), Some("1".to_owned())),
        ]
    );
    // Meta: the labels Consul accepts, the weight and the owner; the dotted label is left out.
    let reg = c.agent_service("host-a_web_1_8080").unwrap();
    assert_eq!(reg["Meta"], json!({"az": "a", "myelin_owner": "host-a", "weight": "5"}));
    assert_eq!(reg["Address"], "127.0.0.1");

    // Kept alive past several TTLs.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        r.keepalive().await.unwrap();
        tokio::time::sleep(r.keepalive_every()).await;
    }
    assert_eq!(c.check_status("service:host-a_web_1_8080").as_deref(), Some("passing"));
    assert_eq!(routed(&c).len(), 3);

    // Publishing again (a changed weight) replaces the registration.
    r.publish(&instance("host-a", "web_1", 9001, Some(7))).await.unwrap();
    assert_eq!(routed(&c)[0].2.as_deref(), Some("7"));

    // A restarted myelin (a new connection) finds exactly its own registrations of `web`.
    let mut again = registry(&c, "host-a", "ttl: 1");
    assert_eq!(again.connect().await.unwrap(), ids(&["host-a_web_1_8080", "host-a_web_2_8080"]));
    let mut b = registry(&c, "host-b", "");
    assert_eq!(b.connect().await.unwrap(), ids(&["host-b_web_1_8080"]));

    // Withdraw: gone from what watchers route; again is still success.
    r.withdraw(&two.id).await.unwrap();
    r.withdraw(&two.id).await.unwrap();
    assert_eq!(routed(&c).iter().map(|x| x.1.as_str()).collect::<Vec<_>>(), ["9001", "9100"]);
    assert_eq!(c.service_ids(), ["host-a_db_1_5432", "host-a_web_1_8080", "host-b_web_1_8080"]);
    r.keepalive().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keepalives_watchers_drop_it_after_the_ttl_and_the_agent_reaps_it() {
    let c = Consul::start(10);
    // Consul's reaper: a minimum of 1 minute, every 30 s; shortened for the test (same path).
    c.set_reaper(Duration::from_millis(500), Duration::from_millis(100));
    let mut r = registry(&c, "host-a", "ttl: 1, deregister_critical_after: 1");
    r.connect().await.unwrap();
    let one = instance("host-a", "web_1", 9001, None);
    r.publish(&one).await.unwrap();
    let t0 = Instant::now();
    assert_eq!(routed(&c).len(), 1);
    // myelin "killed": no more keepalives. Routed until the TTL, dropped after it.
    while !routed(&c).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(4), "still routed after {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = t0.elapsed();
    assert!(dropped >= Duration::from_millis(900), "dropped after {dropped:?}, before the TTL");
    assert_eq!(c.check_status("service:host-a_web_1_8080").as_deref(), Some("critical"));
    // Then deregistered by the agent after DeregisterCriticalServiceAfter.
    while !c.service_ids().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "not reaped after {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A keepalive now fails (the agent lost the check): the reconcile loop connects again and
    // registers it anew.
    let e = r.keepalive().await.unwrap_err();
    assert!(matches!(e, AnnounceError::Failed { .. }) && e.report().contains("404"), "{}", e.report());
    assert_eq!(r.connect().await.unwrap(), ids(&[]));
    r.publish(&one).await.unwrap();
    assert_eq!(routed(&c).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_weight_0_is_kept_at_warning() {
    let c = Consul::start(10);
    let mut r = registry(&c, "host-a", "ttl: 1");
    r.connect().await.unwrap();
    r.publish(&instance("host-a", "web_1", 9001, Some(0))).await.unwrap();
    for _ in 0..5 {
        r.keepalive().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(c.check_status("service:host-a_web_1_8080").as_deref(), Some("warning"));
    assert!(routed(&c).is_empty());
    let (_, body) = c.call("GET", "/v1/health/service/web", "", None).unwrap();
    let sel = Selection { tags: vec![], only_passing: false, tagged_address: None };
    let all = payload::instances(body.as_bytes(), &sel).unwrap().records;
    assert_eq!(all.iter().map(|d| d.weight.as_deref()).collect::<Vec<_>>(), [Some("0")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_and_an_unreachable_agent() {
    let c = Consul::start(10);
    c.set_token(Some("right-token"));
    let mut ok = registry(&c, "host-a", "token: right-token");
    ok.connect().await.unwrap();
    ok.publish(&instance("host-a", "web_1", 9001, None)).await.unwrap();
    let mut wrong = registry(&c, "host-a", "token: wrong-token");
    let e = wrong.connect().await.unwrap_err().report();
    assert!(e.contains("403") && e.contains("ACL token from the config") && !e.contains("wrong-token"), "{e}");
    let port = c.port;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a: ConsulAnnounce = serde_yaml_ng::from_str(&format!("{{address: 'http://127.0.0.1:{port}'}}")).unwrap();
    let mut gone = a.registry(Owner::new("host-a").unwrap(), &cx()).ok().unwrap();
    let e = gone.connect().await.unwrap_err();
    assert!(matches!(e, AnnounceError::Unreachable { .. }), "{}", e.report());
}

/// The reconcile loop on the Consul backend: the agent loses a registration (404 on the next
/// check pass) and the loop registers it again; the agent restarts (connections closed, its
/// registrations kept) and the loop goes on; at stop everything is deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_loop_keeps_the_agent_true() {
    use std::sync::Arc;

    use myelin_announce::{reconcile, AnnounceState, AnnounceStatus, Desired};
    use tokio::sync::watch;

    let c = Consul::start(10);
    let r = registry(&c, "host-a", "ttl: 1");
    let one = instance("host-a", "web_1", 9001, None);
    let desired: Option<Desired> = Some(Arc::new([(one.id.clone(), one.clone())].into()));
    let (_dtx, drx) = watch::channel(desired);
    let (stx, mut status) = watch::channel(AnnounceStatus::new(&r));
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reconcile(r, drx, stx, async move {
        let _ = stop_rx.await;
    }));
    let until = |c: &Consul, what: &str, f: &dyn Fn(&Consul) -> bool| {
        let t0 = Instant::now();
        while !f(c) {
            assert!(t0.elapsed() < Duration::from_secs(8), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until(&c, "never routed", &|c| routed(c).len() == 1);
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.state == AnnounceState::Announcing && s.published.len() == 1)).await.unwrap().unwrap();

    // The agent loses it (e.g. restarted without its data): registered again.
    c.deregister(one.id.as_str());
    assert!(routed(&c).is_empty());
    until(&c, "not registered again", &|c| routed(c).len() == 1);

    // The agent restarts (its registrations kept): still passing two TTLs later.
    let c = tokio::task::spawn_blocking(move || c.restart(20)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(routed(&c).len(), 1, "{:?}", status.borrow());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert!(c.service_ids().is_empty(), "{:?}", c.service_ids());
    assert_eq!(status.borrow().state, AnnounceState::Stopped);
}

// ---- End to end: two hosts (each a private Docker engine, its own myelin and HAProxy; see
// `myelin_integration::fleet`), both discovering `web` from the Consul test double, host A
// announcing its containers there. The double stands for the Consul cluster: here both hosts'
// "local agent" is the same one.

mod e2e {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use myelin_integration::consul::Consul;
    use myelin_integration::fleet::{logs, pair_routing_each_other, stop_under_load, until};

    const BOUND: Duration = Duration::from_secs(5);
    /// Host A's check TTL (seconds): the bound after which B drops a killed A's instances.
    const TTL: u64 = 2;

    fn consul_ids(c: &Consul, owner: &str) -> BTreeSet<String> {
        c.service_ids().into_iter().filter(|id| id.starts_with(&format!("{owner}_"))).collect()
    }

    #[test]
    fn a_container_on_a_is_routed_by_b_drained_before_it_dies_and_expires_after_the_ttl() {
        let c = Consul::start(1);
        let discovery = format!("method: consul\naddress: '{}'\nwait: 5\n", c.address());
        let label = format!("consul-e2e-{}", std::process::id());
        // A announces with an explicit `to` (a short TTL); B with the default (its discovery's).
        let to_a = format!("method: consul\naddress: '{}'\nttl: {TTL}\n", c.address());
        let (mut a, b, on_a, on_b) = pair_routing_each_other(&discovery, Some(&to_a), &label);
        let id_a = format!("host-a_{}_8000", on_a.name().unwrap());
        let reg = c.agent_service(&id_a).unwrap();
        assert_eq!((reg["Meta"]["myelin_owner"].as_str(), reg["Port"].as_u64(), reg["Address"].as_str()), (Some("host-a"), Some(u64::from(on_a.port)), Some("127.0.0.1")), "{reg}");
        assert_eq!(consul_ids(&c, "host-b"), [format!("host-b_{}_8000", on_b.name().unwrap())].into());
        let st = a.status();
        assert!(st.to_string().contains(&id_a), "A's /status does not show what it announces: {st}");

        // `docker stop` on A under ~50 requests/s through B: none fails, B drains it first.
        stop_under_load(&a, &b, &on_a);
        assert!(consul_ids(&c, "host-a").is_empty(), "{:?}", c.service_ids());

        // A's myelin killed: the registration stays, its check turns critical after the TTL,
        // and B drops it then.
        let on_a = a.engine.run(&label, "127.0.0.1::8000", &[]).unwrap();
        let id_a = format!("host-a_{}_8000", on_a.name().unwrap());
        assert!(until(BOUND, || b.routed().contains(&on_a.port)), "{}", logs(&a, &b));
        a.kill_myelin().unwrap();
        let t0 = Instant::now();
        let gone = until(Duration::from_secs(TTL + 4), || !b.routed().contains(&on_a.port));
        let took = t0.elapsed();
        assert!(gone, "B still routes A's instance {took:?} after the kill\n{}", logs(&a, &b));
        eprintln!("B dropped A's instance {took:?} after A's myelin was killed (ttl {TTL} s)");
        assert!(took <= Duration::from_secs(TTL + 2), "later than the TTL: {took:?}");
        assert_eq!(c.check_status(&format!("service:{id_a}")).as_deref(), Some("critical"));

        // Restarted: the same registration passes again, routed by B, no duplicates.
        a.start_myelin().unwrap();
        let want: BTreeSet<u16> = [on_a.port, on_b.port].into();
        assert!(until(BOUND, || b.routed() == want && a.routed() == want), "a {:?} b {:?}\n{}", a.routed(), b.routed(), logs(&a, &b));
        assert_eq!(consul_ids(&c, "host-a"), [id_a.clone()].into());
        assert_eq!(b.servers().len(), 2, "B's servers: {:?}", b.servers());

        // A clean stop withdraws: gone from Consul and from B at once, not after the TTL.
        a.stop_myelin().unwrap();
        assert!(consul_ids(&c, "host-a").is_empty(), "{:?}", c.service_ids());
        assert!(until(BOUND, || b.routed() == [on_b.port].into()), "{:?}\n{}", b.routed(), logs(&a, &b));
    }
}
