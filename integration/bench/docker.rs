//! `make bench`: how fast Docker changes reach HAProxy, over 20 rounds, on the private engine.
//!
//! - routed: from `docker run` returning to the first response from the new container through
//!   HAProxy (and from the moment its published port first answered directly);
//! - drained: from `docker stop` being started to the container's server being gone from the
//!   running HAProxy worker (`show servers state`).
//!
//! Traffic goes to 127.0.0.1 only; every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use myelin_integration::docker::Engine;
use myelin_integration::bench::{poll, summary};
use myelin_integration::{free_port, get, Env};

const ROUNDS: usize = 20;
const STOP_TIMEOUT: &str = "3";

fn main() -> Result<()> {
    let engine = Engine::get()?;
    run(&engine, true)?;
    run(&engine, false)
}

/// One series of rounds: through HAProxy's runtime API (`runtime`) or through reloads.
fn run(engine: &Engine, runtime: bool) -> Result<()> {
    let env = Env::new();
    let extra = if runtime { env.runtime_extra() } else { String::new() };
    let cfg = env.write_config_with(&engine.discovery("bench"), "      listen: [option httpchk GET /]\n", &extra);
    let anchor = engine.run_published("bench", &[])?;
    let _haproxy = env.start_haproxy(&cfg)?;
    let myelin = env.start_myelin(&cfg)?;
    let port = env.frontend_port;
    if poll(Duration::from_secs(10), || get(port, "/").is_ok_and(|(_, b)| b.trim() == anchor.id)).is_none() {
        bail!("the anchor container never answered: {}", myelin.log());
    }

    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let (mut routed, mut ready_to_routed, mut drained) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let direct = free_port();
        let publish = format!("127.0.0.1:{direct}:8000");
        let c = engine.run(&["-p", &publish, "-l", "myelin.test=bench"])?;
        let ran = Instant::now();
        if std::env::var_os("BENCH_LOG").is_some() {
            let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            eprintln!("bench: docker run returned at unix {}.{:09}", wall.as_secs(), wall.subsec_nanos());
        }
        let id = c.id.clone();
        let ready = std::thread::spawn(move || poll(Duration::from_secs(10), || get(direct, "/").is_ok_and(|(s, b)| s == 200 && b.trim() == id)));
        let at = poll(Duration::from_secs(10), || get(port, "/").is_ok_and(|(_, b)| b.trim() == c.id))
            .with_context(|| format!("round {round}: never routed: {}", myelin.log()))?;
        let ready = ready.join().unwrap().context("never answered directly")?;
        routed.push(at - ran);
        ready_to_routed.push(at.saturating_duration_since(ready));

        let name = c.name()?;
        let id = c.id.clone();
        let t0 = Instant::now();
        let stopper = std::thread::spawn(move || Engine::docker_unlocked(&["stop", "-t", STOP_TIMEOUT, &id]));
        let out = poll(Duration::from_secs(10), || env.routable_servers().is_ok_and(|s| !s.contains(&name)))
            .with_context(|| format!("round {round}: never drained: {}", myelin.log()))?;
        drained.push(out - t0);
        stopper.join().unwrap()?;
        eprintln!("round {:2}: routed {:?} after run, drained {:?} after stop", round + 1, at - ran, out - t0);
    }
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("{}", myelin.log());
    }
    let how = if runtime { "runtime API (add server / drain), no reloads" } else { "HAProxy reloads in master-worker mode (restart_interval 0.2 s)" };
    println!("\nmyelin docker benchmark: {rounds} rounds, {how}");
    summary("docker run returned -> routed", routed);
    summary("port answering directly -> routed", ready_to_routed);
    summary("docker stop started -> out of rotation", drained);
    Ok(())
}
