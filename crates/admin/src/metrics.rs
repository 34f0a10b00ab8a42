//! `/metrics`: Prometheus text. The daemon task counts; the admin server only encodes. Each
//! metric is an atomic (or guarded by a lock held for one update, never across an await).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, String)>;

/// One service's series.
#[derive(Debug, Default, Clone, Copy)]
struct Series {
    backends: i64,
    errors: u64,
    reconnects: u64,
    rejected: u64,
}

/// The per-service series, one small entry per service, encoded at each scrape. (A `Family`
/// per metric held, for each service, four label sets, four map entries and four counters:
/// about 0.6 KB a service, 5 MB at 10,000 services; this holds the name and four numbers.)
#[derive(Debug, Default)]
struct PerService(Mutex<BTreeMap<String, Series>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one step: the numbers stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PerService {
    /// Update `s`'s series, creating it (at 0) if it is not known.
    fn update(&self, s: &str, f: impl FnOnce(&mut Series)) {
        let mut map = lock(&self.0);
        match map.get_mut(s) {
            Some(v) => f(v),
            None => f(map.entry(s.to_owned()).or_default()),
        }
    }
}

/// The per-service counters: name, help, and which number.
type Counted = (&'static str, &'static str, fn(&Series) -> u64);

const COUNTERS: [Counted; 3] = [
    ("watcher_errors", "Problems reported by discovery sources, per service", |v| v.errors),
    ("watcher_reconnects", "Times a discovery source was lost and reopened, per service", |v| v.reconnects),
    ("rejected_inputs", "Discovery records refused by validation, per service", |v| v.rejected),
];

impl Collector for PerService {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = lock(&self.0);
        let mut m = encoder.encode_descriptor("backends", "Backends HAProxy is asked to route to, per service", None, MetricType::Gauge)?;
        for (s, v) in map.iter() {
            ConstGauge::new(v.backends).encode(m.encode_family(&[("service", s.as_str())])?)?;
        }
        for (name, help, value) in COUNTERS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (s, v) in map.iter() {
                ConstCounter::new(value(v)).encode(m.encode_family(&[("service", s.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// Every outcome of an apply, as counted in `myelin_applies_total{outcome}`.
pub const APPLY_OUTCOMES: &[&str] = &["installed", "unchanged", "not_written", "rejected", "failed"];

pub struct Metrics {
    registry: Registry,
    per_service: Arc<PerService>,
    applies: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    config_reloads: Family<Labels, Counter>,
    runtime_commands: Family<Labels, Counter>,
    update_to_apply: Histogram,
    ready: Gauge,
    announced: Family<Labels, Gauge>,
    announce_failing: Family<Labels, Gauge>,
}

fn service(s: &str) -> Labels {
    vec![("service", s.to_owned())]
}

fn outcome(o: &str) -> Labels {
    vec![("outcome", o.to_owned())]
}

impl Metrics {
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix("myelin");
        let m = Self {
            registry: Registry::default(),
            per_service: Arc::default(),
            applies: Family::default(),
            reloads: Family::default(),
            config_reloads: Family::default(),
            runtime_commands: Family::default(),
            // 1 ms to ~65 s.
            update_to_apply: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)),
            ready: Gauge::default(),
            announced: Family::default(),
            announce_failing: Family::default(),
        };
        registry.register("build", "myelin's version", Info::new(vec![("version", version.to_owned())]));
        registry.register("ready", "1 once every service's discovery has synced at least once", m.ready.clone());
        registry.register_collector(Box::new(m.per_service.clone()));
        registry.register("applies", "Desired states handed to HAProxy, by outcome", m.applies.clone());
        registry.register("haproxy_reloads", "HAProxy reloads (through the master CLI when configured, else reload_command), by outcome", m.reloads.clone());
        registry.register("config_reloads", "Configuration reloads (SIGHUP), by outcome", m.config_reloads.clone());
        registry.register("haproxy_runtime_commands", "Commands sent to HAProxy's runtime API, by outcome", m.runtime_commands.clone());
        registry.register("announced", "Instances this host holds in a registry, per announcing service", m.announced.clone());
        registry.register("announce_failing", "1 while a service's registry fails (reconnecting with backoff), per announcing service", m.announce_failing.clone());
        registry.register_with_unit(
            "update_to_apply",
            "Time from a discovery change to the install of the haproxy.cfg that carries it",
            Unit::Seconds,
            m.update_to_apply.clone(),
        );
        // Every known outcome is shown from the start, at 0.
        for o in APPLY_OUTCOMES {
            let _ = m.applies.get_or_create(&outcome(o));
        }
        for o in ["ok", "failed"] {
            let _ = m.reloads.get_or_create(&outcome(o));
            let _ = m.runtime_commands.get_or_create(&outcome(o));
        }
        for o in ["ok", "invalid"] {
            let _ = m.config_reloads.get_or_create(&outcome(o));
        }
        Self { registry, ..m }
    }

    /// A service is known: its per-service series exist (at 0) from now on.
    pub fn service_added(&self, s: &str) {
        self.per_service.update(s, |_| {});
    }

    /// A service left the configuration: its series go.
    pub fn service_removed(&self, s: &str) {
        lock(&self.per_service.0).remove(s);
    }

    /// The announcing services now, each with its published count and whether it is failing;
    /// services left out are removed.
    pub fn set_announce(&self, services: &[(&str, usize, bool)]) {
        self.announced.clear();
        self.announce_failing.clear();
        for (s, n, failing) in services {
            self.announced.get_or_create(&service(s)).set(i64::try_from(*n).unwrap_or(i64::MAX));
            self.announce_failing.get_or_create(&service(s)).set(i64::from(*failing));
        }
    }

    pub fn set_backends(&self, s: &str, n: usize) {
        self.per_service.update(s, |v| v.backends = i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn watcher_error(&self, s: &str) {
        self.per_service.update(s, |v| v.errors = v.errors.saturating_add(1));
    }

    pub fn watcher_reconnect(&self, s: &str) {
        self.per_service.update(s, |v| v.reconnects = v.reconnects.saturating_add(1));
    }

    pub fn rejected(&self, s: &str, n: u64) {
        self.per_service.update(s, |v| v.rejected = v.rejected.saturating_add(n));
    }

    pub fn apply(&self, o: &str) {
        self.applies.get_or_create(&outcome(o)).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&outcome(if ok { "ok" } else { "failed" })).inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads.get_or_create(&outcome(if ok { "ok" } else { "invalid" })).inc();
    }

    pub fn runtime_command(&self, ok: bool) {
        self.runtime_commands.get_or_create(&outcome(if ok { "ok" } else { "failed" })).inc();
    }

    pub fn update_to_apply(&self, seconds: f64) {
        self.update_to_apply.observe(seconds);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
    }

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::new("1.2.3");
        m.service_added("web");
        let t = m.encode();
        assert_eq!(value(&t, "myelin_applies_total{outcome=\"rejected\"}"), Some(0.0), "{t}");
        assert_eq!(value(&t, "myelin_haproxy_runtime_commands_total{outcome=\"ok\"}"), Some(0.0), "{t}");
        assert_eq!(value(&t, "myelin_watcher_errors_total{service=\"web\"}"), Some(0.0), "{t}");
        assert!(t.contains("myelin_build_info{version=\"1.2.3\"} 1"), "{t}");

        m.set_backends("web", 3);
        m.rejected("web", 2);
        m.rejected("web", 1);
        m.apply("installed");
        m.reload(true);
        m.reload(false);
        m.watcher_reconnect("web");
        m.config_reload(false);
        m.update_to_apply(0.003);
        m.set_ready(true);
        let t = m.encode();
        assert_eq!(value(&t, "myelin_backends{service=\"web\"}"), Some(3.0), "{t}");
        assert_eq!(value(&t, "myelin_rejected_inputs_total{service=\"web\"}"), Some(3.0), "{t}");
        assert_eq!(value(&t, "myelin_applies_total{outcome=\"installed\"}"), Some(1.0), "{t}");
        assert_eq!(value(&t, "myelin_haproxy_reloads_total{outcome=\"failed\"}"), Some(1.0), "{t}");
        assert_eq!(value(&t, "myelin_watcher_reconnects_total{service=\"web\"}"), Some(1.0), "{t}");
        assert_eq!(value(&t, "myelin_config_reloads_total{outcome=\"invalid\"}"), Some(1.0), "{t}");
        assert_eq!(value(&t, "myelin_update_to_apply_seconds_count"), Some(1.0), "{t}");
        assert_eq!(value(&t, "myelin_update_to_apply_seconds_bucket{le=\"0.004\"}"), Some(1.0), "{t}");
        assert_eq!(value(&t, "myelin_update_to_apply_seconds_bucket{le=\"0.002\"}"), Some(0.0), "{t}");
        assert_eq!(value(&t, "myelin_ready"), Some(1.0), "{t}");

        m.set_announce(&[("web", 2, false), ("api", 0, true)]);
        let t = m.encode();
        assert_eq!(value(&t, "myelin_announced{service=\"web\"}"), Some(2.0), "{t}");
        assert_eq!(value(&t, "myelin_announce_failing{service=\"api\"}"), Some(1.0), "{t}");
        m.set_announce(&[]);
        m.service_added("api");
        m.service_removed("web");
        let t = m.encode();
        assert!(!t.contains("service=\"web\""), "{t}");
        assert_eq!(value(&t, "myelin_backends{service=\"api\"}"), Some(0.0), "{t}");
        assert_eq!(value(&t, "myelin_rejected_inputs_total{service=\"api\"}"), Some(0.0), "{t}");
        // Each metric is described once, with its type.
        assert_eq!(t.matches("# TYPE myelin_watcher_errors counter").count(), 1, "{t}");
        assert_eq!(t.matches("# TYPE myelin_backends gauge").count(), 1, "{t}");
    }
}
