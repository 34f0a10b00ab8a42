//! Desired state: exactly what HAProxy should run, built from the config's [`Spec`] and the
//! [`Store`]. Deterministic: the same inputs always give an equal value (and equal bytes once
//! rendered).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{Backend, BackendName, ConfigLine, Host, Port, ServerName, ServiceName, Weight};
use crate::store::Store;

/// Global sections of haproxy.cfg.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sections {
    pub global: Vec<ConfigLine>,
    pub defaults: Vec<ConfigLine>,
    /// Extra sections in the order given: the header line (e.g. `listen stats`) and its lines.
    pub extra: Vec<(ConfigLine, Vec<ConfigLine>)>,
}

/// A service's frontend (present when the service has a port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendSpec {
    /// Already validated: an IP address, a host name or `*`.
    pub bind_address: BindAddress,
    pub port: Port,
    pub bind_options: Option<ConfigLine>,
    pub lines: Vec<ConfigLine>,
}

impl FrontendSpec {
    /// The address of the `bind` line.
    pub fn bind(&self) -> String {
        self.bind_address.with_port(self.port)
    }
}

/// Where a frontend listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BindAddress {
    Any,
    Host(Host),
}

impl BindAddress {
    pub fn parse(s: &str) -> Result<Self, crate::InvalidValue> {
        if s == "*" || s.is_empty() {
            Ok(Self::Any)
        } else {
            Host::parse(s).map(Self::Host)
        }
    }

    /// How HAProxy's `bind` line writes this address with a port.
    pub fn with_port(&self, port: Port) -> String {
        match self {
            Self::Any => format!(":{port}"),
            Self::Host(h) if h.is_ipv6() => format!("[{h}]:{port}"),
            Self::Host(h) => format!("{h}:{port}"),
        }
    }
}

/// The order of server lines in a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum BackendOrder {
    /// By server name, ascending.
    #[default]
    Asc,
    /// By server name, descending.
    Desc,
    /// A stable per-host shuffle: the same on every run on one machine, different across
    /// machines (so `balance first` spreads a fleet), seeded by the given value.
    Shuffle(u64),
}

/// What the config says about one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub frontend: Option<FrontendSpec>,
    pub backend_name: BackendName,
    pub backend_lines: Vec<ConfigLine>,
    /// `server_options`, with `%{host}`, `%{port}` and `%{name}` still in it.
    pub server_options: Option<ConfigLine>,
    pub default_servers: Vec<Backend>,
    pub keep_default_servers: bool,
    pub backend_port_override: Option<Port>,
    pub order: BackendOrder,
}

/// What the config asks HAProxy to run, before discovery fills in the servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    pub sections: Sections,
    pub services: BTreeMap<ServiceName, ServiceSpec>,
}

/// One `server` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub name: ServerName,
    pub host: Host,
    pub port: Port,
    pub weight: Option<Weight>,
    /// `server_options` with the substitutions made (every substituted value is validated).
    pub options: Option<ConfigLine>,
}

impl Server {
    /// `host:port` as HAProxy's `server` line wants it.
    pub fn address(&self) -> String {
        if self.host.is_ipv6() {
            format!("ipv6@{}:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Everything about a service but its servers: a change here needs a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceShape {
    pub frontend: Option<FrontendSpec>,
    pub backend_name: BackendName,
    pub backend_lines: Vec<ConfigLine>,
    pub order: BackendOrder,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredService {
    pub shape: ServiceShape,
    pub servers: BTreeMap<ServerName, Server>,
}

/// A backend as HAProxy is asked to route to it (after `default_servers` and
/// `backend_port_override`), with the labels discovery gave: the one shape the status page and
/// `file_output` show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoutedBackend {
    pub name: String,
    pub host: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl RoutedBackend {
    fn of(s: &Server, labels: Option<&BTreeMap<String, String>>) -> Self {
        Self {
            name: s.name.to_string(),
            host: s.host.to_string(),
            port: s.port.get(),
            weight: s.weight.map(|w| w.get()),
            labels: labels.cloned().unwrap_or_default(),
        }
    }
}

/// The labels of a service's backends that have any, by server name.
type Labels = BTreeMap<ServerName, BTreeMap<String, String>>;

/// A service's routed backends as the status page shows them, without a copy per server: the
/// desired service itself (shared with the desired state) and the labels of the backends that
/// have any, listed as [`RoutedBackend`]s when serialized. Read back from JSON (`myelin
/// status`), it is that list.
#[derive(Debug, Clone)]
pub struct RoutedList(Routed);

#[derive(Debug, Clone)]
enum Routed {
    Shared { service: Arc<DesiredService>, labels: Option<Arc<Labels>> },
    Listed(Arc<Vec<RoutedBackend>>),
}

impl RoutedList {
    /// `service`'s servers, with the labels of the backends (`known`, from the store) they come
    /// from.
    pub fn new(service: Arc<DesiredService>, known: &BTreeMap<ServerName, crate::Backend>) -> Self {
        let labels: Labels = known.iter().filter(|(_, b)| !b.labels.is_empty()).map(|(n, b)| (n.clone(), b.labels.clone())).collect();
        Self(Routed::Shared { service, labels: (!labels.is_empty()).then(|| Arc::new(labels)) })
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Routed::Shared { service, .. } => service.servers.len(),
            Routed::Listed(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list, in HAProxy's order.
    pub fn to_vec(&self) -> Vec<RoutedBackend> {
        match &self.0 {
            Routed::Shared { service, labels } => listed(service, labels.as_deref()).collect(),
            Routed::Listed(v) => v.to_vec(),
        }
    }
}

/// A shared list's backends, one at a time.
fn listed<'a>(service: &'a DesiredService, labels: Option<&'a Labels>) -> impl Iterator<Item = RoutedBackend> + 'a {
    service.ordered_servers().into_iter().map(move |s| RoutedBackend::of(s, labels.and_then(|l| l.get(&s.name))))
}

impl Default for RoutedList {
    fn default() -> Self {
        Self(Routed::Listed(Arc::default()))
    }
}

impl From<Vec<RoutedBackend>> for RoutedList {
    fn from(v: Vec<RoutedBackend>) -> Self {
        Self(Routed::Listed(Arc::new(v)))
    }
}

impl PartialEq for RoutedList {
    fn eq(&self, other: &Self) -> bool {
        self.to_vec() == other.to_vec()
    }
}

impl Serialize for RoutedList {
    /// One backend at a time: the whole list is never built.
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Routed::Shared { service, labels } => ser.collect_seq(listed(service, labels.as_deref())),
            Routed::Listed(v) => ser.collect_seq(v.iter()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RoutedList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<RoutedBackend>::deserialize(d).map(Self::from)
    }
}

impl DesiredService {
    /// Its servers in HAProxy's order, with the labels of the backends (`known`, from the
    /// store) they come from.
    pub fn routed(&self, known: &BTreeMap<ServerName, crate::Backend>) -> Vec<RoutedBackend> {
        self.ordered_servers().into_iter().map(|s| RoutedBackend::of(s, known.get(&s.name).map(|b| &b.labels))).collect()
    }

    /// Servers in the order they are written.
    pub fn ordered_servers(&self) -> Vec<&Server> {
        let mut v: Vec<&Server> = self.servers.values().collect();
        match self.shape.order {
            BackendOrder::Asc => {}
            BackendOrder::Desc => v.reverse(),
            BackendOrder::Shuffle(seed) => v.sort_by_key(|s| (fnv1a(seed, s.name.as_str()), s.name.clone())),
        }
        v
    }
}

/// 64-bit FNV-1a: a tiny, stable hash (std's hasher is not stable across releases).
fn fnv1a(seed: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Which part of a desired state a change touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Anything (the configuration changed, or nothing is known of what came before).
    All,
    /// Only these services' servers; sections and the other services are as before.
    Services(std::collections::BTreeSet<ServiceName>),
}

impl Scope {
    pub fn none() -> Self {
        Self::Services(Default::default())
    }

    /// Add what `other` touched.
    pub fn extend(&mut self, other: Scope) {
        match (&mut *self, other) {
            (Self::All, _) => {}
            (_, Self::All) => *self = Self::All,
            (Self::Services(a), Self::Services(b)) => a.extend(b),
        }
    }

    pub fn add(&mut self, name: &ServiceName) {
        if let Self::Services(s) = self {
            s.insert(name.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Services(s) if s.is_empty())
    }

    pub fn contains(&self, name: &ServiceName) -> bool {
        match self {
            Self::All => true,
            Self::Services(s) => s.contains(name),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub sections: Sections,
    /// Shared: the driver's record of what HAProxy runs holds the same services as the desired
    /// state they came from, not copies.
    pub services: BTreeMap<ServiceName, Arc<DesiredService>>,
}

impl DesiredState {
    pub fn build(spec: &Spec, store: &Store) -> Self {
        let services = spec
            .services
            .iter()
            .map(|(name, s)| (name.clone(), Arc::new(build_service(s, store.backends(name)))))
            .collect();
        Self { sections: spec.sections.clone(), services }
    }

    /// Bring the services in `scope` up to date with `spec` and `store` (after their backends
    /// changed); the others are left as they are. The result equals [`DesiredState::build`]
    /// when `scope` names every service that changed.
    pub fn update(&mut self, spec: &Spec, store: &Store, scope: &Scope) {
        match scope {
            Scope::All => *self = Self::build(spec, store),
            Scope::Services(names) => {
                for name in names {
                    match spec.services.get(name) {
                        Some(s) => {
                            self.services.insert(name.clone(), Arc::new(build_service(s, store.backends(name))));
                        }
                        None => {
                            self.services.remove(name);
                        }
                    }
                }
            }
        }
    }

    /// Total servers over all services.
    pub fn server_count(&self) -> usize {
        self.services.values().map(|s| s.servers.len()).sum()
    }
}

fn build_service(spec: &ServiceSpec, discovered: BTreeMap<ServerName, Backend>) -> DesiredService {
    let mut backends = discovered;
    if backends.is_empty() || spec.keep_default_servers {
        for d in &spec.default_servers {
            backends.entry(d.name.clone()).or_insert_with(|| d.clone());
        }
    }
    let servers = backends
        .into_values()
        .map(|b| {
            let port = spec.backend_port_override.unwrap_or(b.port);
            let options = spec.server_options.as_ref().map(|o| substitute(o, &b, port));
            (b.name.clone(), Server { name: b.name, host: b.host, port, weight: b.weight, options })
        })
        .collect();
    DesiredService {
        shape: ServiceShape {
            frontend: spec.frontend.clone(),
            backend_name: spec.backend_name.clone(),
            backend_lines: spec.backend_lines.clone(),
            order: spec.order,
        },
        servers,
    }
}

/// Fill `%{host}`, `%{port}` and `%{name}` in `server_options` with validated values, which hold
/// no whitespace, line break or `#`, so the result is still one line.
fn substitute(options: &ConfigLine, b: &Backend, port: Port) -> ConfigLine {
    if !options.as_str().contains("%{") {
        // Shared by every server of the service, not copied for each.
        return options.clone();
    }
    let s = options
        .as_str()
        .replace("%{host}", b.host.as_str())
        .replace("%{port}", &port.to_string())
        .replace("%{name}", b.name.as_str());
    ConfigLine::parse(&s).expect("substituting validated values keeps a valid line")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Discovered, StoreOptions, Update};

    fn spec(order: BackendOrder, defaults: Vec<Backend>, keep: bool) -> (ServiceName, Spec) {
        let name = ServiceName::parse("web").unwrap();
        let s = ServiceSpec {
            frontend: None,
            backend_name: BackendName::parse("web").unwrap(),
            backend_lines: vec![],
            server_options: Some(ConfigLine::parse("check sni str(%{host}) inter 2s # %{name}:%{port}").unwrap()),
            default_servers: defaults,
            keep_default_servers: keep,
            backend_port_override: None,
            order,
        };
        (name.clone(), Spec { sections: Sections::default(), services: [(name, s)].into() })
    }

    #[test]
    fn defaults_fill_in_and_options_substitute() {
        let dflt = Discovered::new("127.0.0.9", 9).named("fallback").validate().unwrap();
        let (name, spec) = spec(BackendOrder::Asc, vec![dflt], false);
        let mut store = Store::new([(name.clone(), StoreOptions::default())]);
        let d = DesiredState::build(&spec, &store);
        let s = &d.services[&name];
        assert_eq!(s.servers.len(), 1);
        let opt = s.servers.values().next().unwrap().options.as_ref().unwrap().as_str();
        assert_eq!(opt, "check sni str(127.0.0.9) inter 2s # fallback:9");

        store.apply(&name, "", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a")]));
        let d = DesiredState::build(&spec, &store);
        assert_eq!(d.services[&name].servers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn keep_default_servers_adds_them() {
        let dflt = Discovered::new("127.0.0.9", 9).named("fallback").validate().unwrap();
        let (name, spec) = spec(BackendOrder::Desc, vec![dflt], true);
        let mut store = Store::new([(name.clone(), StoreOptions::default())]);
        store.apply(&name, "", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a")]));
        let d = DesiredState::build(&spec, &store);
        let order: Vec<_> = d.services[&name].ordered_servers().iter().map(|s| s.name.as_str().to_owned()).collect();
        assert_eq!(order, ["fallback", "a"]);
    }

    #[test]
    fn shuffle_is_stable_and_seeded() {
        let mut store_backends = vec![];
        for i in 1..20 {
            store_backends.push(Discovered::new("127.0.0.1", i).named(format!("s{i}")));
        }
        let order = |seed| {
            let (name, spec) = spec(BackendOrder::Shuffle(seed), vec![], false);
            let mut store = Store::new([(name.clone(), StoreOptions::default())]);
            store.apply(&name, "", Update::Reset(store_backends.clone()));
            let d = DesiredState::build(&spec, &store);
            d.services[&name].ordered_servers().iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
    }

    /// The status page's list shares the desired service: it serializes to the list `routed`
    /// builds (HAProxy's order, labels where the store has them), and reads back as that list.
    #[test]
    fn a_routed_list_is_the_routed_backends_without_a_copy() {
        let (name, spec) = spec(BackendOrder::Desc, vec![], false);
        let mut store = Store::new([(name.clone(), StoreOptions::default())]);
        let mut labelled = Discovered::new("127.0.0.2", 2).named("b");
        labelled.labels.insert("zone".into(), "z1".into());
        store.apply(&name, "", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a").weighted(3), labelled]));
        let d = DesiredState::build(&spec, &store);
        let known = store.backends(&name);
        let list = RoutedList::new(d.services[&name].clone(), &known);
        let routed = d.services[&name].routed(&known);
        assert_eq!(routed.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(routed[0].labels["zone"], "z1");
        assert_eq!((list.len(), list.to_vec()), (2, routed.clone()));
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(json, serde_json::to_string(&routed).unwrap());
        let back: RoutedList = serde_json::from_str(&json).unwrap();
        assert_eq!(back, list);
        assert_eq!(back.to_vec(), routed);
        assert!(RoutedList::default().is_empty());
    }

    #[test]
    fn bind_address_forms() {
        let p = Port::new(80).unwrap();
        assert_eq!(BindAddress::parse("*").unwrap().with_port(p), ":80");
        assert_eq!(BindAddress::parse("::1").unwrap().with_port(p), "[::1]:80");
        assert_eq!(BindAddress::parse("localhost").unwrap().with_port(p), "localhost:80");
        assert!(BindAddress::parse("0.0.0.0 ssl").is_err());
    }
}
