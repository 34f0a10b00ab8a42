//! `make bench`: myelin at 1,000 / 10,000 / 100,000 backends, as a large user runs it: release
//! build, real HAProxy 2.6 in master-worker mode, the runtime API on, fleets of `static`
//! services in `service_conf_dir` (N/10 services × 10 servers, and N/100 × 100), plus one small
//! `file` service that changes. Everything on 127.0.0.1; every loop is bounded.
//!
//! Per fleet: render time (in process), cold start (myelin started → HAProxy reloaded onto the
//! full config: wall time and myelin's CPU), one change (add, weight, remove; latency from the
//! file write until the servers HAProxy's `show servers state` lists as neither draining nor in
//! maintenance are the file's, with its weights, and myelin's CPU per change; the slowest five go to
//! stderr), a burst of 10,000 changes (applies, reloads, time until HAProxy matches), idle CPU and RSS.
//! Writes its figures into docs/performance.md (between the `scale` markers) and draws
//! docs/scale.svg. `MYELIN_BENCH_SIZES=1000,10000` and `MYELIN_BENCH_IDLE=60` narrow or
//! lengthen a run.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const CHANGES: usize = 180;
const BURST: usize = 10_000;
const FILE_SERVERS: usize = 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn ask(sock: &Path, cmd: &str) -> Result<String> {
    let mut s = UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(cmd.as_bytes())?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// utime + stime of a process, in seconds.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

fn reloads(master: &Path) -> u32 {
    ask(master, "show proc").ok().and_then(|t| t.lines().find(|l| l.contains("master")).and_then(|l| l.split_whitespace().nth(2)?.parse().ok())).unwrap_or(0)
}

fn metric(port: u16, name: &str) -> f64 {
    let Ok((_, body)) = myelin_integration::get(port, "/metrics") else { return -1.0 };
    body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// `show servers state chg`: the servers neither draining nor in maintenance (admin state 0;
/// the bench runs no health checks), name → weight.
fn chg_state(sock: &Path) -> std::collections::BTreeMap<String, u32> {
    let Ok(text) = ask(sock, "show servers state chg") else { return Default::default() };
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 7)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[6] == "0").then_some(())?;
            Some((f[3].to_owned(), f[7].parse().ok()?))
        })
        .collect()
}

fn file_text(servers: &[(String, u16, u32)]) -> String {
    servers.iter().map(|(n, p, w)| format!("- {{name: {n}, host: 127.0.0.1, port: {p}, weight: {w}}}\n")).collect()
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    backends: usize,
    per_service: usize,
    render_ms: f64,
    render_one_ms: f64,
    cold_wall_s: f64,
    cold_cpu_s: f64,
    change_median_ms: f64,
    change_worst_ms: f64,
    cpu_per_change_ms: f64,
    burst_applies: f64,
    burst_reloads: u32,
    burst_match_s: f64,
    idle_cpu_s: f64,
    idle_secs: u64,
    rss_mb: f64,
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn render_times(services: usize, per: usize) -> (f64, f64) {
    use myelin_core::*;
    let names: Vec<ServiceName> = (0..services).map(|i| ServiceName::parse(&format!("s{i}")).unwrap()).collect();
    let spec = Spec {
        sections: Sections::default(),
        services: names
            .iter()
            .map(|n| {
                let defaults = (0..per).map(|j| Discovered::new("127.0.0.1", 10000 + j as u16).named(format!("b{j}")).validate().unwrap()).collect();
                (n.clone(), ServiceSpec {
                    frontend: None,
                    backend_name: BackendName::parse(n.as_str()).unwrap(),
                    backend_lines: vec![],
                    server_options: None,
                    default_servers: defaults,
                    keep_default_servers: false,
                    backend_port_override: None,
                    order: BackendOrder::Asc,
                })
            })
            .collect(),
    };
    let store = Store::new(names.iter().map(|n| (n.clone(), StoreOptions::default())));
    let state = DesiredState::build(&spec, &store);
    let t = Instant::now();
    let full = myelin_haproxy::render(&state);
    let full_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut r = myelin_haproxy::Renderer::default();
    r.render(&state, &Scope::All);
    let t = Instant::now();
    let again = r.render(&state, &Scope::Services([names[0].clone()].into()));
    let one_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(full, again.to_string());
    (full_ms, one_ms)
}

fn run(backends: usize, per: usize, idle: u64) -> Result<Figures> {
    let services = backends / per;
    let mut f = Figures { backends, per_service: per, idle_secs: idle, ..Figures::default() };
    (f.render_ms, f.render_one_ms) = render_times(services, per);

    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir(d.join("services"))?;
    for i in 0..services {
        let servers: Vec<String> = (0..per).map(|j| format!("{{\"name\": \"b{j}\", \"host\": \"127.0.0.1\", \"port\": {}}}", 10000 + j)).collect();
        std::fs::write(d.join("services").join(format!("s{i}.json")), format!("{{\"discovery\": {{\"method\": \"static\"}}, \"default_servers\": [{}]}}", servers.join(", ")))?;
    }
    let mut chg: Vec<(String, u16, u32)> = (0..FILE_SERVERS).map(|i| (format!("c{i}"), 20000 + i as u16, 1)).collect();
    write_file(&d.join("chg.yaml"), &file_text(&chg));
    let port = myelin_integration::free_port();
    let admin = myelin_integration::free_port();
    let cfg = d.join("myelin.yaml");
    std::fs::write(
        &cfg,
        format!(
            "service_conf_dir: services
admin: {{bind: {admin}}}
services:
  chg:
    discovery: {{method: file, path: chg.yaml}}
    haproxy: {{port: {port}, bind_address: 127.0.0.1}}
haproxy:
  config_file_path: haproxy.cfg
  socket_file_path: stats.sock
  master_socket_path: master.sock
  reload_command: 'true'
  global: [maxconn 2000, hard-stop-after 5s]
"
        ),
    )?;
    // HAProxy starts on a config without the fleet, as on a fresh host.
    std::fs::write(d.join("haproxy.cfg"), format!("global\n    maxconn 100\n    stats socket {} mode 600 level admin expose-fd listeners\n\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n", d.join("stats.sock").display()))?;
    let hap = Kill(
        Command::new("haproxy")
            .args(["-W", "-db", "-f"])
            .arg(d.join("haproxy.cfg"))
            .arg("-S")
            .arg(d.join("master.sock"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("haproxy.log"))?)
            .spawn()?,
    );
    let master = d.join("master.sock");
    let sock = d.join("stats.sock");
    let t0 = Instant::now();
    while !(master.exists() && sock.exists()) {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("HAProxy did not start: {}", std::fs::read_to_string(d.join("haproxy.log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = reloads(&master);
    let bin = root().join("target/release/myelin");
    let t0 = Instant::now();
    let myelin = Kill(
        Command::new(&bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("MYELIN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("myelin.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let pid = myelin.0.id();
    // Cold start: until HAProxy has reloaded onto the whole fleet.
    loop {
        if reloads(&master) > before && chg_state(&sock).len() == FILE_SERVERS {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("no reload within 600 s: {}", std::fs::read_to_string(d.join("myelin.log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f.cold_wall_s = t0.elapsed().as_secs_f64();
    f.cold_cpu_s = cpu(pid);
    std::thread::sleep(Duration::from_secs(3));

    // One change at a time: add, weight, remove.
    let mut lat = Vec::new();
    let cpu0 = cpu(pid);
    let mut next_port = 30000u16;
    for i in 0..CHANGES {
        match i % 3 {
            0 => {
                chg.push((format!("n{i}"), next_port, 1));
                next_port += 1;
            }
            1 => chg.last_mut().unwrap().2 = 7,
            _ => {
                chg.pop();
            }
        }
        let want: std::collections::BTreeMap<String, u32> = chg.iter().map(|(n, _, w)| (n.clone(), *w)).collect();
        let t = Instant::now();
        write_file(&d.join("chg.yaml"), &file_text(&chg));
        loop {
            // A removed server drains first: it is out of rotation once it drains (it is
            // deleted when its sessions reach zero, which is not part of the change).
            if chg_state(&sock) == want {
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("change {i} not seen within 20 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(60));
    }
    f.cpu_per_change_ms = (cpu(pid) - cpu0) * 1000.0 / CHANGES as f64;
    let mut slow: Vec<(usize, f64)> = lat.iter().copied().enumerate().collect();
    slow.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("{} backends, {} per service: slowest changes (index: 0 add, 1 weight, 2 remove, mod 3; ms): {:?}", f.backends, f.per_service, &slow[..slow.len().min(5)]);
    f.change_worst_ms = lat.iter().copied().fold(0.0, f64::max);
    f.change_median_ms = median(&mut lat);

    // A burst: 10,000 changes of weights, written back to back.
    std::thread::sleep(Duration::from_secs(2));
    let applies0 = metric(admin, "myelin_applies_total");
    let reloads0 = reloads(&master);
    let t = Instant::now();
    for i in 0..BURST {
        let k = i % FILE_SERVERS;
        chg[k].2 = 1 + (i % 200) as u32;
        write_file(&d.join("chg.yaml"), &file_text(&chg));
    }
    let want: std::collections::BTreeMap<String, u32> = chg.iter().map(|(n, _, w)| (n.clone(), *w)).collect();
    while chg_state(&sock) != want {
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the burst did not converge within 120 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f.burst_match_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    f.burst_applies = metric(admin, "myelin_applies_total") - applies0;
    f.burst_reloads = reloads(&master) - reloads0;

    // Idle.
    std::thread::sleep(Duration::from_secs(2));
    let c = cpu(pid);
    std::thread::sleep(Duration::from_secs(idle));
    f.idle_cpu_s = cpu(pid) - c;
    f.rss_mb = rss_mb(pid);
    drop(myelin);
    drop(hap);
    Ok(f)
}

fn table(all: &[Figures]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| backends | services × servers | render (full / one service) | cold start: wall / myelin CPU | one change: median / worst | myelin CPU per change | burst of 10,000: applies / reloads / until HAProxy matches | idle CPU | RSS |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let _ = writeln!(
            t,
            "| {} | {} × {} | {:.1} ms / {:.2} ms | {:.2} s / {:.2} s | {:.1} ms / {:.1} ms | {:.2} ms | {:.0} / {} / {:.2} s | {:.2} s in {} s | {:.0} MB |",
            f.backends,
            f.backends / f.per_service,
            f.per_service,
            f.render_ms,
            f.render_one_ms,
            f.cold_wall_s,
            f.cold_cpu_s,
            f.change_median_ms,
            f.change_worst_ms,
            f.cpu_per_change_ms,
            f.burst_applies,
            f.burst_reloads,
            f.burst_match_s,
            f.idle_cpu_s,
            f.idle_secs,
            f.rss_mb
        );
    }
    t
}

/// Three small panels against fleet size (log scale): latency, CPU per change, memory, with the
/// targets as dashed lines.
fn chart(all: &[Figures]) -> String {
    type Panel = (&'static str, &'static str, f64, fn(&Figures) -> f64);
    let panels: [Panel; 3] = [
        ("one change: median latency (ms)", "10 ms target", 10.0, |f| f.change_median_ms),
        ("myelin CPU per change (ms)", "1 ms target", 1.0, |f| f.cpu_per_change_ms),
        ("resident memory (MB)", "50 MB target", 50.0, |f| f.rss_mb),
    ];
    let (w, h, pad) = (300.0, 220.0, 45.0);
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='11'>\n", w * 3.0, h + 30.0);
    let sizes: Vec<f64> = {
        let mut v: Vec<f64> = all.iter().map(|f| f.backends as f64).collect();
        v.dedup();
        v
    };
    let (xmin, xmax) = (sizes.first().copied().unwrap_or(1000.0).log10(), sizes.last().copied().unwrap_or(100000.0).log10().max(sizes.first().copied().unwrap_or(1000.0).log10() + 1.0));
    for (p, (title, target_label, target, get)) in panels.iter().enumerate() {
        let ox = p as f64 * w;
        let ymax = all.iter().map(get).fold(*target * 1.5, f64::max);
        let x = |b: f64| ox + pad + (b.log10() - xmin) / (xmax - xmin) * (w - pad - 40.0);
        let y = |v: f64| h - pad + 20.0 - v / ymax * (h - pad - 10.0);
        let _ = writeln!(s, "<text x='{}' y='14'>{title}</text>", ox + 10.0);
        let _ = writeln!(s, "<line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>", ox + pad, y(0.0), ox + w - 10.0, y(0.0));
        let _ = writeln!(s, "<line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>", ox + pad, y(0.0), ox + pad, y(ymax));
        let _ = writeln!(s, "<text x='{}' y='{}'>{:.3}</text>", ox + 2.0, y(ymax) + 4.0, ymax);
        let _ = writeln!(s, "<line x1='{}' y1='{}' x2='{}' y2='{}' stroke='red' stroke-dasharray='4'/><text x='{}' y='{}' fill='red'>{target_label}</text>", ox + pad, y(*target), ox + w - 10.0, y(*target), ox + pad + 4.0, y(*target) - 3.0);
        for b in &sizes {
            let _ = writeln!(s, "<text x='{}' y='{}' text-anchor='middle'>{}</text>", x(*b), h + 5.0, b);
        }
        for (per, colour) in [(10usize, "steelblue"), (100, "darkorange")] {
            let pts: Vec<String> = all.iter().filter(|f| f.per_service == per).map(|f| format!("{:.1},{:.1}", x(f.backends as f64), y(get(f)))).collect();
            let _ = writeln!(s, "<polyline fill='none' stroke='{colour}' stroke-width='2' points='{}'/>", pts.join(" "));
            for pt in &pts {
                let (px, py) = pt.split_once(',').unwrap();
                let _ = writeln!(s, "<circle cx='{px}' cy='{py}' r='3' fill='{colour}'/>");
            }
        }
    }
    let _ = writeln!(s, "<text x='10' y='{}' fill='steelblue'>● services of 10 servers</text><text x='180' y='{}' fill='darkorange'>● services of 100 servers</text><text x='380' y='{}'>x: backends in the fleet (log scale)</text>", h + 25.0, h + 25.0, h + 25.0);
    s.push_str("</svg>\n");
    s
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::var("MYELIN_BENCH_SIZES").ok().map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect()).unwrap_or(vec![1000, 10_000, 100_000]);
    let idle: u64 = std::env::var("MYELIN_BENCH_IDLE").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut all = Vec::new();
    for n in sizes {
        for per in [10, 100] {
            let f = run(n, per, idle)?;
            println!("BENCH scale {f:?}");
            all.push(f);
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()).unwrap_or_default();
    let haproxy = Command::new("haproxy").arg("-v").output().map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned()).unwrap_or_default();
    let section = format!(
        "<!-- scale:begin (written by `make bench`: integration/bench/scale.rs) -->\nMachine: {} × {model}, {haproxy}; release build; HAProxy in master-worker mode with the runtime API on. One change is a write of the `file` service's backends file (an add, a weight, a remove in turn; {CHANGES} changes, one every ~60 ms) until the servers HAProxy's `show servers state` lists as neither draining nor in maintenance (admin state 0; no health checks run) are the file's, with its weights: a removed server counts once it drains (the file is replaced by a rename, which the file source reads at once). CPU per change is myelin's user+system time over those changes divided by their number (the kernel counts in 10 ms ticks). Idle is myelin's CPU with nothing changing, default `verify_interval` (30 s).\n\n{}\n![latency, CPU per change and memory against fleet size](scale.svg)\n<!-- scale:end -->",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        table(&all)
    );
    let perf = root().join("docs/performance.md");
    let text = std::fs::read_to_string(&perf).unwrap_or_default();
    let new = match (text.find("<!-- scale:begin"), text.find("<!-- scale:end -->")) {
        (Some(a), Some(b)) => format!("{}{section}{}", &text[..a], &text[b + "<!-- scale:end -->".len()..]),
        _ => format!("{text}\n## Scale: 1,000 to 100,000 backends\n\n{section}\n"),
    };
    std::fs::write(&perf, new)?;
    std::fs::write(root().join("docs/scale.svg"), chart(&all))?;
    print!("{}", table(&all));
    Ok(())
}
