//! `make bench`: ZooKeeper changes to HAProxy, on the tests' ZooKeeper
//! (`integration/zookeeper.sh`), with real HAProxy (runtime API) and the real binary.
//!
//! - routed: from the registration node's `create` returning to the first response from the new
//!   instance through HAProxy (it listens before it registers, as Nerve only registers a
//!   healthy instance), over `BENCH_ROUNDS` rounds (default 20);
//! - out of rotation: from the node's `delete` returning to its server leaving the servers that
//!   take new connections (`show servers state`: draining or gone);
//! - a service of `BENCH_INSTANCES` instances (default 2,000): from opening the source (a new
//!   session) to its first complete `Reset`, 5 times, in process.
//!
//! Traffic goes to 127.0.0.1 only; every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use myelin_integration::zookeeper::{self, nerve, server_name, unique_path, Registrar};
use myelin_integration::bench::{poll, summary, Routed};
use myelin_integration::{get, Backend};
use myelin_source::Update;
use myelin_watch_zookeeper::{Format, Mode, Settings, ZookeeperSource};

const ROUNDS: usize = 20;
const INSTANCES: usize = 2000;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<()> {
    let zk = zookeeper::shared()?;
    changes(&zk)?;
    first_reset(&zk)
}

fn changes(zk: &str) -> Result<()> {
    let path = unique_path("bench-changes");
    let reg = Registrar::connect(zk, Duration::from_secs(10))?;
    reg.ensure_path(&path)?;
    let anchor = Backend::start("anchor");
    reg.register(&path, "anchor_", &nerve("anchor", anchor.port))?;

    let discovery = format!("      method: zookeeper\n      hosts: [\"{zk}\"]\n      path: {path}\n");
    let Routed { env, haproxy: _haproxy, myelin, reloads } = Routed::start(&discovery, "")?;
    let port = env.frontend_port;

    let rounds = env_usize("BENCH_ROUNDS", ROUNDS);
    let (mut routed, mut unrouted) = (vec![], vec![]);
    for round in 0..rounds {
        let name = format!("r{round}");
        let b = Backend::start(&name);
        let t0 = Instant::now();
        let node = reg.register(&path, &format!("{name}_"), &nerve(&name, b.port))?;
        let created = Instant::now();
        let at = poll(Duration::from_secs(10), || get(port, "/").is_ok_and(|(_, body)| body == name))
            .with_context(|| format!("round {round}: never routed: {}", myelin.log()))?;
        routed.push(at - created);

        let server = server_name(&name, b.port);
        reg.delete(&node)?;
        let deleted = Instant::now();
        let out = poll(Duration::from_secs(10), || env.routable_servers().is_ok_and(|s| !s.contains(&server)))
            .with_context(|| format!("round {round}: never out of rotation: {}", myelin.log()))?;
        unrouted.push(out - deleted);
        eprintln!("round {:2}: create took {:?}, routed {:?} after it; out of rotation {:?} after delete", round + 1, created - t0, at - created, out - deleted);
    }
    let reloaded = env.reloads()? - reloads;
    println!("\nmyelin zookeeper benchmark: {rounds} rounds, Nerve nodes, runtime API (add server / drain); {reloaded} reloads");
    summary("node created -> instance answers through HAProxy", routed);
    summary("node deleted -> out of rotation", unrouted);
    reg.delete_tree(&path)?;
    Ok(())
}

fn first_reset(zk: &str) -> Result<()> {
    let n = env_usize("BENCH_INSTANCES", INSTANCES);
    let path = unique_path("bench-large");
    let reg = Registrar::connect(zk, Duration::from_secs(10))?;
    reg.ensure_path(&path)?;
    let t0 = Instant::now();
    let items: Vec<(String, String)> = (0..n).map(|i| (format!("i-{i:05}_"), nerve(&format!("i-{i:05}"), 10_000 + (i % 50_000) as u16))).collect();
    reg.register_many(&path, &items)?;
    eprintln!("registered {n} instances in {:?}", t0.elapsed());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut times = Vec::new();
    for attempt in 0..5 {
        let source = ZookeeperSource::new(Settings { connect: zk.to_owned(), path: path.clone(), format: Format::Nerve, mode: Mode::Watch { jitter: None } });
        let (took, count) = rt.block_on(async {
            let t0 = Instant::now();
            let mut stream = source.open();
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(Ok(Update::Reset(all)))) => Ok((t0.elapsed(), all.len())),
                Ok(Some(other)) => bail!("unexpected {other:?}"),
                Ok(None) => bail!("the stream ended"),
                Err(_) => bail!("no Reset within 60 s"),
            }
        })?;
        if count != n {
            bail!("the Reset held {count} instances, not {n}");
        }
        eprintln!("attempt {}: first Reset of {count} instances after {took:?}", attempt + 1);
        times.push(took);
    }
    println!("\nmyelin zookeeper benchmark: a service of {n} instances (Nerve nodes), new session each time");
    summary(&format!("source opened -> first Reset ({n} instances)"), times);
    reg.delete_tree(&path)?;
    Ok(())
}
