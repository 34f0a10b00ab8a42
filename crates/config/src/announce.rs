//! `services.<name>.announce` and the top-level `announce_as`: which local containers this host
//! publishes for a service, at which address, after which check, and to which registry. The
//! registries are a closed, `method`-tagged enum ([`AnnounceTo`]); each arm's settings belong
//! to its registry's crate, which also makes its `Registry` backend.

use myelin_source::{Number, Seconds};
use myelin_watch_docker::DockerConfig;
use myelin_watch_consul::ConsulAnnounce;
use myelin_watch_etcd::EtcdAnnounce;
use myelin_watch_zookeeper::ZookeeperAnnounce;
use serde::Deserialize;

use crate::discovery::{with_path, Discovery};

/// `services.<name>.announce`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Which containers of this host's own engine: the Docker discovery's keys (`servers` is
    /// refused: a host announces its own engine only).
    pub containers: DockerConfig,
    /// The address other hosts reach the published ports at (an IP address); required unless
    /// `containers.address` is `container` (routed container networks).
    pub address: Option<String>,
    /// myelin's own check before a container is announced.
    pub check: Option<CheckConfig>,
    /// The registry; by default the service's own discovery when it is a registry (etcd,
    /// Consul, ZooKeeper with Nerve nodes).
    pub to: Option<AnnounceTo>,
}

/// `announce.to`: the registry to publish to, by `method`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AnnounceTo {
    /// Keys `<path>/<instance id>` on a lease kept alive by myelin.
    #[serde(deserialize_with = "with_path")]
    Etcd(EtcdAnnounce),
    /// The local Consul agent's service registrations, with a TTL check kept passing.
    #[serde(deserialize_with = "with_path")]
    Consul(ConsulAnnounce),
    /// Ephemeral nodes `<path>/<instance id>` holding Nerve's JSON, on a session of myelin's.
    #[serde(deserialize_with = "with_path")]
    Zookeeper(ZookeeperAnnounce),
}

impl AnnounceTo {
    /// The default `to`: the service's own discovery, when it is a registry myelin announces to.
    pub fn from_discovery(d: &Discovery) -> Option<Self> {
        Self::default_for(d).ok()
    }

    /// The default `to`, or why the discovery makes none.
    pub fn default_for(d: &Discovery) -> Result<Self, String> {
        let not_a_registry = || format!("this service discovers with `{}`, not a registry myelin announces to", d.method());
        match d {
            Discovery::Etcd(e) => Ok(Self::Etcd(EtcdAnnounce::from_discovery(e))),
            Discovery::Consul(c) => Ok(Self::Consul(ConsulAnnounce::from_discovery(c))),
            Discovery::Zookeeper(z) => ZookeeperAnnounce::from_discovery(z).map(Self::Zookeeper).map_err(str::to_owned),
            Discovery::ZookeeperPoll(z) => ZookeeperAnnounce::from_poll_discovery(z).map(Self::Zookeeper).map_err(str::to_owned),
            Discovery::Static(_) | Discovery::File(_) | Discovery::Docker(_) => Err(not_a_registry()),
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Self::Etcd(_) => "etcd",
            Self::Consul(_) => "consul",
            Self::Zookeeper(_) => "zookeeper",
        }
    }

    /// Where in the registry this host's entries go (`etcd /services/web`): two services
    /// cannot announce to the same place, since each adopts and removes this host's entries
    /// there that it does not want.
    /// `service` is the myelin service (Consul's default service name).
    pub fn location(&self, service: &myelin_core::ServiceName) -> String {
        match self {
            Self::Etcd(e) => format!("etcd path {}", e.path.trim_end_matches('/')),
            Self::Consul(c) => format!("consul service {:?}", c.service.as_deref().unwrap_or(service.as_str())),
            Self::Zookeeper(z) => format!("zookeeper path {}", z.path),
        }
    }

    /// What serde cannot check, each with its key below `to`.
    pub fn check(&self) -> Vec<myelin_source::SettingsProblem> {
        match self {
            Self::Etcd(e) => e.check(),
            Self::Consul(c) => c.check(),
            Self::Zookeeper(z) => z.check(),
        }
    }
}

/// `announce.check`: Nerve's check, run by myelin against each container before it is
/// announced, and while it is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// `http` only: the path to `GET` (default `/`); 2xx and 3xx pass.
    pub path: Option<String>,
    /// Seconds between checks (default 1).
    pub interval: Option<Seconds>,
    /// Seconds one check may take (default 1).
    pub timeout: Option<Seconds>,
    /// Consecutive passes before a container is announced (default 1).
    pub rise: Option<Number>,
    /// Consecutive failures before it is withdrawn (default 1).
    pub fall: Option<Number>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    Tcp,
    Http,
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use myelin_announce::{CheckKind, Owner};
    use myelin_core::ServiceName;

    use super::AnnounceTo;
    use crate::load_str;

    const HEAD: &str = "haproxy: {do_reloads: false}\nannounce_as: host-a\nservices:\n  web:\n";
    const ETCD: &str = "    discovery: {method: etcd, endpoints: ['http://127.0.0.1:2379'], path: /services/web, user: u, password: pw}\n";

    fn load(text: &str) -> Result<crate::Loaded, Vec<String>> {
        load_str(Path::new("/etc/myelin/test.yaml"), text).map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    #[track_caller]
    fn errors(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn announce_to_the_services_own_etcd_by_default() {
        let text = format!(
            "{HEAD}{ETCD}    announce:\n      containers: {{image_name: local/nodeapp, container_port: 8000, labels: {{tier: web}}}}\n      address: 192.0.2.10\n      check: {{type: http, path: /health, interval: 0.5, timeout: 0.25, rise: 2, fall: '3'}}\n"
        );
        let l = load(&text).unwrap();
        assert_eq!(l.owner, Some(Owner::new("host-a").unwrap()));
        let a = l.services[&ServiceName::parse("web").unwrap()].announce.clone().unwrap();
        assert_eq!(a.address, Some("192.0.2.10".parse().unwrap()));
        let AnnounceTo::Etcd(e) = &a.to else { panic!("{:?}", a.to) };
        assert_eq!((e.path.as_str(), e.endpoints.len(), e.user.as_deref(), e.ttl()), ("/services/web", 1, Some("u"), 10));
        let c = a.check.clone().unwrap();
        assert_eq!(c.kind, CheckKind::Http { path: "/health".into() });
        assert_eq!((c.interval, c.timeout, c.rise, c.fall), (Duration::from_millis(500), Duration::from_millis(250), 2, 3));
        let m = a.mapping(l.owner.as_ref().unwrap());
        assert_eq!(m.container_port, Some(8000));
        // No announce anywhere: no owner needed.
        assert_eq!(load(&format!("haproxy: {{do_reloads: false}}\nservices:\n  web:\n{ETCD}")).unwrap().owner, None);
    }

    #[test]
    fn an_explicit_to_and_routed_container_addresses() {
        let text = format!(
            "{HEAD}    discovery: {{method: docker, container_port: 8000}}\n    announce:\n      containers: {{address: container, container_port: 8000}}\n      check: {{type: tcp}}\n      to: {{method: etcd, host: 127.0.0.1, port: 2379, path: /s/web, ttl: 30}}\n"
        );
        let l = load(&text).unwrap();
        let a = l.services[&ServiceName::parse("web").unwrap()].announce.clone().unwrap();
        assert_eq!(a.address, None);
        assert_eq!(a.check.unwrap().kind, CheckKind::Tcp);
        let AnnounceTo::Etcd(e) = &a.to else { panic!("{:?}", a.to) };
        assert_eq!(e.ttl(), 30);
    }

    #[test]
    fn problems_at_their_keys() {
        // `to` is needed when the discovery is not a registry.
        let e = errors(&format!("{HEAD}    discovery: {{method: static}}\n    announce:\n      containers: {{image_name: x}}\n      address: 127.0.0.1\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("/etc/myelin/test.yaml:6:5: services.web.announce.to: required: this service discovers with `static`, not a registry"), "{e:?}");
        // Each problem at its own key, all at once.
        let text = format!(
            "{HEAD}{ETCD}    announce:\n      containers:\n        servers: [{{name: a, host: 192.0.2.1}}]\n        container_port: 0\n      address: 0.0.0.0\n      check: {{type: tcp, path: /x, interval: 0, rise: 0}}\n      to: {{method: etcd, endpoints: [], path: /s, ttl: 1}}\n"
        );
        let got = errors(&text);
        let keys: Vec<&str> = got.iter().map(|e| e.split(": ").nth(1).unwrap_or("")).collect();
        assert_eq!(
            keys,
            [
                "services.web.announce.containers.servers",
                "services.web.announce.containers.container_port",
                "services.web.announce.address",
                "services.web.announce.check.interval",
                "services.web.announce.check.rise",
                "services.web.announce.check.path",
                "services.web.announce.to.endpoints",
                "services.web.announce.to.ttl",
            ],
            "{got:#?}"
        );
        assert!(got[0].starts_with("/etc/myelin/test.yaml:8:9: "), "{got:?}");
        assert!(got[0].contains("its own engine only"), "{got:?}");
        assert!(got[2].contains("0.0.0.0 is not an address other hosts can reach"), "{got:?}");
        // `address` is required for published ports, refused with container addresses.
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{image_name: x}}\n"));
        assert!(e[0].starts_with("/etc/myelin/test.yaml:6:5: services.web.announce.address: required"), "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{address: container}}\n      address: 192.0.2.1\n"));
        assert!(e[0].contains("services.web.announce.address: with `containers.address: container`"), "{e:?}");
        // Two services announcing to the same place would remove each other's entries.
        let two = format!("{HEAD}{ETCD}    announce: {{containers: {{}}, address: 127.0.0.1}}\n  zweb:\n    discovery: {{method: static}}\n    announce: {{containers: {{}}, address: 127.0.0.1, to: {{method: etcd, endpoints: [a], path: /services/web/}}}}\n");
        let e = errors(&two);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("services.zweb.announce.to: service `web` announces to etcd path /services/web already"), "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{}}\n      address: web.example\n"));
        assert!(e[0].contains("\"web.example\" is not an IP address"), "{e:?}");
    }

    #[test]
    fn unknown_keys_and_methods_are_refused_with_their_position() {
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{imagename: x}}\n      address: 127.0.0.1\n"));
        assert!(e[0].starts_with("/etc/myelin/test.yaml:") && e[0].contains("services.web.announce.containers") && e[0].contains("imagename"), "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{}}\n      address: 127.0.0.1\n      to: {{method: etcd, path: /s, endpoints: [a], lease: 3}}\n"));
        assert!(e[0].contains("services.web.announce.to") && e[0].contains("lease"), "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{}}\n      address: 127.0.0.1\n      to: {{method: docker}}\n"));
        assert!(e[0].contains("services.web.announce.to") && e[0].contains("docker"), "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{}}\n      address: 127.0.0.1\n      check: {{type: udp}}\n"));
        assert!(e[0].contains("services.web.announce.check.type"), "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}    announce:\n      containers: {{}}\n      address: 127.0.0.1\n      healthcheck: {{}}\n"));
        assert!(e[0].contains("services.web.announce") && e[0].contains("healthcheck"), "{e:?}");
        // announce_as: a name registries can hold.
        let e = errors(&format!("{}{ETCD}", HEAD.replace("host-a", "'host_a'")));
        assert!(e[0].contains("announce_as: \"host_a\" holds '_'"), "{e:?}");
    }

    #[test]
    fn consul_and_zookeeper_by_default_from_the_discovery_or_explicit() {
        let containers = "    announce:\n      containers: {image_name: local/nodeapp, container_port: 8000}\n      address: 192.0.2.10\n";
        let web = |l: &crate::Loaded| l.services[&ServiceName::parse("web").unwrap()].announce.clone().unwrap().to;
        // Consul: the same agent, token and service name; the tags the discovery selects on.
        let l = load(&format!("{HEAD}    discovery: {{method: consul, service: web-prod, tag: blue, address: 'http://127.0.0.1:8500', token: s3cr3t}}\n{containers}")).unwrap();
        let AnnounceTo::Consul(c) = web(&l) else { panic!() };
        assert_eq!((c.service.as_deref(), c.tags.clone(), c.address.as_deref()), (Some("web-prod"), vec!["blue".to_owned()], Some("http://127.0.0.1:8500")));
        assert_eq!(c.token.as_ref().map(|t| t.secret()), Some("s3cr3t"));
        assert_eq!((c.ttl(), c.deregister_critical_after()), (Duration::from_secs(10), Duration::from_secs(60)));
        // ZooKeeper (Nerve nodes): the same ensemble and path.
        let l = load(&format!("{HEAD}    discovery: {{method: zookeeper, hosts: ['127.0.0.1:2181'], path: /nerve/web}}\n{containers}")).unwrap();
        let AnnounceTo::Zookeeper(z) = web(&l) else { panic!() };
        assert_eq!((z.hosts.clone(), z.path.as_str(), z.session_timeout()), (vec!["127.0.0.1:2181".to_owned()], "/nerve/web", Duration::from_secs(10)));
        let l = load(&format!("{HEAD}    discovery: {{method: zookeeper_poll, hosts: ['127.0.0.1:2181'], path: /nerve/web}}\n{containers}")).unwrap();
        assert_eq!(web(&l).method(), "zookeeper");
        // Serverset nodes: no default, and why.
        let e = errors(&format!("{HEAD}    discovery: {{method: zookeeper, hosts: ['127.0.0.1:2181'], path: /x, decode: {{method: serverset}}}}\n{containers}"));
        assert!(e[0].contains("services.web.announce.to: required: this service's ZooKeeper discovery decodes `serverset` nodes"), "{e:?}");
        // Explicit arms, with their settings checked at their keys.
        let l = load(&format!("{HEAD}{ETCD}{containers}      to: {{method: consul, ttl: 5, deregister_critical_after: 120}}\n")).unwrap();
        let AnnounceTo::Consul(c) = web(&l) else { panic!() };
        assert_eq!(c.ttl(), Duration::from_secs(5));
        let l = load(&format!("{HEAD}{ETCD}{containers}      to: {{method: zookeeper, hosts: ['127.0.0.1:2181'], path: /s/web, session_timeout: 4}}\n")).unwrap();
        let AnnounceTo::Zookeeper(z) = web(&l) else { panic!() };
        assert_eq!(z.session_timeout(), Duration::from_secs(4));
        let e = errors(&format!("{HEAD}{ETCD}{containers}      to: {{method: consul, ttl: 0.1, tags: ['']}}\n"));
        let keys: Vec<&str> = e.iter().map(|e| e.split(": ").nth(1).unwrap_or("")).collect();
        assert_eq!(keys, ["services.web.announce.to.tags[0]", "services.web.announce.to.ttl"], "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}{containers}      to: {{method: zookeeper, hosts: [], path: s}}\n"));
        let keys: Vec<&str> = e.iter().map(|e| e.split(": ").nth(1).unwrap_or("")).collect();
        assert_eq!(keys, ["services.web.announce.to.hosts", "services.web.announce.to.path"], "{e:?}");
        let e = errors(&format!("{HEAD}{ETCD}{containers}      to: {{method: zookeeper, hosts: ['a:1'], path: /s, ttl: 3}}\n"));
        assert!(e[0].contains("services.web.announce.to") && e[0].contains("ttl"), "{e:?}");
        // Two services announcing to the same Consul service or ZooKeeper path.
        let two = format!("{HEAD}{ETCD}{containers}      to: {{method: consul}}\n  api:\n    discovery: {{method: static}}\n    announce: {{containers: {{}}, address: 127.0.0.1, to: {{method: consul, service: web}}}}\n");
        let e = errors(&two);
        assert!(e.len() == 1 && e[0].contains("services.web.announce.to: service `api` announces to consul service \"web\" already"), "{e:?}");
        assert!(load(&two.replace("service: web}", "service: api}")).is_ok());
        let two = format!("{HEAD}{ETCD}{containers}      to: {{method: zookeeper, hosts: ['a:1'], path: /s}}\n  api:\n    discovery: {{method: static}}\n    announce: {{containers: {{}}, address: 127.0.0.1, to: {{method: zookeeper, hosts: ['b:1'], path: /s}}}}\n");
        assert!(errors(&two)[0].contains("announces to zookeeper path /s already"));
    }
}
