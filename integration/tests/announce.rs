//! Announcing to etcd on one host: the etcd backend and the reconcile loop against the real
//! three-member cluster (integration/etcd-cluster.sh), each test under its own key prefix.
//! (The two-host tests through Docker and HAProxy are in their own file.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use etcd_client::{Client, GetOptions};
use myelin_announce::{reconcile, AnnounceState, AnnounceStatus, Desired, Instance, InstanceId, Owner, Registry};
use myelin_integration::etcd::Cluster;
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

#[tokio::test]
async fn the_etcd_backend_publishes_on_a_lease_adopts_and_expires() -> Result<()> {
    let cluster = Cluster::get();
    let _g = cluster.shared();
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
}

#[tokio::test]
async fn the_reconcile_loop_against_etcd() -> Result<()> {
    let cluster = Cluster::get();
    let _g = cluster.shared();
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
}
