//! Announcing to etcd on one host: the etcd backend and the reconcile loop against the real
//! three-member cluster (integration/etcd-cluster.sh), each test under its own key prefix; and
//! one host end to end: the private Docker engine (integration/docker-engine.sh), myelin
//! announcing its containers to etcd and routing them from there through HAProxy. (The
//! two-host tests are in their own file.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use etcd_client::{Client, GetOptions};
use myelin_announce::{reconcile, AnnounceState, AnnounceStatus, Desired, Instance, InstanceId, Owner, Registry};
use myelin_integration::docker::Engine;
use myelin_integration::etcd::Cluster;
use myelin_integration::{free_port, get, wait_for, Env};
use myelin_source::Context;
use myelin_watch_etcd::EtcdAnnounce;
use tokio::sync::watch;

fn prefix(test: &str) -> String {
    format!("/myelin-test/announce-{test}-{}", std::process::id())
}

fn registry(cluster: &Cluster, prefix: &str, owner: &str, ttl: u64) -> myelin_watch_etcd::EtcdRegistry {
    let yaml = format!("{{endpoints: [{}], path: {prefix}, ttl: {ttl}, timeout: 2}}", cluster.endpoints.join(", "));
    let a: EtcdAnnounce = serde_yaml_ng::from_str(&yaml).unwrap();
    assert!(a.check().is_empty());
    let cx = Context { service: myelin_source::ServiceName::parse("web").unwrap(), config_file: "/etc/myelin/myelin.yaml".into() };
    a.registry(Owner::new(owner).unwrap(), &cx).unwrap()
}

fn inst(owner: &str, container: &str, port: u16) -> Instance {
    Instance {
        id: InstanceId::new(&Owner::new(owner).unwrap(), container, 8000).unwrap(),
        host: "127.0.0.1".parse().unwrap(),
        port,
        name: container.into(),
        weight: None,
        labels: BTreeMap::new(),
    }
}

/// Every key under `prefix` with its value and lease.
async fn read(cluster: &Cluster, prefix: &str) -> Result<BTreeMap<String, (String, i64)>> {
    let mut c = Client::connect(cluster.endpoints.clone(), None).await?;
    let r = c.get(format!("{prefix}/"), Some(GetOptions::new().with_prefix())).await?;
    Ok(r.kvs().iter().map(|kv| (kv.key_str().unwrap().to_owned(), (kv.value_str().unwrap().to_owned(), kv.lease()))).collect())
}

/// A runtime for one test, whose cluster guard is held outside it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn wait_until<F: std::future::Future<Output = bool>>(bound: Duration, mut f: impl FnMut() -> F) -> bool {
    let end = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn the_etcd_backend_publishes_on_a_lease_adopts_and_expires() -> Result<()> {
    let cluster = Cluster::get();
    let _g = cluster.shared();
    runtime().block_on(async {
        let p = prefix("backend");
        let mut r = registry(cluster, &p, "host-a", 2);
        assert!(r.connect().await?.is_empty());
        r.publish(&inst("host-a", "web-1", 32001)).await?;
        r.publish(&inst("host-a", "web-2", 32002)).await?;
        // Another host's entry under the same prefix.
        let mut other = registry(cluster, &p, "host-b", 30);
        other.connect().await?;
        other.publish(&inst("host-b", "web-1", 32003)).await?;
        let keys = read(cluster, &p).await?;
        let k1 = format!("{p}/host-a_web-1_8000");
        assert_eq!(keys.keys().cloned().collect::<Vec<_>>(), [k1.clone(), format!("{p}/host-a_web-2_8000"), format!("{p}/host-b_web-1_8000")]);
        assert_eq!(keys[&k1].0, r#"{"host":"127.0.0.1","port":32001,"name":"web-1"}"#);
        let lease = keys[&k1].1;
        assert_ne!(lease, 0, "published on a lease");
        r.withdraw(&inst("host-a", "web-2", 0).id).await?;
        r.withdraw(&inst("host-a", "web-2", 0).id).await?; // absent is success

        // Kept alive past its TTL.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            r.keepalive().await?;
        }
        assert!(read(cluster, &p).await?.contains_key(&k1));

        // A new connection (a restart) lists this owner's ids only, and re-puts on its new lease.
        let mut again = registry(cluster, &p, "host-a", 2);
        let ids: Vec<String> = again.connect().await?.into_iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, ["host-a_web-1_8000"]);
        again.publish(&inst("host-a", "web-1", 32001)).await?;
        let moved = read(cluster, &p).await?[&k1].1;
        assert!(moved != 0 && moved != lease, "re-put on the new lease");

        // Nobody keeps either lease alive now: etcd deletes the keys after the TTL.
        drop((r, again));
        let gone = wait_until(Duration::from_secs(6), || async { read(cluster, &p).await.map(|k| !k.contains_key(&k1)).unwrap_or(false) }).await;
        assert!(gone, "the key outlived its lease");
        // The other host's entry is still there while it keeps its lease alive.
        other.keepalive().await?;
        assert!(read(cluster, &p).await?.contains_key(&format!("{p}/host-b_web-1_8000")));
        other.withdraw(&inst("host-b", "web-1", 0).id).await?;
        Ok(())
    })
}

#[test]
fn the_reconcile_loop_against_etcd() -> Result<()> {
    let cluster = Cluster::get();
    let _g = cluster.shared();
    runtime().block_on(async {
        let p = prefix("loop");
        let set = |items: &[Instance]| -> Option<Desired> { Some(Arc::new(items.iter().map(|i| (i.id.clone(), i.clone())).collect())) };
        let r = registry(cluster, &p, "host-a", 10);
        let (dtx, drx) = watch::channel(set(&[inst("host-a", "a", 1), inst("host-a", "b", 2)]));
        let (stx, mut status) = watch::channel(AnnounceStatus::new(&r));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(reconcile(r, drx, stx, async move {
            let _ = stop_rx.await;
        }));
        let ids = |p: String| async move { read(Cluster::get(), &p).await.map(|k| k.into_keys().collect::<Vec<_>>()).unwrap_or_default() };
        assert!(wait_until(Duration::from_secs(5), || async { ids(p.clone()).await.len() == 2 }).await);
        status.wait_for(|s| s.state == AnnounceState::Announcing && s.published.len() == 2).await?;
        assert_eq!(status.borrow().expiry, Duration::from_secs(10));
        dtx.send_replace(set(&[inst("host-a", "b", 2)]));
        assert!(wait_until(Duration::from_secs(5), || async { ids(p.clone()).await == [format!("{p}/host-a_b_8000")] }).await);
        // Stop: everything withdrawn at once (not left to the lease).
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        assert!(ids(p.clone()).await.is_empty());
        assert_eq!(status.borrow().state, AnnounceState::Stopped);
        Ok(())
    })
}

/// `read` from a synchronous test; a read that fails (a leader election after another test
/// killed a member) is tried again rather than taken for no keys.
fn keys(prefix: &str) -> BTreeMap<String, (String, i64)> {
    let rt = runtime();
    for _ in 0..20 {
        if let Ok(k) = rt.block_on(read(Cluster::get(), prefix)) {
            return k;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("etcd cannot be read")
}

#[test]
fn one_host_announces_its_ready_containers_and_withdraws_them() {
    let engine = Engine::get().unwrap();
    let cluster = Cluster::get();
    let _g = cluster.shared();
    let env = Env::new();
    let p = prefix("e2e");
    let owner = format!("smoke-{}", std::process::id());
    let admin = free_port();
    let discovery = format!("      method: etcd\n      endpoints: {}\n      path: {p}\n", cluster.yaml_endpoints());
    let announce = format!(
        "    announce:\n      containers: {{socket: {}, image_name: local/nodeapp, container_port: 8000, labels: {{myelin.test: announce}}}}\n      address: 127.0.0.1\n      to: {{method: etcd, endpoints: {}, path: {p}, ttl: 3}}\n",
        engine.socket.display(),
        cluster.yaml_endpoints()
    );
    let cfg = env.write_config_with(&discovery, &announce, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("announce_as: {owner}\nadmin: {{bind: {admin}}}\n{text}")).unwrap();
    let (_haproxy, mut myelin) = env.start(&cfg).unwrap();
    let bound = Duration::from_secs(5);

    // A container started: announced (the Nerve JSON, the published port on the announced
    // address), then routed from etcd by this host's HAProxy.
    let c1 = engine.run_published("announce", &[]).unwrap();
    let name = c1.name().unwrap();
    let key = format!("{p}/{owner}_{name}_8000");
    assert!(wait_for(bound, || keys(&p).contains_key(&key)).is_some(), "not announced: {:?}\n{}", keys(&p), myelin.log());
    let value = keys(&p)[&key].0.clone();
    // Named by its instance id: the same container name on another host stays another server.
    let server = format!("{owner}_{name}_8000");
    assert!(value.starts_with(&format!(r#"{{"host":"127.0.0.1","port":{},"name":"{server}""#, c1.port().unwrap())), "{value}");
    assert!(wait_for(bound, || env.routable_servers().unwrap_or_default().contains(&server)).is_some(), "{}", myelin.log());
    assert!(wait_for(bound, || get(env.frontend_port, "/").is_ok_and(|(c, b)| c == 200 && b.trim() == c1.id)).is_some());
    let (_, status) = get(admin, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["announce_as"], owner.as_str());
    assert_eq!(status["announce"]["web"]["state"], "announcing", "{status}");
    assert_eq!(status["announce"]["web"]["published"][0], format!("{owner}_{name}_8000"), "{status}");
    assert_eq!(status["announce"]["web"]["expiry_seconds"], 3.0);
    let (_, metrics) = get(admin, "/metrics").unwrap();
    assert!(metrics.contains("myelin_announced{service=\"web\"} 1") && metrics.contains("myelin_announce_failing{service=\"web\"} 0"), "{metrics}");
    let (code, table, _) = env.myelin_once(&["status", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(table.contains(&format!("announcing as {owner}:")) && table.contains("web  announcing  to etcd"), "{table}");

    // SIGHUP with a new TTL on the same registry: the new settings take the key over (a new
    // lease), and it is never missing meanwhile.
    let lease = keys(&p)[&key].1;
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("ttl: 3", "ttl: 4")).unwrap();
    myelin.signal("HUP");
    let mut missing = 0;
    let moved = wait_for(bound, || {
        let k = keys(&p);
        missing += usize::from(!k.contains_key(&key));
        k.get(&key).is_some_and(|(_, l)| *l != lease)
    });
    assert!(moved.is_some() && missing == 0, "moved: {moved:?}, missing {missing} times\n{}", myelin.log());
    let expiry = || get(admin, "/status").ok().and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok()).map(|s| s["announce"]["web"]["expiry_seconds"].clone());
    assert!(wait_for(bound, || expiry() == Some(serde_json::json!(4.0))).is_some(), "{:?}", expiry());
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("ttl: 4", "ttl: 3")).unwrap();
    myelin.signal("HUP");
    assert!(wait_for(bound, || expiry() == Some(serde_json::json!(3.0))).is_some(), "{:?}", expiry());

    // `docker stop`: withdrawn at its start, while the container still runs (PID-1 httpd ignores
    // SIGTERM, so it runs for the whole 3 s timeout).
    let id = c1.id.clone();
    let stopping = std::thread::spawn(move || Engine::docker_unlocked(&["stop", "-t", "3", &id]));
    let gone = wait_for(bound, || !keys(&p).contains_key(&key));
    let running = engine.docker(&["inspect", "-f", "{{.State.Running}}", &c1.id]).unwrap();
    assert!(gone.is_some(), "still announced after docker stop");
    assert_eq!(running, "true", "withdrawn only after the container stopped ({gone:?})");
    stopping.join().unwrap().unwrap();
    drop(c1);

    // myelin killed (SIGKILL) and restarted within the TTL: the same key, on a new lease, never
    // missing in between.
    let c2 = engine.run_published("announce", &[]).unwrap();
    let key2 = format!("{p}/{owner}_{}_8000", c2.name().unwrap());
    assert!(wait_for(bound, || keys(&p).contains_key(&key2)).is_some(), "{}", myelin.log());
    let lease = keys(&p)[&key2].1;
    myelin.signal("KILL");
    myelin.wait_exit(bound);
    let mut myelin = env.start_myelin(&cfg).unwrap();
    let mut missing = 0;
    let moved = wait_for(bound, || {
        let k = keys(&p);
        missing += usize::from(!k.contains_key(&key2));
        k.get(&key2).is_some_and(|(_, l)| *l != lease)
    });
    assert!(moved.is_some() && missing == 0, "moved: {moved:?}, missing {missing} times: {:?}\n{}", keys(&p), myelin.log());
    assert_eq!(keys(&p).len(), 1, "duplicates: {:?}", keys(&p));

    // Killed and not restarted: etcd drops the key after the TTL (3 s).
    myelin.signal("KILL");
    myelin.wait_exit(bound);
    let t0 = std::time::Instant::now();
    assert!(wait_for(Duration::from_secs(8), || keys(&p).is_empty()).is_some(), "the key outlived the lease");
    eprintln!("expired {:?} after SIGKILL (ttl 3 s)", t0.elapsed());
    let mut myelin = env.start_myelin(&cfg).unwrap();
    assert!(wait_for(bound, || keys(&p).contains_key(&key2)).is_some(), "not announced again: {}", myelin.log());

    // A clean stop withdraws everything before myelin exits.
    myelin.signal("TERM");
    assert_eq!(myelin.wait_exit(bound), Some(0), "{}", myelin.log());
    assert!(keys(&p).is_empty(), "left after SIGTERM: {:?}", keys(&p));
    assert!(myelin.log().contains("withdrawn=1"), "{}", myelin.log());
}

#[test]
fn the_member_in_use_killed_loses_nothing() -> Result<()> {
    let cluster = Cluster::get();
    let _g = cluster.exclusive();
    runtime().block_on(async {
        let p = prefix("member");
        let key = format!("{p}/host-a_a_8000");
        // Reads through the members that stay up.
        let survivors = Cluster { endpoints: cluster.endpoints[1..].to_vec() };
        let r = registry(cluster, &p, "host-a", 3);
        let (_dtx, drx) = watch::channel(Some(Arc::new([(inst("host-a", "a", 1).id, inst("host-a", "a", 1))].into_iter().collect())));
        let (stx, mut status) = watch::channel(AnnounceStatus::new(&r));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(reconcile(r, drx, stx, async move {
            let _ = stop_rx.await;
        }));
        status.wait_for(|s| s.state == AnnounceState::Announcing && s.published.len() == 1).await?;
        let lease = read(&survivors, &p).await?[&key].1;
        // The registry connects to the first member first: kill it.
        cluster.kill(1)?;
        let t0 = tokio::time::Instant::now();
        let mut missing = 0;
        let mut moved = false;
        // Three TTLs: the old lease is long gone by then, so the key lives on the new one.
        while t0.elapsed() < Duration::from_secs(9) {
            match read(&survivors, &p).await {
                Ok(k) => {
                    missing += usize::from(!k.contains_key(&key));
                    moved |= k.get(&key).is_some_and(|(_, l)| *l != lease);
                }
                Err(e) => eprintln!("read failed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.restore()?;
        assert_eq!(missing, 0, "the key was missing {missing} times");
        assert!(moved, "not re-put on a lease of another member");
        assert_eq!(status.borrow().state, AnnounceState::Announcing, "{:?}", status.borrow());
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        assert!(read(cluster, &p).await?.is_empty());
        Ok(())
    })
}

#[test]
fn myelin_s_own_check_gates_announcing() {
    let engine = Engine::get().unwrap();
    let cluster = Cluster::get();
    let _g = cluster.shared();
    let env = Env::new();
    let p = prefix("check");
    let owner = format!("check-{}", std::process::id());
    let discovery = format!("      method: etcd\n      endpoints: {}\n      path: {p}\n", cluster.yaml_endpoints());
    let announce = format!(
        "    announce:\n      containers: {{socket: {}, image_name: local/nodeapp, container_port: 8000, labels: {{myelin.test: announce-check}}}}\n      address: 127.0.0.1\n      check: {{type: http, path: /index.html, interval: 0.2, timeout: 1, rise: 2, fall: 1}}\n",
        engine.socket.display()
    );
    let cfg = env.write_config_with(&discovery, &announce, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("announce_as: {owner}\n{text}")).unwrap();
    let (_haproxy, myelin) = env.start(&cfg).unwrap();
    let bound = Duration::from_secs(5);
    let c = engine.run_published("announce-check", &[]).unwrap();
    let key = format!("{p}/{owner}_{}_8000", c.name().unwrap());
    assert!(wait_for(bound, || keys(&p).contains_key(&key)).is_some(), "not announced after its check passed: {}", myelin.log());
    // The check fails (the page is gone: 404) while the container runs: withdrawn.
    engine.docker(&["exec", &c.id, "/bin/busybox", "rm", "/www/index.html"]).unwrap();
    assert!(wait_for(bound, || !keys(&p).contains_key(&key)).is_some(), "still announced with a failing check: {}", myelin.log());
    assert!(myelin.log().contains("Check failed: not announced."), "{}", myelin.log());
    // Passing again (twice: rise 2): announced again.
    engine.docker(&["exec", &c.id, "/bin/busybox", "sh", "-c", "echo back > /www/index.html"]).unwrap();
    assert!(wait_for(bound, || keys(&p).contains_key(&key)).is_some(), "not announced again: {}", myelin.log());
}
