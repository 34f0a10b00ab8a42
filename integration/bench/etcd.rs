//! `make bench`: how fast etcd changes reach HAProxy (runtime API), on the tests' three-member
//! cluster (integration/etcd-cluster.sh).
//!
//! - routed: from just before an etcd put of a new instance's key to the first response from
//!   that instance through HAProxy, over 20 rounds (`BENCH_ROUNDS`); each round then deletes the
//!   previous instance's key and times it out of rotation (`show servers state`);
//! - burst: 1,000 puts of distinct instances under the prefix at once (32 concurrent writers):
//!   how many applies myelin made (`myelin_applies_total`), HAProxy reloads (master CLI), and
//!   the time from the first put until HAProxy's servers taking connections are exactly the
//!   1,001 registered.
//!
//! Traffic goes to 127.0.0.1 only; every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use myelin_integration::bench::{poll, summary, Routed};
use myelin_integration::etcd::Cluster;
use myelin_integration::{free_port, get, Backend};

const ROUNDS: usize = 20;
const BURST: usize = 1000;

fn nerve(name: &str, port: u16) -> String {
    format!(r#"{{"host":"127.0.0.1","port":{port},"name":"{name}"}}"#)
}

fn metric(admin: u16, series: &str) -> f64 {
    let body = get(admin, "/metrics").map(|r| r.1).unwrap_or_default();
    body.lines().filter(|l| l.starts_with(series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn main() -> Result<()> {
    let cluster = Cluster::get();
    let mut etcd = cluster.client()?;
    let prefix = format!("/myelin-bench/web-{}", std::process::id());
    etcd.delete_prefix(&format!("{prefix}/"))?;
    let anchor = Backend::start("anchor");
    etcd.put(&format!("{prefix}/anchor"), &nerve("anchor", anchor.port))?;

    let admin = free_port();
    let discovery = format!("      method: etcd\n      endpoints: {}\n      path: {prefix}\n", cluster.yaml_endpoints());
    let Routed { env, haproxy: _haproxy, myelin, reloads: reloads0 } = Routed::start(&discovery, &format!("admin:\n  bind: {admin}\n"))?;
    let port = env.frontend_port;

    // Rounds: one new instance in, the previous one out.
    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let (mut routed, mut removed, mut commits) = (vec![], vec![], vec![]);
    let mut previous: Option<Backend> = None;
    for round in 0..rounds {
        let name = format!("r{round}");
        let b = Backend::start(&name);
        let t0 = Instant::now();
        etcd.put(&format!("{prefix}/{name}"), &nerve(&name, b.port))?;
        commits.push(t0.elapsed());
        let Some(t) = poll(Duration::from_secs(10), || get(port, "/").is_ok_and(|(_, body)| body == name)) else {
            bail!("round {round}: {name} never answered: {}", myelin.log());
        };
        routed.push(t - t0);
        if let Some(old) = previous.take() {
            let t0 = Instant::now();
            etcd.delete(&format!("{prefix}/{}", old.name))?;
            let Some(t) = poll(Duration::from_secs(10), || env.routable_servers().is_ok_and(|s| !s.contains(&old.name))) else {
                bail!("round {round}: {} never left: {}", old.name, myelin.log());
            };
            removed.push(t - t0);
        }
        previous = Some(b);
    }
    let reloads = env.reloads()? - reloads0;
    summary("etcd put -> new instance answers (runtime API)", routed);
    summary("etcd delete -> out of rotation", removed);
    summary("  of which the etcd put itself (commit)", commits);
    println!("HAProxy reloads during the rounds: {reloads}");

    // Burst: 1,000 instances registered at once.
    if let Some(old) = previous.take() {
        etcd.delete(&format!("{prefix}/{}", old.name))?;
    }
    if poll(Duration::from_secs(10), || env.routable_servers().is_ok_and(|s| s == ["anchor"])).is_none() {
        bail!("not back to the anchor alone: {:?}", env.routable_servers());
    }
    std::thread::sleep(Duration::from_secs(2));
    let applies0 = metric(admin, "myelin_applies_total");
    let log0 = myelin.log().lines().count();
    let reloads0 = env.reloads()?;
    let kvs: Vec<(String, String)> = (0..BURST).map(|i| (format!("{prefix}/burst-{i:04}"), nerve(&format!("burst-{i:04}"), 20000 + i as u16))).collect();
    let t0 = Instant::now();
    let puts_took = etcd.put_many(kvs)?;
    // Polled every 50 ms: `show servers state` of 1,000 servers competes with myelin's commands.
    let Some(t) = poll(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(50));
        env.routable_servers().is_ok_and(|s| s.len() == BURST + 1)
    }) else {
        bail!("HAProxy never had the {} servers: {:?}", BURST + 1, env.routable_servers().map(|s| s.len()));
    };
    // Let anything still queued settle before counting.
    std::thread::sleep(Duration::from_secs(2));
    let applies = metric(admin, "myelin_applies_total") - applies0;
    let log = myelin.log();
    let burst_log: Vec<&str> = log.lines().skip(log0).filter(|l| l.contains("Applied through") || l.contains("Reloaded HAProxy")).collect();
    let largest = burst_log.iter().filter_map(|l| l.split("added=").nth(1)?.split(' ').next()?.parse::<u64>().ok()).max().unwrap_or(0);
    let reloads = env.reloads()? - reloads0;
    println!(
        "burst of {BURST} puts: puts took {:.1} ms; HAProxy matched {:.1} ms after the first put; {applies} applies ({} logged, the largest adding {largest} servers), {reloads} reloads",
        puts_took.as_secs_f64() * 1000.0,
        (t - t0).as_secs_f64() * 1000.0,
        burst_log.len()
    );
    if std::env::var_os("BENCH_LOG").is_some() {
        for l in &burst_log {
            println!("  {l}");
        }
    }
    etcd.delete_prefix(&format!("{prefix}/"))?;
    Ok(())
}
