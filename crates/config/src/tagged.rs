//! `consul_services`: every Consul service that carries a tag becomes a myelin service, built
//! from a template, without a config change. The catalog (which services carry the tag) comes
//! from `myelin_watch_consul::CatalogSource`; this module turns it into services as if they
//! were written under `services:`. Pure: the same catalog gives the same services.

use std::collections::{BTreeMap, BTreeSet};

use myelin_core::ServiceName;
use myelin_source::Number;
use myelin_watch_consul::catalog::{frontends, Catalog, DEFAULT_PORT_TAG};
use myelin_watch_consul::ConsulConfig;
use serde::Deserialize;

use crate::discovery::Discovery;
use crate::schema::{ServiceConfig, ServiceHaproxy};

/// `consul_services` (myelin's own key).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulServicesConfig {
    /// Every Consul service carrying this tag becomes a service of the same name.
    pub tag: String,
    /// The prefix of the tag that gives a service's frontend port (`myelin-port=8080`).
    #[serde(default = "default_port_tag")]
    pub port_tag: String,
    /// Each service's discovery settings (`method: consul` implied; `service` is the Consul
    /// service's name). The agent, token, TLS, `datacenter` and `wait` here are also those of
    /// the catalog queries.
    #[serde(default)]
    pub discovery: ConsulConfig,
    /// Each service's `haproxy` settings; `port` comes from the service's port tag.
    #[serde(default)]
    pub haproxy: TemplateHaproxy,
    #[serde(default = "yes")]
    pub use_previous_backends: bool,
}

/// `services.<name>.haproxy` as a template: compared by value so that a SIGHUP that does not
/// change it keeps the catalog watcher running.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct TemplateHaproxy(pub ServiceHaproxy);

impl PartialEq for TemplateHaproxy {
    fn eq(&self, other: &Self) -> bool {
        format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

fn default_port_tag() -> String {
    DEFAULT_PORT_TAG.to_owned()
}

fn yes() -> bool {
    true
}

/// The services the catalog gives, and the tagged services left out with why (a name myelin
/// cannot use, one already configured, no usable port tag, a port already taken).
pub fn tagged_services(t: &ConsulServicesConfig, catalog: &Catalog, configured: &BTreeMap<String, ServiceConfig>) -> (BTreeMap<String, ServiceConfig>, BTreeMap<String, String>) {
    let mut ports: BTreeSet<u64> = configured.values().filter(|s| !s.haproxy.disabled).filter_map(|s| s.haproxy.port.map(|p| p.0)).collect();
    let (mut out, mut skipped) = (BTreeMap::new(), BTreeMap::new());
    for (name, port) in frontends(catalog, &t.port_tag) {
        let why = if let Err(e) = ServiceName::parse(&name) {
            Some(e.to_string())
        } else if configured.contains_key(&name) {
            Some("a service of that name is configured".to_owned())
        } else {
            match port {
                Err(e) => Some(e),
                Ok(p) if !ports.insert(u64::from(p)) => Some(format!("port {p} is taken by another service")),
                Ok(p) => {
                    let mut discovery = t.discovery.clone();
                    discovery.service = Some(name.clone());
                    let mut haproxy = t.haproxy.0.clone();
                    haproxy.port = Some(Number(u64::from(p)));
                    let svc = ServiceConfig {
                        discovery: Discovery::Consul(Box::new(discovery)),
                        haproxy,
                        default_servers: vec![],
                        keep_default_servers: false,
                        use_previous_backends: t.use_previous_backends,
                        backend_port_override: None,
                        leader_election: None,
                        announce: None,
                    };
                    out.insert(name.clone(), svc);
                    None
                }
            }
        };
        if let Some(why) = why {
            skipped.insert(name, why);
        }
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> ConsulServicesConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn catalog(items: &[(&str, &[&str])]) -> Catalog {
        items.iter().map(|(n, t)| (n.to_string(), t.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn each_tagged_service_from_the_template() {
        let t = template("{tag: myelin, discovery: {address: 'http://192.0.2.1:8500', wait: 30}, haproxy: {bind_address: 0.0.0.0, server_options: check, listen: [mode http]}}");
        let configured: BTreeMap<String, ServiceConfig> =
            serde_yaml_ng::from_str("{web: {discovery: {method: static}, haproxy: {port: 8080}}}").unwrap();
        let cat = catalog(&[
            ("api", &["myelin", "myelin-port=8081"]),
            ("web", &["myelin", "myelin-port=8082"]),
            ("clash", &["myelin", "myelin-port=8080"]),
            ("noport", &["myelin"]),
            ("bad name", &["myelin", "myelin-port=8083"]),
        ]);
        let (got, skipped) = tagged_services(&t, &cat, &configured);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["api"]);
        let api = &got["api"];
        let Discovery::Consul(d) = &api.discovery else { panic!() };
        assert_eq!((d.service.as_deref(), d.address.as_deref()), (Some("api"), Some("http://192.0.2.1:8500")));
        assert_eq!(api.haproxy.port, Some(Number(8081)));
        assert_eq!(api.haproxy.server_options.as_deref(), Some("check"));
        assert_eq!(skipped.keys().collect::<Vec<_>>(), ["bad name", "clash", "noport", "web"]);
        assert!(skipped["clash"].contains("port 8080 is taken"));
        assert!(skipped["web"].contains("configured"));
        assert!(skipped["noport"].contains("no `myelin-port=<port>` tag"));
        // The same catalog, the same services.
        assert_eq!(format!("{:?}", tagged_services(&t, &cat, &configured)), format!("{:?}", (got, skipped)));
    }

    #[test]
    fn loading_with_a_catalog_adds_services_and_notices() {
        let text = "services:
  web: {discovery: {method: static}, haproxy: {port: 8080}}
consul_services:
  tag: myelin
  discovery: {wait: 5}
  haproxy: {bind_address: 127.0.0.1, listen: [mode http]}
";
        let path = std::path::Path::new("/etc/myelin/myelin.yaml");
        let cat = catalog(&[("api", &["myelin", "myelin-port=8081"]), ("noport", &["myelin"])]);
        let loaded = crate::load::load_str_with(path, text, Some(&cat)).unwrap();
        let api = ServiceName::parse("api").unwrap();
        assert!(loaded.services.contains_key(&api) && loaded.spec.services.contains_key(&api));
        assert!(loaded.notices.iter().any(|n| n.message.contains("\"noport\" is not routed")), "{:?}", loaded.notices);
        assert!(loaded.consul_services.is_some());
        // Without a catalog (before the first answer): the configured services only.
        assert_eq!(crate::load::load_str_with(path, text, None).unwrap().services.len(), 1);
        // The template may not name a service or a port.
        let bad = text.replace("discovery: {wait: 5}", "discovery: {service: x, wait: 0.1}").replace("bind_address: 127.0.0.1", "port: 1");
        let errs = crate::load::load_str_with(path, &bad, None).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(keys, ["consul_services.discovery.service", "consul_services.haproxy.port", "consul_services.discovery.wait"]);
    }
}
