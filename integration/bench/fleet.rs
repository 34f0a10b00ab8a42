//! `make bench`: how fast a container change on one host reaches another host's HAProxy
//! through etcd (the two "hosts" of `myelin_integration::fleet`: two private Docker engines,
//! two myelins, two HAProxies, the suite's three-member etcd cluster).
//!
//! Over 40 rounds (`BENCH_ROUNDS` of each way of stopping, 20 by default):
//! - routed: from `docker run` returning on host A to the first response from the new
//!   container through host B's HAProxy;
//! - withdrawn: from the stop being asked of A's engine to the container's server no longer
//!   taking connections in B's HAProxy (`show servers state`: draining or gone), split at the
//!   `kill` event A's engine gives (its own time stamp, from `docker events`): how long Docker
//!   takes to signal the container and say so, and how long myelin, etcd and myelin take from
//!   there. Rounds alternate between the two ways a stop reaches an engine: the Engine API's
//!   `POST /containers/{id}/stop` (as orchestrators and scripts send it; timed from the request,
//!   on a connection opened before) and the `docker stop` command (timed from starting the
//!   client process, which pays its own start-up first): `BENCH_ROUNDS` of each.
//!
//! Traffic goes to 127.0.0.1 only; every wait is bounded.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use myelin_integration::bench::{poll, summary};
use myelin_integration::fleet::Fleet;
use myelin_integration::{free_port, get};

const ROUNDS: usize = 20;

fn main() -> Result<()> {
    let fleet = Fleet::start("bench", 10)?;
    // B's own container keeps B's frontend answering between rounds.
    let anchor = fleet.run_on_b()?;
    if poll(Duration::from_secs(10), || get(fleet.b.port(), "/").is_ok_and(|(_, b)| b.trim() == anchor.id)).is_none() {
        bail!("B's own container never answered:\n{}", fleet.logs());
    }
    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    // The Engine API client for A's stops, its connection opened before the first round.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let api = bollard::Docker::connect_with_unix(&fleet.a.engine.socket().to_string_lossy(), 30, bollard::API_DEFAULT_VERSION)?;
    rt.block_on(api.ping()).context("A's engine API")?;
    let (mut routed, mut ready_to_routed) = (vec![], vec![]);
    let mut stops = [Stops::default(), Stops::default()];
    for round in 0..2 * rounds {
        let by_api = round % 2 == 0;
        let how = if by_api { "API stop" } else { "docker stop" };
        let direct = free_port();
        let c = fleet.a.engine.run(&fleet.label, &format!("127.0.0.1:{direct}:8000"), &[])?;
        let ran = c.started;
        if std::env::var_os("BENCH_LOG").is_some() {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            eprintln!("bench: round {round} docker run returned {:?} ago at unix {}.{:09}", ran.elapsed(), wall.as_secs(), wall.subsec_nanos());
        }
        let id = c.id.clone();
        let ready = std::thread::spawn(move || poll(Duration::from_secs(10), || get(direct, "/").is_ok_and(|(s, b)| s == 200 && b.trim() == id)));
        let at = poll(Duration::from_secs(10), || get(fleet.b.port(), "/").is_ok_and(|(_, b)| b.trim() == c.id))
            .with_context(|| format!("round {round}: never routed by B:\n{}", fleet.logs()))?;
        let ready = ready.join().unwrap().context("never answered directly")?;
        routed.push(at - ran);
        ready_to_routed.push(at.saturating_duration_since(ready));

        let (engine, id, port) = (c.engine, c.id.clone(), c.port);
        let (t0, t0_wall) = (Instant::now(), SystemTime::now());
        if std::env::var_os("BENCH_LOG").is_some() {
            let wall = t0_wall.duration_since(UNIX_EPOCH).unwrap_or_default();
            eprintln!("bench: round {round} {how} started at unix {}.{:09}", wall.as_secs(), wall.subsec_nanos());
        }
        let stopper = if by_api {
            let (api, id) = (api.clone(), id.clone());
            let options = bollard::query_parameters::StopContainerOptionsBuilder::default().t(3).build();
            Stopper::Api(rt.spawn(async move { api.stop_container(&id, Some(options)).await }))
        } else {
            Stopper::Cli(std::thread::spawn(move || engine.docker(&["stop", "-t", "3", &id])))
        };
        let out =
            poll(Duration::from_secs(10), || !fleet.b.routed().contains(&port)).with_context(|| format!("round {round}: never withdrawn from B:\n{}", fleet.logs()))?;
        match stopper {
            Stopper::Api(h) => rt.block_on(h)?.context("stop through the Engine API")?,
            Stopper::Cli(h) => drop(h.join().unwrap()?),
        }
        let kill = kill_event(engine, &c.id, t0_wall).with_context(|| format!("round {round}: A's engine gave no kill event"))?;
        let kill = kill.duration_since(t0_wall).unwrap_or_default();
        let s = &mut stops[usize::from(!by_api)];
        s.withdrawn.push(out - t0);
        s.to_kill.push(kill);
        s.kill_to_out.push((out - t0).saturating_sub(kill));
        drop(c);
        eprintln!("round {:2}: routed by B {:?} after run, out of B's rotation {:?} after {how}", round + 1, at - ran, out - t0);
    }
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("{}", fleet.logs());
    }
    println!("\nmyelin many-hosts benchmark: {} rounds ({rounds} stopped through the API, {rounds} by `docker stop`), host A's engine -> A's myelin -> etcd (3 members) -> B's myelin -> B's HAProxy (runtime API)", 2 * rounds);
    summary("docker run on A -> routed by B", routed);
    summary("A's port answering directly -> routed by B", ready_to_routed);
    for ((whole, start), s) in [("stop asked of A's engine (API)", "API stop"), ("docker stop on A started", "docker stop")].into_iter().zip(stops) {
        summary(&format!("{whole} -> out of B"), s.withdrawn);
        summary(&format!("  of it: {start} -> A's kill event"), s.to_kill);
        summary("  of it: A's kill event -> out of B", s.kill_to_out);
    }
    Ok(())
}

/// One way of stopping's rounds: to out of B's rotation, split at A's `kill` event.
#[derive(Default)]
struct Stops {
    withdrawn: Vec<Duration>,
    to_kill: Vec<Duration>,
    kill_to_out: Vec<Duration>,
}

enum Stopper {
    Api(tokio::task::JoinHandle<std::result::Result<(), bollard::errors::Error>>),
    Cli(std::thread::JoinHandle<Result<String>>),
}

/// When A's engine says it signalled container `id` (its `kill` event) after `since`.
fn kill_event(engine: &myelin_integration::fleet::HostEngine, id: &str, since: SystemTime) -> Result<SystemTime> {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (from, to) = (secs(since).saturating_sub(1).to_string(), (secs(SystemTime::now()) + 1).to_string());
    let filter = format!("container={id}");
    let out = engine.docker(&["events", "--since", &from, "--until", &to, "--filter", &filter, "--filter", "event=kill", "--format", "{{.TimeNano}}"])?;
    let nanos: u64 = out.lines().next().and_then(|l| l.trim().parse().ok()).with_context(|| format!("no kill event in {out:?}"))?;
    Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
}
