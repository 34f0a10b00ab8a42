//! Many hosts end to end: two "hosts" (each a private Docker engine, its own myelin and its own
//! HAProxy, see `myelin_integration::fleet`) announcing to and discovering from one
//! three-member etcd cluster. Containers publish on 127.0.0.1 and are announced at 127.0.0.1;
//! every request goes to 127.0.0.1.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use myelin_integration::etcd::Etcd;
use myelin_integration::fleet::{stop_under_load, until, Container, Fleet, Host};
use myelin_integration::get;

/// Generous: changes cross in milliseconds (see `make bench`); the bound only keeps a broken
/// build from hanging.
const BOUND: Duration = Duration::from_secs(5);
/// The lease TTL of these tests (seconds): the bound after which a killed host's instances go.
const TTL: u32 = 3;

fn ports(cs: &[&Container]) -> BTreeSet<u16> {
    cs.iter().map(|c| c.port).collect()
}

fn id(host: &Host, c: &Container) -> String {
    format!("{}_{}_8000", host.owner, c.name().unwrap())
}

fn ids(items: &[(&Host, &Container)]) -> BTreeSet<String> {
    items.iter().map(|(h, c)| id(h, c)).collect()
}

/// Both hosts route exactly `want`, and etcd holds exactly `keys`.
fn converged(f: &Fleet, want: &BTreeSet<u16>, keys: &BTreeSet<String>) -> bool {
    until(BOUND, || &f.a.routed() == want && &f.b.routed() == want && f.keys().is_ok_and(|k| k.keys().cloned().collect::<BTreeSet<_>>() == *keys))
}

/// The body host B's frontend answers for container `c` is its id: B routes to it.
fn b_reaches(f: &Fleet, c: &Container) -> bool {
    until(BOUND, || get(f.b.port(), "/").is_ok_and(|(s, body)| s == 200 && body.trim() == c.id))
}

/// A container started on A is routed by B's HAProxy; `docker stop` on A under ~50 requests/s
/// through B's frontend: no request fails, and B takes it out of rotation before it dies.
#[test]
fn a_container_on_a_is_routed_by_b_and_drained_there_before_it_dies() {
    let cluster = myelin_integration::etcd::Cluster::get();
    let _g = cluster.shared();
    let f = Fleet::start("route", TTL).unwrap();
    let on_b = f.run_on_b().unwrap();
    let on_a = f.run_on_a().unwrap();
    assert!(converged(&f, &ports(&[&on_a, &on_b]), &ids(&[(&f.a, &on_a), (&f.b, &on_b)])), "a {:?} b {:?} keys {:?}\n{}", f.a.routed(), f.b.routed(), f.keys(), f.logs());
    assert!(b_reaches(&f, &on_a), "{}", f.logs());
    // What each host says it announces, and where.
    for (host, c) in [(&f.a, &on_a), (&f.b, &on_b)] {
        let s = host.status();
        let web = &s["announce"]["web"];
        assert_eq!(s["announce_as"], host.owner.as_str(), "{s}");
        assert_eq!(web["state"], "announcing", "{s}");
        assert_eq!(web["published"], serde_json::json!([id(host, c)]), "{s}");
        assert_eq!(web["expiry_seconds"], f64::from(TTL), "{s}");
        assert!(web["target"].as_str().is_some_and(|t| t.starts_with("etcd ") && t.contains(&f.prefix)), "{s}");
    }
    let (code, table, err) = f.a.env.myelin_once(&["status", "--admin", &f.a.admin.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("announcing as host-a") && table.contains(&id(&f.a, &on_a)), "{table}");
    // The value is the Nerve JSON the watchers read: where B reaches it.
    let keys = f.keys().unwrap();
    let v: serde_json::Value = serde_json::from_str(&keys[&id(&f.a, &on_a)].value).unwrap();
    assert_eq!((v["host"].as_str(), v["port"].as_u64()), (Some("127.0.0.1"), Some(u64::from(on_a.port))), "{v}");

    let reloads = f.b.env.reloads().unwrap();
    stop_under_load(&f.a, &f.b, &on_a);
    // Withdrawn from etcd, gone from both HAProxies; B's own instance stays.
    assert!(converged(&f, &ports(&[&on_b]), &ids(&[(&f.b, &on_b)])), "a {:?} b {:?} keys {:?}\n{}", f.a.routed(), f.b.routed(), f.keys(), f.logs());
    assert_eq!(f.a.status()["announce"]["web"]["published"], serde_json::json!([]), "{}", f.a.status());
    assert_eq!(f.b.env.reloads().unwrap(), reloads, "B reloaded HAProxy for a membership change");
}

/// myelin on A killed (SIGKILL): its entries stay until the lease expires, then B drops them
/// (the documented bound: the TTL); restarted, it takes them back under the same keys, with no
/// duplicates. Killed and restarted within the TTL: B never loses them.
#[test]
fn a_killed_myelin_expires_after_the_ttl_and_a_restart_takes_its_entries_back() {
    let cluster = myelin_integration::etcd::Cluster::get();
    let _g = cluster.shared();
    let mut f = Fleet::start("kill", TTL).unwrap();
    let on_a = f.run_on_a().unwrap();
    let on_b = f.run_on_b().unwrap();
    let all = ports(&[&on_a, &on_b]);
    let all_ids = ids(&[(&f.a, &on_a), (&f.b, &on_b)]);
    assert!(converged(&f, &all, &all_ids), "a {:?} b {:?} keys {:?}\n{}", f.a.routed(), f.b.routed(), f.keys(), f.logs());
    let lease0 = f.keys().unwrap()[&id(&f.a, &on_a)].lease;
    assert_ne!(lease0, 0, "announced without a lease");

    f.a.kill_myelin().unwrap();
    let t0 = Instant::now();
    // Not withdrawn (nobody did): still there half a second later...
    std::thread::sleep(Duration::from_millis(500));
    assert!(f.keys().unwrap().contains_key(&id(&f.a, &on_a)), "withdrawn at once by a SIGKILLed myelin?");
    assert!(f.b.routed().contains(&on_a.port));
    // ...and gone from B once the lease expires.
    let bound = Duration::from_secs(u64::from(TTL) + 3);
    let gone = until(bound, || !f.b.routed().contains(&on_a.port));
    let took = t0.elapsed();
    assert!(gone, "B still routes A's instance {took:?} after the kill: {:?}\n{}", f.b.servers(), f.logs());
    eprintln!("B dropped A's instance {took:?} after A's myelin was killed (ttl {TTL} s)");
    // etcd revokes an expired lease on its own schedule (checked about every 500 ms) and B then
    // drains: a little slack on a busy machine.
    assert!(took <= Duration::from_secs(u64::from(TTL) + 2), "much later than the TTL: {took:?}");
    assert_eq!(f.keys().unwrap().keys().cloned().collect::<BTreeSet<_>>(), ids(&[(&f.b, &on_b)]));
    assert_eq!(f.b.routed(), ports(&[&on_b]));

    // Restarted: the same keys on a new lease, routed by B again, no duplicates.
    f.a.start_myelin().unwrap();
    assert!(converged(&f, &all, &all_ids), "a {:?} b {:?} keys {:?}\n{}", f.a.routed(), f.b.routed(), f.keys(), f.logs());
    let keys = f.keys().unwrap();
    let lease1 = keys[&id(&f.a, &on_a)].lease;
    assert!(lease1 != 0 && lease1 != lease0, "lease {lease1} after the restart, {lease0} before");
    assert_eq!(f.b.servers().len(), 2, "B's servers: {:?}", f.b.servers());
    let s = f.a.status();
    assert_eq!((&s["announce"]["web"]["state"], &s["announce"]["web"]["published"]), (&"announcing".into(), &serde_json::json!([id(&f.a, &on_a)])), "{s}");

    // Killed and restarted at once: the keys never go, B never stops routing it, and the old
    // lease expiring later takes nothing with it.
    let watching = Arc::new(AtomicBool::new(true));
    let lost = {
        let (w, admin_b, port) = (watching.clone(), f.b.env.path("haproxy.sock"), on_a.port);
        std::thread::spawn(move || {
            let mut lost = Vec::new();
            let t0 = Instant::now();
            while w.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                let state = runtime(&admin_b, "show servers state web").unwrap_or_default();
                let routed = state.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 18 && f[6] == "0" && f[18] == port.to_string()
                });
                if !routed {
                    lost.push(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            lost
        })
    };
    f.a.kill_myelin().unwrap();
    f.a.start_myelin().unwrap();
    assert!(until(BOUND, || f.keys().is_ok_and(|k| k.get(&id(&f.a, &on_a)).is_some_and(|e| e.lease != lease1))), "{:?}\n{}", f.keys(), f.logs());
    std::thread::sleep(Duration::from_secs(u64::from(TTL) + 1));
    watching.store(false, Ordering::Relaxed);
    let lost = lost.join().unwrap();
    assert!(lost.is_empty(), "B stopped routing A's instance during a quick restart at {lost:?}\n{}", f.logs());
    assert!(converged(&f, &all, &all_ids), "a {:?} b {:?} keys {:?}\n{}", f.a.routed(), f.b.routed(), f.keys(), f.logs());
    assert_eq!(f.b.servers().len(), 2, "B's servers: {:?}", f.b.servers());
}

/// One command on a HAProxy stats socket (from a thread that does not own the host).
fn runtime(socket: &std::path::Path, cmd: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{cmd}")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The etcd member host A's myelin talks to is killed: nothing is lost on either host (both
/// keep routing everything, etcd keeps every key past the TTL), and A keeps announcing.
#[test]
fn the_etcd_member_a_talks_to_is_killed_nothing_is_lost() {
    let cluster = myelin_integration::etcd::Cluster::get();
    let _g = cluster.exclusive();
    let f = Fleet::start("member", TTL).unwrap();
    let on_a = f.run_on_a().unwrap();
    let on_b = f.run_on_b().unwrap();
    let all = ports(&[&on_a, &on_b]);
    let all_ids = ids(&[(&f.a, &on_a), (&f.b, &on_b)]);
    assert!(converged(&f, &all, &all_ids), "a {:?} b {:?} keys {:?}\n{}", f.a.routed(), f.b.routed(), f.keys(), f.logs());
    // Both of A's connections (its watcher's and its announcer's) are to the first member listed.
    let members = members_of(cluster, f.a.pid().unwrap());
    assert_eq!(members, BTreeSet::from([1]), "A's myelin is connected to members {members:?}");
    let member = 1;
    let result = (|| -> Result<()> {
        cluster.kill(member)?;
        eprintln!("killed etcd member {member}, the one host A's myelin was connected to");
        let rest: Vec<String> = cluster.endpoints.iter().enumerate().filter(|(i, _)| i + 1 != member).map(|(_, e)| e.clone()).collect();
        let mut etcd = Etcd::connect(&rest, None)?;
        // Longer than two TTLs: a lease that was not kept alive would have expired.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2 * u64::from(TTL) + 1) {
            let (a, b) = (f.a.routed(), f.b.routed());
            ensure!(a == all && b == all, "lost at {:?}: A routes {a:?}, B routes {b:?}, want {all:?}\n{}", t0.elapsed(), f.logs());
            let keys: BTreeSet<String> = f.keys_with(&mut etcd)?.into_keys().collect();
            ensure!(keys == all_ids, "keys at {:?}: {keys:?}\n{}", t0.elapsed(), f.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        // A announces through the surviving members: a new container reaches B.
        let more = f.run_on_a()?;
        let want = ports(&[&on_a, &on_b, &more]);
        ensure!(until(BOUND, || f.b.routed() == want), "B routes {:?}, want {want:?}\n{}", f.b.routed(), f.logs());
        let now = members_of(cluster, f.a.pid().unwrap());
        ensure!(!now.is_empty() && !now.contains(&member), "A's myelin is connected to members {now:?}");
        let want_ids: serde_json::Value = ids(&[(&f.a, &on_a), (&f.a, &more)]).into_iter().collect();
        ensure!(
            until(BOUND, || {
                let s = f.a.status();
                s["announce"]["web"]["state"] == "announcing" && s["announce"]["web"]["published"] == want_ids
            }),
            "{}",
            f.a.status()
        );
        Ok(())
    })();
    cluster.restore().unwrap();
    result.unwrap();
}

/// The members (1-3) the process `pid` has TCP connections to.
fn members_of(cluster: &myelin_integration::etcd::Cluster, pid: u32) -> BTreeSet<usize> {
    let out = std::process::Command::new("ss").args(["-Htnp", "state", "established"]).output().unwrap();
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .filter_map(|peer| cluster.endpoints.iter().position(|e| e.ends_with(&peer)).map(|i| i + 1))
        .collect()
}

/// A clean stop of A's myelin withdraws its instances at once (well before the TTL), and only
/// its own.
#[test]
fn a_clean_stop_withdraws_at_once() {
    let cluster = myelin_integration::etcd::Cluster::get();
    let _g = cluster.shared();
    // A long TTL: what goes within BOUND was withdrawn, not expired.
    let mut f = Fleet::start("clean-stop", 30).unwrap();
    let on_a = f.run_on_a().unwrap();
    let on_b = f.run_on_b().unwrap();
    assert!(converged(&f, &ports(&[&on_a, &on_b]), &ids(&[(&f.a, &on_a), (&f.b, &on_b)])), "a {:?} b {:?} keys {:?}\n{}", f.a.routed(), f.b.routed(), f.keys(), f.logs());
    let t0 = Instant::now();
    let code = f.a.stop_myelin().unwrap();
    assert_eq!(code, Some(0), "{}", f.a.log());
    let stopped = t0.elapsed();
    assert_eq!(f.keys().unwrap().keys().cloned().collect::<BTreeSet<_>>(), ids(&[(&f.b, &on_b)]), "not withdrawn when myelin exited\n{}", f.logs());
    assert!(until(BOUND, || f.b.routed() == ports(&[&on_b])), "B routes {:?}\n{}", f.b.routed(), f.logs());
    eprintln!("A's myelin stopped in {stopped:?}; B routes only its own after {:?}", t0.elapsed());

    // Started again (as `systemctl restart` does after the stop): announced and routed again.
    let t0 = Instant::now();
    f.a.start_myelin().unwrap();
    let all = ports(&[&on_a, &on_b]);
    assert!(until(BOUND, || f.b.routed() == all), "B routes {:?}\n{}", f.b.routed(), f.logs());
    eprintln!("B routes A's instance again {:?} after A's myelin was started", t0.elapsed());
}

/// The same container name on two hosts (as one compose file deployed on each gives): two
/// instances, both routed everywhere.
#[test]
fn the_same_container_name_on_two_hosts_is_two_instances() {
    let cluster = myelin_integration::etcd::Cluster::get();
    let _g = cluster.shared();
    let f = Fleet::start("same-name", TTL).unwrap();
    let name = format!("fleet-same-{}", std::process::id());
    let on_a = f.a.engine.run(&f.label, "127.0.0.1::8000", &["--name", &name]).unwrap();
    let on_b = f.b.engine.run(&f.label, "127.0.0.1::8000", &["--name", &name]).unwrap();
    assert!(
        converged(&f, &ports(&[&on_a, &on_b]), &ids(&[(&f.a, &on_a), (&f.b, &on_b)])),
        "a {:?} b {:?} keys {:?}\n{}",
        f.a.servers(),
        f.b.servers(),
        f.keys(),
        f.logs()
    );
    let answers: BTreeSet<String> = myelin_integration::spray(f.b.port(), 20).0.into_iter().map(|b| b.trim().to_owned()).collect();
    assert_eq!(answers, [on_a.id.clone(), on_b.id.clone()].into_iter().collect(), "{}", f.logs());
}
