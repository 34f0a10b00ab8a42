//! What the `make bench` binaries share: polling for a change and printing its timings.

use std::time::{Duration, Instant};

/// Check `f` every millisecond until it is true (when) or `timeout` passes (`None`).
pub fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Instant> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// One line: the median, worst and best of `v`.
pub fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = if v.len() % 2 == 1 { ms(v[v.len() / 2]) } else { (ms(v[v.len() / 2 - 1]) + ms(v[v.len() / 2])) / 2.0 };
    println!("{name:<44} median {median:7.1} ms   worst {:7.1} ms   best {:7.1} ms   (n={})", ms(v[v.len() - 1]), ms(v[0]), v.len());
}

/// One service discovered by `discovery` (the lines under `discovery:`), routed by a myelin and
/// an HAProxy with the runtime API on, `drain_timeout: 1` and `extra` (more `haproxy:` keys or
/// top-level sections), started and serving the discovery's instance that answers "anchor".
pub struct Routed {
    pub env: crate::Env,
    pub haproxy: crate::Proc,
    pub myelin: crate::Proc,
    /// HAProxy's reloads once the anchor answered.
    pub reloads: u32,
}

impl Routed {
    pub fn start(discovery: &str, extra: &str) -> anyhow::Result<Self> {
        let env = crate::Env::new();
        let extra = format!("{}  drain_timeout: 1\n{extra}", env.runtime_extra());
        let cfg = env.write_config_with(discovery, "", &extra);
        let haproxy = env.start_haproxy(&cfg)?;
        let myelin = env.start_myelin(&cfg)?;
        let port = env.frontend_port;
        if poll(Duration::from_secs(10), || crate::get(port, "/").is_ok_and(|(_, b)| b == "anchor")).is_none() {
            anyhow::bail!("the anchor never answered: {}", myelin.log());
        }
        let reloads = env.reloads()?;
        Ok(Self { env, haproxy, myelin, reloads })
    }
}
