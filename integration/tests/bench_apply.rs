//! Benchmark (run by `make bench`, not by `make test`): membership changes through the file
//! source, timed from the file write to HAProxy running the change: the servers that take new
//! connections (`show servers state`, admin state 0, polled every millisecond) are exactly the
//! file's, with its weights. A removed server counts as applied once it is draining. With the
//! runtime API on and off. Reports figures; asserts only that every change landed.

use std::time::{Duration, Instant};

use myelin_integration::{wait_for, Backend, Env};

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!("median {:.1} ms, p90 {:.1} ms, worst {:.1} ms", pct(0.5).as_secs_f64() * 1e3, pct(0.9).as_secs_f64() * 1e3, v[v.len() - 1].as_secs_f64() * 1e3)
}

fn run(changes: usize, runtime: bool) {
    let env = Env::new();
    let pool: Vec<Backend> = (0..10).map(|i| Backend::start(&format!("b{i}"))).collect();
    let extra = if runtime {
        format!(
            "  socket_file_path: {}\n  master_socket_path: {}\n  drain_timeout: 1\n",
            env.path("haproxy.sock").display(),
            env.path("master.sock").display()
        )
    } else {
        // The reload path at its fastest: no rate limit.
        "  restart_interval: 0\n".to_string()
    };
    let cfg = env.write_config(&extra);
    let text = std::fs::read_to_string(&cfg).unwrap();
    if !runtime {
        std::fs::write(&cfg, text.replace("  restart_interval: 0.2\n", "")).unwrap();
    }
    let entry = |i: usize, w: u16| format!("- {{name: {}, host: 127.0.0.1, port: {}, weight: {w}}}\n", pool[i].name, pool[i].port);
    env.write_backends(&(entry(0, 1) + &entry(1, 1)));
    let _haproxy = env.start_haproxy(&cfg).unwrap();
    let myelin = env.start_myelin(&cfg).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let reloads0 = env.reloads().unwrap();

    let mut members: Vec<(usize, u16)> = vec![(0, 1), (1, 1)];
    let mut took = Vec::new();
    for step in 0..changes {
        let pick = (step * 7 + 3) % pool.len();
        match members.iter().position(|(i, _)| *i == pick) {
            Some(p) if step % 2 == 0 && members.len() > 2 => {
                members.remove(p);
            }
            Some(p) => members[p].1 = 1 + ((members[p].1 as usize + step) % 9) as u16,
            None => members.push((pick, 1 + (step % 4) as u16)),
        }
        members.sort();
        let text: String = members.iter().map(|(i, w)| entry(*i, *w)).collect();
        let want: Vec<(String, u16, u16)> = members.iter().map(|(i, w)| (pool[*i].name.clone(), pool[*i].port, *w)).collect();
        let t0 = Instant::now();
        env.write_backends(&text);
        let ok = wait_for(Duration::from_secs(10), || env.active_servers("web").is_ok_and(|s| s == want));
        assert!(ok.is_some(), "step {step}: {:?} != {want:?}\n{}", env.servers("web"), myelin.log());
        took.push(t0.elapsed());
        if t0.elapsed() > Duration::from_secs(1) {
            eprintln!("slow step {step}: {:?} at {:?}", t0.elapsed(), std::time::SystemTime::now());
        }
    }
    let reloads = env.reloads().unwrap() - reloads0;
    let log = myelin.log();
    if let Some(keep) = std::env::var_os("BENCH_KEEP_LOG") {
        std::fs::write(keep, &log).unwrap();
    }
    // Each apply through the runtime API logs the commands it sent.
    let commands: u64 = log
        .lines()
        .filter(|l| l.contains("Applied through the runtime API"))
        .filter_map(|l| l.split(" commands=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let per = |n: u64| n as f64 * 1000.0 / changes as f64;
    println!(
        "BENCH {} path, {changes} changes: update -> applied {}; reloads {reloads} ({:.0} per 1,000 changes); runtime commands {commands} ({:.0} per 1,000 changes)",
        if runtime { "runtime-API" } else { "reload" },
        stats(took),
        per(reloads as u64),
        per(commands),
    );
}

#[test]
#[ignore = "benchmark: run with `make bench`"]
fn bench_runtime_api_path() {
    run(1000, true);
}

#[test]
#[ignore = "benchmark: run with `make bench`"]
fn bench_reload_path() {
    run(200, false);
}
