//! `make bench`: how fast a Consul registration reaches HAProxy, over 20 rounds (`BENCH_ROUNDS`),
//! with the Consul test double (`myelin_integration::consul`) and HAProxy's runtime API:
//!
//! - routed: from the registration's `PUT /v1/agent/service/register` (check passing)
//!   returning to the first response from the new instance through HAProxy;
//! - out: from the deregistration returning to its server no longer taking new connections
//!   (`show servers state`: draining or gone).
//!
//! The watcher's blocking query is waiting when each change is made, as in production. Traffic
//! goes to 127.0.0.1 only; every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use myelin_integration::consul::Consul;
use myelin_integration::bench::{poll, summary, Routed};
use myelin_integration::{get, Backend};

const ROUNDS: usize = 20;

fn main() -> Result<()> {
    let consul = Consul::start(1000);
    let anchor = Backend::start("anchor");
    consul.register("anchor", "web", anchor.port, &[], "passing");
    let disc = format!("      method: consul\n      address: {}\n", consul.address());
    let Routed { env, haproxy: _haproxy, myelin, reloads: reloads0 } = Routed::start(&disc, "")?;
    let port = env.frontend_port;

    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let (mut routed, mut out) = (vec![], vec![]);
    for round in 0..rounds {
        let name = format!("bench-{round}");
        let b = Backend::start(&name);
        // Let the watcher's query block again after the previous change.
        std::thread::sleep(Duration::from_millis(200));
        consul.register(&name, "web", b.port, &[], "passing");
        let t0 = Instant::now();
        let at = poll(Duration::from_secs(10), || get(port, "/").is_ok_and(|(_, body)| body == name))
            .with_context(|| format!("round {round}: never routed: {}", myelin.log()))?;
        let took = at - t0;
        routed.push(took);

        std::thread::sleep(Duration::from_millis(200));
        consul.deregister(&name);
        let t0 = Instant::now();
        let server = format!("node1:{name}");
        let gone = poll(Duration::from_secs(10), || env.routable_servers().is_ok_and(|s| !s.contains(&server)))
            .with_context(|| format!("round {round}: never out: {}", myelin.log()))?;
        out.push(gone - t0);
        eprintln!("round {:2}: routed {:?} after registering, out {:?} after deregistering", round + 1, took, gone - t0);
    }
    let reloads = env.reloads()? - reloads0;
    println!("\nmyelin consul benchmark: {rounds} rounds, runtime API (add server / drain), {reloads} reloads, Consul test double");
    summary("registered (passing) -> routed", routed);
    summary("deregistered -> out of rotation", out);
    Ok(())
}
