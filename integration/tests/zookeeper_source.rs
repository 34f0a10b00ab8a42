//! The ZooKeeper source against a real ZooKeeper (Debian's, `integration/zookeeper.sh`): the
//! updates it yields as nodes come and go, for a missing path, when the session is lost, and
//! when polling. The end-to-end behaviour (HAProxy, the binary) is in `zookeeper.rs`.

use std::time::Duration;

use futures::StreamExt;
use myelin_integration::zookeeper::{self, nerve, nerve_weighted, serverset, server_name, unique_path, PrivateZk, Registrar};
use myelin_source::{SourceError, Update, UpdateStream};
use myelin_watch_zookeeper::{Format, Mode, Settings, ZookeeperSource};

/// Registering sessions that must outlive a ZooKeeper restart on a loaded machine.
const LONG_SESSION: Duration = Duration::from_secs(30);
const SESSION: Duration = Duration::from_secs(4);

/// One runtime for every test, as in the daemon: sources with the same connect string share
/// a session, whose task runs on the runtime that made it.
static RT: std::sync::LazyLock<tokio::runtime::Runtime> =
    std::sync::LazyLock::new(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap());

struct Opened {
    rt: &'static tokio::runtime::Runtime,
    stream: UpdateStream,
}

impl Opened {
    fn new(source: &ZookeeperSource) -> Self {
        let rt = &*RT;
        let stream = rt.block_on(async { source.open() });
        Self { rt, stream }
    }

    /// The next item, or `None` when the stream ended; panics when nothing comes in `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Result<Update, SourceError>> {
        let stream = &mut self.stream;
        self.rt.block_on(async { tokio::time::timeout(timeout, stream.next()).await }).expect("the source said nothing in time")
    }

    #[track_caller]
    fn update(&mut self) -> Update {
        match self.next(Duration::from_secs(10)) {
            Some(Ok(u)) => u,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    /// Whether the stream stays silent for `d`.
    fn silent_for(&mut self, d: Duration) -> bool {
        let stream = &mut self.stream;
        self.rt.block_on(async { tokio::time::timeout(d, stream.next()).await }).is_err()
    }
}

fn source(address: &str, path: &str, format: Format, mode: Mode) -> ZookeeperSource {
    ZookeeperSource::new(Settings { connect: address.to_owned(), path: path.to_owned(), format, mode })
}

fn keys(u: &Update) -> Vec<String> {
    match u {
        Update::Reset(all) => {
            let mut k: Vec<String> = all.iter().map(|d| d.key()).collect();
            k.sort();
            k
        }
        Update::Upsert(d) => vec![d.key()],
        Update::Remove(k) => vec![k.clone()],
    }
}

#[test]
fn child_watches_follow_nerve_nodes_and_skip_malformed_ones() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("source-watch");
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&path).unwrap();
    reg.register(&path, "a_", &nerve("a", 1001)).unwrap();
    reg.register(&path, "b_", &nerve("b", 1002)).unwrap();
    let bad = reg.register(&path, "bad_", r#"{"host":"127.0.0.1"}"#).unwrap();

    let mut s = Opened::new(&source(&zk, &path, Format::Nerve, Mode::Watch { jitter: None }));
    // The malformed node is reported, naming it, before the first Reset.
    match s.next(Duration::from_secs(10)) {
        Some(Err(e @ SourceError::Entry { .. })) => {
            let r = e.report();
            assert!(r.contains(&bad) && r.contains("port is missing"), "{r}");
        }
        other => panic!("{other:?}"),
    }
    let reset = s.update();
    assert!(matches!(reset, Update::Reset(_)));
    assert_eq!(keys(&reset), [server_name("a", 1001), server_name("b", 1002)]);
    let Update::Reset(all) = reset else { unreachable!() };
    assert!(all.iter().all(|d| d.weight.as_deref() == Some("1") && d.labels["az"] == "test"));

    let c = reg.register(&path, "c_", &nerve("c", 1003)).unwrap();
    assert_eq!(s.update(), Update::Upsert(myelin_core_discovered("c", 1003)));
    reg.delete(&c).unwrap();
    assert_eq!(s.update(), Update::Remove(server_name("c", 1003)));
    reg.register(&path, "c_", &nerve("c", 1003)).unwrap();
    assert_eq!(s.update(), Update::Upsert(myelin_core_discovered("c", 1003)));
    // A node rewritten in place (Nerve's new weight) is read again.
    reg.set_data(&c_again(&reg, &path), &nerve_weighted("c", 1003, 7)).unwrap_or_else(|e| panic!("{e:#}"));
    match s.update() {
        Update::Upsert(d) => assert_eq!((d.key(), d.weight.as_deref()), (server_name("c", 1003), Some("7"))),
        other => panic!("{other:?}"),
    }
    // A malformed rewrite takes the instance out and is reported.
    let c = reg.children(&path).unwrap().into_iter().find(|n| n.starts_with("c_")).map(|n| format!("{path}/{n}")).unwrap();
    reg.set_data(&c, "{").unwrap();
    assert!(matches!(s.next(Duration::from_secs(10)), Some(Err(SourceError::Entry { .. }))));
    assert_eq!(s.update(), Update::Remove(server_name("c", 1003)));
    reg.delete(&c).unwrap();
    // A child's data is read once: the malformed node is not reported again on later changes.
    let d = reg.register(&path, "d_", &nerve("d", 1004)).unwrap();
    assert_eq!(keys(&s.update()), [server_name("d", 1004)]);
    reg.delete(&d).unwrap();
    assert_eq!(keys(&s.update()), [server_name("d", 1004)]);
    // The registering session closes: all of its nodes go.
    drop(reg);
    let mut gone = Vec::new();
    while gone.len() < 2 {
        match s.update() {
            Update::Remove(k) => gone.push(k),
            other => panic!("{other:?}"),
        }
    }
    gone.sort();
    assert_eq!(gone, [server_name("a", 1001), server_name("b", 1002)]);
    let cleanup = Registrar::connect(&zk, SESSION).unwrap();
    cleanup.delete_tree(&path).unwrap();
}

/// The path of the `c_` node under `path`.
fn c_again(reg: &Registrar, path: &str) -> String {
    reg.children(path).unwrap().into_iter().find(|n| n.starts_with("c_")).map(|n| format!("{path}/{n}")).unwrap()
}

fn myelin_core_discovered(name: &str, port: u16) -> myelin_source::Discovered {
    let mut d = myelin_source::Discovered::new("127.0.0.1", port).named(server_name(name, port)).weighted(1);
    d.labels.insert("az".into(), "test".into());
    d
}

#[test]
fn a_missing_path_is_an_empty_service_until_it_appears() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("source-missing");
    let mut s = Opened::new(&source(&zk, &format!("{path}/web"), Format::Nerve, Mode::Watch { jitter: None }));
    assert_eq!(s.update(), Update::Reset(vec![]));
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&format!("{path}/web")).unwrap();
    reg.register(&format!("{path}/web"), "a_", &nerve("a", 1001)).unwrap();
    // The path's creation fires the exists watch; the node is read at the next listing.
    let u = s.update();
    assert_eq!(keys(&u), [server_name("a", 1001)], "{u:?}");
    drop(reg);
    assert_eq!(s.update(), Update::Remove(server_name("a", 1001)));
    // The path is deleted again: still empty, watched.
    let cleanup = Registrar::connect(&zk, SESSION).unwrap();
    cleanup.delete_tree(&path).unwrap();
    assert!(s.silent_for(Duration::from_millis(500)));
    cleanup.ensure_path(&format!("{path}/web")).unwrap();
    cleanup.register(&format!("{path}/web"), "b_", &nerve("b", 1002)).unwrap();
    assert_eq!(keys(&s.update()), [server_name("b", 1002)]);
    cleanup.delete_tree(&path).unwrap();
}

#[test]
fn serverset_members_route_the_chosen_endpoint_and_only_alive_ones() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("source-serverset");
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&path).unwrap();
    reg.register(&path, "member_", &serverset(0, 2001, 3001)).unwrap();
    reg.register(&path, "member_", &serverset(1, 2002, 3002).replace("ALIVE", "STARTING")).unwrap();
    let mut http = Opened::new(&source(&zk, &path, Format::Serverset { endpoint: Some("http".into()) }, Mode::Watch { jitter: None }));
    assert_eq!(keys(&http.update()), ["0_127.0.0.1:3001"]);
    let mut main = Opened::new(&source(&zk, &path, Format::Serverset { endpoint: None }, Mode::Watch { jitter: None }));
    assert_eq!(keys(&main.update()), ["0_127.0.0.1:2001"]);
    reg.register(&path, "member_", &serverset(2, 2003, 3003)).unwrap();
    assert_eq!(keys(&http.update()), ["2_127.0.0.1:3003"]);
    assert_eq!(keys(&main.update()), ["2_127.0.0.1:2003"]);
    reg.delete_tree(&path).unwrap();
}

#[test]
fn polling_lists_the_path_every_interval() {
    let zk = zookeeper::shared().unwrap();
    let path = unique_path("source-poll");
    let reg = Registrar::connect(&zk, SESSION).unwrap();
    reg.ensure_path(&path).unwrap();
    reg.register(&path, "a_", &nerve("a", 1001)).unwrap();
    let mut s = Opened::new(&source(&zk, &path, Format::Nerve, Mode::Poll { interval: Duration::from_millis(500) }));
    assert_eq!(keys(&s.update()), [server_name("a", 1001)]);
    let b = reg.register(&path, "b_", &nerve("b", 1002)).unwrap();
    assert_eq!(s.update(), Update::Upsert(myelin_core_discovered("b", 1002)));
    reg.delete(&b).unwrap();
    assert_eq!(s.update(), Update::Remove(server_name("b", 1002)));
    // Nothing changes: nothing is said.
    assert!(s.silent_for(Duration::from_millis(1200)));
    reg.delete_tree(&path).unwrap();
}

#[test]
fn a_lost_session_ends_the_stream_and_the_next_opening_starts_with_a_reset() {
    let zk = PrivateZk::start().unwrap();
    let path = "/services/web";
    let reg = Registrar::connect(&zk.address(), LONG_SESSION).unwrap();
    reg.ensure_path(path).unwrap();
    reg.register(path, "a_", &nerve("a", 1001)).unwrap();
    let src = source(&zk.address(), path, Format::Nerve, Mode::Watch { jitter: None });
    let mut s = Opened::new(&src);
    assert_eq!(keys(&s.update()), [server_name("a", 1001)]);

    zk.kill().unwrap();
    match s.next(Duration::from_secs(10)) {
        Some(Err(e @ SourceError::Unreachable { .. })) => assert!(e.report().contains("the connection was lost"), "{}", e.report()),
        other => panic!("{other:?}"),
    }
    assert!(s.next(Duration::from_secs(5)).is_none(), "the stream goes on after the loss");

    // Reopened while ZooKeeper is down: reported once, then quietly.
    let mut down = Opened::new(&src);
    match down.next(Duration::from_secs(15)) {
        Some(Err(e @ SourceError::Unreachable { .. })) => assert!(e.report().starts_with(&format!("zookeeper {} is unreachable", zk.address())), "{}", e.report()),
        other => panic!("{other:?}"),
    }
    assert!(down.next(Duration::from_secs(15)).is_none());
    let mut again = Opened::new(&src);
    assert!(again.next(Duration::from_secs(15)).is_none(), "the same problem was reported again");

    // Back (with its data: the registering session survives): a complete Reset.
    zk.restart().unwrap();
    let mut back = Opened::new(&src);
    let reset = back.update();
    assert!(matches!(reset, Update::Reset(_)));
    assert_eq!(keys(&reset), [server_name("a", 1001)], "{}", zk.log());
}

#[test]
fn sources_on_one_ensemble_share_one_session() {
    let zk = PrivateZk::start().unwrap();
    let reg = Registrar::connect(&zk.address(), LONG_SESSION).unwrap();
    for svc in ["a", "b", "c"] {
        reg.ensure_path(&format!("/services/{svc}")).unwrap();
        reg.register(&format!("/services/{svc}"), "i_", &nerve(svc, 1001)).unwrap();
    }
    let sources: Vec<ZookeeperSource> = ["a", "b", "c"].iter().map(|svc| source(&zk.address(), &format!("/services/{svc}"), Format::Nerve, Mode::Watch { jitter: None })).collect();
    let mut opened: Vec<Opened> = sources.iter().map(Opened::new).collect();
    for (o, svc) in opened.iter_mut().zip(["a", "b", "c"]) {
        assert_eq!(keys(&o.update()), [server_name(svc, 1001)]);
    }
    // The registrar's connection and one for the three sources.
    assert_eq!(zk.connections().unwrap(), 2, "{}", zk.four_letter("cons").unwrap());
    // The session is lost: every source on it ends; reopened, they share a new one.
    zk.kill().unwrap();
    for o in &mut opened {
        assert!(matches!(o.next(Duration::from_secs(10)), Some(Err(SourceError::Unreachable { .. }))));
        assert!(o.next(Duration::from_secs(5)).is_none());
    }
    zk.restart().unwrap();
    let mut opened: Vec<Opened> = sources.iter().map(Opened::new).collect();
    for (o, svc) in opened.iter_mut().zip(["a", "b", "c"]) {
        assert_eq!(keys(&o.update()), [server_name(svc, 1001)]);
    }
    assert!(wait(|| zk.connections().unwrap_or(0) == 2), "{}", zk.four_letter("cons").unwrap());
    // Once no source uses it, the session is closed.
    drop(opened);
    assert!(wait(|| zk.connections().unwrap_or(9) == 1), "{}", zk.four_letter("cons").unwrap());
}

fn wait(mut f: impl FnMut() -> bool) -> bool {
    myelin_integration::wait_for(Duration::from_secs(10), &mut f).is_some()
}
