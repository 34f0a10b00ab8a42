//! `/metrics`: Prometheus text. The daemon task counts; the admin server only encodes. Each
//! metric is an atomic (or guarded by a lock held for one update, never across an await).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, String)>;

/// Every outcome of an apply, as counted in `myelin_applies_total{outcome}`.
pub const APPLY_OUTCOMES: &[&str] = &["installed", "unchanged", "not_written", "rejected", "failed"];

pub struct Metrics {
    registry: Registry,
    backends: Family<Labels, Gauge>,
    watcher_errors: Family<Labels, Counter>,
    watcher_reconnects: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
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
            backends: Family::default(),
            watcher_errors: Family::default(),
            watcher_reconnects: Family::default(),
            rejected: Family::default(),
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
        registry.register("backends", "Backends HAProxy is asked to route to, per service", m.backends.clone());
        registry.register("watcher_errors", "Problems reported by discovery sources, per service", m.watcher_errors.clone());
        registry.register("watcher_reconnects", "Times a discovery source was lost and reopened, per service", m.watcher_reconnects.clone());
        registry.register("rejected_inputs", "Discovery records refused by validation, per service", m.rejected.clone());
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
        let _ = self.backends.get_or_create(&service(s));
        let _ = self.watcher_errors.get_or_create(&service(s));
        let _ = self.watcher_reconnects.get_or_create(&service(s));
        let _ = self.rejected.get_or_create(&service(s));
    }

    /// A service left the configuration: its series go.
    pub fn service_removed(&self, s: &str) {
        for f in [&self.watcher_errors, &self.watcher_reconnects, &self.rejected] {
            f.remove(&service(s));
        }
        self.backends.remove(&service(s));
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
        self.backends.get_or_create(&service(s)).set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn watcher_error(&self, s: &str) {
        self.watcher_errors.get_or_create(&service(s)).inc();
    }

    pub fn watcher_reconnect(&self, s: &str) {
        self.watcher_reconnects.get_or_create(&service(s)).inc();
    }

    pub fn rejected(&self, s: &str, n: u64) {
        self.rejected.get_or_create(&service(s)).inc_by(n);
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
        m.service_removed("web");
        assert!(!m.encode().contains("service=\"web\""));
    }
}
