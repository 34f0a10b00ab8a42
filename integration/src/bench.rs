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
