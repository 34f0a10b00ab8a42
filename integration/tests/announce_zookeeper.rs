//! Announcing to ZooKeeper, against a real ZooKeeper server of this test binary's own (on its
//! own port; `integration/zookeeper.sh`). The backend directly: publish, keepalive, withdraw,
//! connect listing only this owner's nodes, a restarted myelin taking over its previous
//! session's nodes with no gap in what a watcher sees, and expiry when myelin dies.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use myelin_announce::{Instance, InstanceId, Owner, Registry};
use myelin_core::{ServiceName, Update};
use myelin_integration::zookeeper::PrivateZk;
use myelin_source::{Context, SourceError};
use myelin_watch_zookeeper::{Format, Mode, Settings, ZookeeperAnnounce, ZookeeperRegistry, ZookeeperSource};
use tokio::sync::mpsc;
use zookeeper_client::{Acls, Client, CreateMode};

const PATH: &str = "/services/web";

/// A plain client of the server (another host's registrar, or a look at the path).
async fn client(zk: &PrivateZk) -> Client {
    tokio::time::timeout(Duration::from_secs(10), Client::connector().with_session_timeout(Duration::from_secs(10)).connect(&zk.address())).await.unwrap().unwrap()
}

async fn children(c: &Client) -> Vec<String> {
    let mut v = c.list_children(PATH).await.unwrap();
    v.sort();
    v
}

fn cx() -> Context {
    Context { service: ServiceName::parse("web").unwrap(), config_file: "/etc/myelin/myelin.yaml".into() }
}

fn registry(zk: &PrivateZk, owner: &str, session_timeout: f64) -> ZookeeperRegistry {
    let a: ZookeeperAnnounce = serde_yaml_ng::from_str(&format!("{{hosts: ['{}'], path: {PATH}, session_timeout: {session_timeout}}}", zk.address())).unwrap();
    assert!(a.check().is_empty(), "{:?}", a.check());
    a.registry(Owner::new(owner).unwrap(), &cx()).ok().unwrap()
}

fn instance(owner: &str, container: &str, port: u16, weight: Option<u16>) -> Instance {
    let id = InstanceId::new(&Owner::new(owner).unwrap(), container, 8080).unwrap();
    Instance { name: id.to_string(), id, host: "127.0.0.1".parse().unwrap(), port, weight, labels: [("az".to_owned(), "a".to_owned())].into() }
}

fn ids(v: &[&str]) -> BTreeSet<InstanceId> {
    v.iter().map(|s| InstanceId::parse(s).unwrap()).collect()
}

/// The ZooKeeper watcher on the path, polled all the time by a task.
fn watch(zk: &PrivateZk) -> mpsc::UnboundedReceiver<Result<Update, SourceError>> {
    let src = ZookeeperSource::new(Settings { connect: zk.address(), path: PATH.into(), format: Format::Nerve, mode: Mode::Watch { jitter: None } });
    let mut s = src.open();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = s.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next(w: &mut mpsc::UnboundedReceiver<Result<Update, SourceError>>, within: Duration) -> Update {
    match tokio::time::timeout(within, w.recv()).await {
        Ok(Some(Ok(u))) => u,
        other => panic!("expected an update within {within:?}, got {other:?}"),
    }
}

/// Everything the watcher yields within `d`.
async fn drain(w: &mut mpsc::UnboundedReceiver<Result<Update, SourceError>>, d: Duration) -> Vec<Update> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + d;
    while let Ok(Some(item)) = tokio::time::timeout_at(end, w.recv()).await {
        out.push(item.expect("no watcher error"));
    }
    out
}

fn key(port: u16, container: &str) -> String {
    format!("host-a_{container}_8080_127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_withdraw_take_over_and_expire() {
    let zk = PrivateZk::start().unwrap();
    let short = Duration::from_secs(5);
    // Another host's entry under the same path.
    let other = client(&zk).await;
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    other.mkdir(PATH, &persistent).await.unwrap();
    other.create(&format!("{PATH}/host-b_web_1_8080"), br#"{"host":"127.0.0.1","port":9100,"name":"host-b_web_1_8080"}"#, &persistent).await.unwrap();

    let mut r = registry(&zk, "host-a", 2.0);
    assert_eq!(r.target(), format!("zookeeper {} {PATH}", zk.address()));
    assert_eq!(r.connect().await.unwrap(), ids(&[]));
    assert_eq!(r.expiry(), Duration::from_secs(2), "the negotiated session timeout");
    let mut w = watch(&zk);
    let Update::Reset(first) = next(&mut w, short).await else { panic!("no reset first") };
    assert_eq!(first.len(), 1);

    let one = instance("host-a", "web_1", 9001, Some(2));
    let two = instance("host-a", "web_2", 9002, None);
    r.publish(&one).await.unwrap();
    r.publish(&two).await.unwrap();
    r.publish(&two).await.unwrap(); // idempotent: same data, no change
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while seen.len() < 2 {
        match next(&mut w, short).await {
            Update::Upsert(d) => {
                assert_eq!(d.host, "127.0.0.1");
                seen.insert(d.key());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, [key(9001, "web_1"), key(9002, "web_2")].into());
    assert!(drain(&mut w, Duration::from_millis(300)).await.is_empty());
    // Kept alive past several session timeouts.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        r.keepalive().await.unwrap();
        tokio::time::sleep(r.keepalive_every()).await;
    }
    assert!(drain(&mut w, Duration::from_millis(100)).await.is_empty());

    // Withdraw; again is success.
    r.withdraw(&two.id).await.unwrap();
    r.withdraw(&two.id).await.unwrap();
    assert_eq!(next(&mut w, short).await, Update::Remove(key(9002, "web_2")));
    // A changed weight rewrites the node in place.
    r.publish(&instance("host-a", "web_1", 9001, Some(3))).await.unwrap();
    let Update::Upsert(d) = next(&mut w, short).await else { panic!() };
    assert_eq!(d.weight.as_deref(), Some("3"));

    // myelin restarts: the old session is still alive (detached) and holds the node. The new
    // one finds only this owner's nodes, and takes them over in one transaction: the watcher
    // sees the new data and never a removal.
    drop(r);
    let mut again = registry(&zk, "host-a", 2.0);
    assert_eq!(again.connect().await.unwrap(), ids(&["host-a_web_1_8080"]));
    let mut b = registry(&zk, "host-b", 2.0);
    assert_eq!(b.connect().await.unwrap(), ids(&["host-b_web_1_8080"]));
    drop(b);
    again.publish(&instance("host-a", "web_1", 9001, Some(4))).await.unwrap();
    let Update::Upsert(d) = next(&mut w, short).await else { panic!("the taken-over node's new data") };
    assert_eq!(d.weight.as_deref(), Some("4"));
    // The old session expires (2 s): the node, now the new session's, stays.
    let later = drain(&mut w, Duration::from_secs(4)).await;
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(children(&other).await, ["host-a_web_1_8080", "host-b_web_1_8080"]);
    again.keepalive().await.unwrap();

    // myelin killed (its client dropped, the session not closed): the node goes when the
    // session expires, within the session timeout.
    drop(again);
    let t0 = Instant::now();
    assert_eq!(next(&mut w, Duration::from_secs(10)).await, Update::Remove(key(9001, "web_1")));
    let gone = t0.elapsed();
    assert!(gone >= Duration::from_millis(1500) && gone <= Duration::from_secs(5), "removed after {gone:?}");
    assert_eq!(children(&other).await, ["host-b_web_1_8080"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_down_then_back() {
    let zk = PrivateZk::start().unwrap();
    let mut r = registry(&zk, "host-a", 4.0);
    r.connect().await.unwrap();
    r.publish(&instance("host-a", "web_1", 9001, None)).await.unwrap();
    zk.kill().unwrap();
    // The session is lost to myelin: keepalive and connect fail (the loop retries with backoff).
    let t0 = Instant::now();
    while r.keepalive().await.is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(10), "keepalive still succeeds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(r.connect().await.is_err());
    zk.restart().unwrap();
    // Back: a connection lists the node (kept by ZooKeeper with the old session, or gone if it
    // expired meanwhile), and publishing makes it true again.
    let t0 = Instant::now();
    let owned = loop {
        match r.connect().await {
            Ok(o) => break o,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(15), "{}", e.report());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(owned.is_subset(&ids(&["host-a_web_1_8080"])));
    r.publish(&instance("host-a", "web_1", 9001, None)).await.unwrap();
    r.keepalive().await.unwrap();
    // Past the old session's expiry, the node is still there (this session's).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(children(&client(&zk).await).await, ["host-a_web_1_8080"]);
}

// ---- End to end: two hosts (each a private Docker engine, its own myelin and HAProxy; see
// `myelin_integration::fleet`), both discovering `web` from this binary's ZooKeeper and
// announcing their containers there (the default `to`: the discovery's ensemble and path).

mod e2e {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use myelin_integration::fleet::{logs, pair_routing_each_other, stop_under_load, until};
    use myelin_integration::zookeeper::PrivateZk;

    const BOUND: Duration = Duration::from_secs(5);
    /// Host A's session timeout (seconds): the bound after which B drops a killed A's instances.
    const SESSION: u64 = 2;

    #[test]
    fn a_container_on_a_is_routed_by_b_drained_before_it_dies_and_expires_with_the_session() {
        let zk = PrivateZk::start().unwrap();
        let path = "/services/web";
        let discovery = format!("method: zookeeper\nhosts: ['{}']\npath: {path}\n", zk.address());
        let label = format!("zk-e2e-{}", std::process::id());
        let to_a = format!("method: zookeeper\nhosts: ['{}']\npath: {path}\nsession_timeout: {SESSION}\n", zk.address());
        let (mut a, b, on_a, on_b) = pair_routing_each_other(&discovery, Some(&to_a), &label);
        let st = a.status();
        assert!(st.to_string().contains(&format!("host-a_{}_8000", on_a.name().unwrap())), "A's /status does not show what it announces: {st}");

        // `docker stop` on A under ~50 requests/s through B: none fails, B drains it first.
        stop_under_load(&a, &b, &on_a);

        // A's myelin killed: its node stays until its session expires, then B drops it.
        let on_a = a.engine.run(&label, "127.0.0.1::8000", &[]).unwrap();
        let want: BTreeSet<u16> = [on_a.port, on_b.port].into();
        assert!(until(BOUND, || b.routed() == want), "{}", logs(&a, &b));
        a.kill_myelin().unwrap();
        let t0 = Instant::now();
        let gone = until(Duration::from_secs(SESSION + 5), || !b.routed().contains(&on_a.port));
        let took = t0.elapsed();
        assert!(gone, "B still routes A's instance {took:?} after the kill\n{}", logs(&a, &b));
        eprintln!("B dropped A's instance {took:?} after A's myelin was killed (session timeout {SESSION} s)");
        assert!(took <= Duration::from_secs(SESSION + 2), "later than the session timeout: {took:?}");

        // Restarted: routed by B again, no duplicates.
        a.start_myelin().unwrap();
        assert!(until(BOUND, || b.routed() == want && a.routed() == want), "a {:?} b {:?}\n{}", a.routed(), b.routed(), logs(&a, &b));
        assert_eq!(b.servers().len(), 2, "B's servers: {:?}", b.servers());

        // Killed and restarted at once: the new session takes the node over; B never stops
        // routing it, and the old session expiring later takes nothing with it.
        a.kill_myelin().unwrap();
        a.start_myelin().unwrap();
        let t0 = Instant::now();
        let mut lost = Vec::new();
        while t0.elapsed() < Duration::from_secs(SESSION + 3) {
            if !b.routed().contains(&on_a.port) {
                lost.push(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(lost.is_empty(), "B stopped routing A's instance during a quick restart at {lost:?}\n{}", logs(&a, &b));
        assert_eq!(b.servers().len(), 2, "B's servers: {:?}", b.servers());

        // A clean stop withdraws at once.
        let t0 = Instant::now();
        a.stop_myelin().unwrap();
        assert!(until(BOUND, || b.routed() == [on_b.port].into()), "{:?}\n{}", b.routed(), logs(&a, &b));
        assert!(t0.elapsed() < Duration::from_secs(SESSION), "withdrawn only after {:?}", t0.elapsed());
    }
}
