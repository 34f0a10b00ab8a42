//! `services`: each service's [`ServiceSpec`] (frontend, backend, listen lines, default
//! servers), and the checks across services (backend names, frontend addresses).

use std::collections::{BTreeMap, BTreeSet};

use myelin_core::{
    Backend, BackendName, BackendOrder, BindAddress, ConfigLine, Discovered, FrontendSpec, Port, ServiceName, ServiceSpec, StoreOptions,
};

use super::context::Ctx;
use super::{discovery, ServiceRuntime};
use crate::placement::{place, Placement};
use crate::position::KeyPath;
use crate::schema::{BackendOrderConfig, Number, ServerEntry, ServiceConfig};

/// Validate every service. Disabled services are left out.
pub(super) fn services(
    cx: &mut Ctx,
    configs: &BTreeMap<String, ServiceConfig>,
    global_bind: &str,
) -> (BTreeMap<ServiceName, ServiceSpec>, BTreeMap<ServiceName, ServiceRuntime>) {
    let mut runtimes = BTreeMap::new();
    let mut specs = BTreeMap::new();
    let mut backend_names: BTreeMap<BackendName, ServiceName> = BTreeMap::new();
    for (name, svc) in configs {
        let path = KeyPath::root().key("services").key(name.as_str());
        let sname = match ServiceName::parse(name) {
            Ok(n) => n,
            Err(e) => {
                cx.error(&path, e.to_string());
                continue;
            }
        };
        if svc.haproxy.disabled {
            cx.notice(&path.key("haproxy").key("disabled"), "service is disabled: not written to haproxy.cfg and not discovered");
            continue;
        }
        let Some(spec) = service_spec(cx, &path, &sname, svc, global_bind) else { continue };
        if let Some(other) = backend_names.insert(spec.backend_name.clone(), sname.clone()) {
            cx.error(
                &path.key("haproxy").key("backend_name"),
                format!("backend name `{}` is already used by service `{other}`", spec.backend_name),
            );
            continue;
        }
        discovery::check(cx, &path.key("discovery"), &svc.discovery);
        if svc.leader_election.is_some() {
            cx.not_supported(&path.key("leader_election"), "leader_election");
        }
        let announce = svc.announce.as_ref().and_then(|a| super::announce::announce(cx, &path.key("announce"), a, &svc.discovery));
        runtimes.insert(
            sname.clone(),
            ServiceRuntime {
                discovery: std::sync::Arc::new(svc.discovery.clone()),
                store: StoreOptions { use_previous_backends: svc.use_previous_backends },
                announce: announce.map(Box::new),
            },
        );
        specs.insert(sname, spec);
    }
    frontend_clashes(cx, &specs);
    announce_clashes(cx, &runtimes);
    (specs, runtimes)
}

/// Two services cannot announce to the same place in a registry: each adopts this host's
/// entries there and removes those it does not want, so they would remove each other's.
fn announce_clashes(cx: &mut Ctx, runtimes: &BTreeMap<ServiceName, ServiceRuntime>) {
    let mut seen: BTreeMap<String, &ServiceName> = BTreeMap::new();
    for (name, r) in runtimes {
        let Some(a) = &r.announce else { continue };
        let location = a.to.location(name);
        if let Some(first) = seen.get(&location) {
            let at = KeyPath::root().key("services").key(name.as_str()).key("announce");
            cx.error_near(
                &at.key("to"),
                &at,
                format!("service `{first}` announces to {location} already: each service needs a place of its own (this host's entries there are adopted and pruned by one service)"),
            );
        } else {
            seen.insert(location, name);
        }
    }
}

/// Two frontends cannot listen on the same address and port; a wildcard address (`*`,
/// `0.0.0.0`, `::`) takes the port on every address. The second one in the files is the error.
fn frontend_clashes(cx: &mut Ctx, specs: &BTreeMap<ServiceName, ServiceSpec>) {
    // Only frontends that overlap another are ordered by position: finding a position reads
    // the service's file again, which a configuration without clashes never needs.
    let mut by_port: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for (name, f) in specs.iter().filter_map(|(name, s)| s.frontend.as_ref().map(|f| (name, f))) {
        by_port.entry(f.port).or_default().push((name, f));
    }
    let mut frontends: Vec<_> = by_port
        .values()
        .flat_map(|same| {
            // On one port, a wildcard overlaps every other frontend, an address the wildcards
            // and the same address.
            let wildcards = same.iter().filter(|(_, f)| wildcard(&f.bind_address)).count();
            let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, f) in same {
                if let BindAddress::Host(h) = &f.bind_address {
                    *hosts.entry(h.as_str()).or_default() += 1;
                }
            }
            same.iter().filter(move |(_, f)| match &f.bind_address {
                BindAddress::Host(h) if !wildcard(&f.bind_address) => wildcards > 0 || hosts[h.as_str()] > 1,
                _ => same.len() > 1,
            })
        })
        .map(|&(name, f)| {
            let path = KeyPath::root().key("services").key(name.as_str()).key("haproxy").key("port");
            (cx.positions.order(&path), path, name, f)
        })
        .collect();
    frontends.sort_by_key(|f| f.0);
    for (i, (_, path, name, f)) in frontends.iter().enumerate() {
        let clash = frontends[..i].iter().find(|(_, _, _, g)| g.port == f.port && addresses_overlap(&g.bind_address, &f.bind_address));
        if let Some((_, _, other, g)) = clash {
            cx.error(
                path,
                format!(
                    "`{}` overlaps `{}`, the frontend of service `{other}`: two frontends cannot listen on the same address and port (service `{name}`)",
                    f.bind_address.with_port(f.port),
                    g.bind_address.with_port(g.port)
                ),
            );
        }
    }
}

fn wildcard(a: &BindAddress) -> bool {
    match a {
        BindAddress::Any => true,
        BindAddress::Host(h) => matches!(h.as_str(), "0.0.0.0" | "::"),
    }
}

fn addresses_overlap(a: &BindAddress, b: &BindAddress) -> bool {
    wildcard(a) || wildcard(b) || a == b
}

fn parse_port(cx: &mut Ctx, path: &KeyPath, n: Option<Number>) -> Option<Port> {
    n.and_then(|p| match Port::parse(&p.0.to_string()) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.error(path, e.to_string());
            None
        }
    })
}

fn service_spec(cx: &mut Ctx, path: &KeyPath, name: &ServiceName, svc: &ServiceConfig, global_bind: &str) -> Option<ServiceSpec> {
    let h = &svc.haproxy;
    let errors_before = cx.errors.len();
    let hp = path.key("haproxy");

    let port = parse_port(cx, &hp.key("port"), h.port);
    let bind_address = match BindAddress::parse(h.bind_address.as_deref().unwrap_or(global_bind)) {
        Ok(b) => b,
        Err(e) => {
            // Without its own, the service takes the global `haproxy.bind_address`.
            let at = if h.bind_address.is_some() { hp.key("bind_address") } else { KeyPath::root().key("haproxy").key("bind_address") };
            cx.error(&at, e.to_string());
            BindAddress::Any
        }
    };
    let bind_options = h.bind_options.as_deref().and_then(|o| match ConfigLine::parse(o) {
        Ok(l) => Some(l),
        Err(e) => {
            cx.error(&hp.key("bind_options"), e.to_string());
            None
        }
    });
    let server_options = h.server_options.as_deref().and_then(|o| {
        let at = hp.key("server_options");
        let mut rest = o;
        while let Some(i) = rest.find("%{") {
            let tail = &rest[i..];
            let end = tail.find('}').map_or(tail.len(), |e| e + 1);
            let ph = &tail[..end];
            if !matches!(ph, "%{host}" | "%{port}" | "%{name}") {
                cx.error(&at, format!("unknown placeholder `{ph}` (known: %{{host}}, %{{port}}, %{{name}})"));
            }
            rest = &tail[end..];
        }
        match ConfigLine::parse(o) {
            Ok(l) => Some(l),
            Err(e) => {
                cx.error(&at, e.to_string());
                None
            }
        }
    });

    let mut frontend_lines = cx.lines(&hp.key("frontend"), &h.frontend);
    let mut backend_lines = cx.lines(&hp.key("backend"), &h.backend);
    for line in cx.lines(&hp.key("listen"), &h.listen) {
        match place(line.as_str()) {
            Placement::Frontend => frontend_lines.push(line),
            Placement::Backend => backend_lines.push(line),
            Placement::Both => {
                frontend_lines.push(line.clone());
                backend_lines.push(line);
            }
        }
    }
    let frontend = match port {
        Some(port) => Some(FrontendSpec { bind_address, port, bind_options, lines: frontend_lines }),
        None => {
            let dropped: Vec<_> = frontend_lines.iter().filter(|l| place(l.as_str()) == Placement::Frontend).map(|l| l.to_string()).collect();
            if !dropped.is_empty() {
                cx.notice(&hp, format!("no `port`, so no frontend: these lines are not written: {}", dropped.join("; ")));
            }
            None
        }
    };

    let backend_name = match &h.backend_name {
        Some(b) => BackendName::parse(b).map_err(|e| cx.error(&hp.key("backend_name"), e.to_string())).ok(),
        None => BackendName::parse(name.as_str()).ok(),
    };

    let mut default_servers: Vec<Backend> = Vec::with_capacity(svc.default_servers.len());
    let mut seen = BTreeSet::new();
    for (i, s) in svc.default_servers.iter().enumerate() {
        let at = path.key("default_servers").index(i);
        match server_entry(s) {
            Ok(b) => {
                if !seen.insert(b.name.clone()) {
                    let key = if s.name.is_some() { at.key("name") } else { at };
                    cx.error(&key, format!("duplicate server name `{}`", b.name));
                }
                default_servers.push(cx.interner.backend(b));
            }
            Err((field, e)) => cx.error(&field.map_or(at.clone(), |f| at.key(f)), e),
        }
    }

    if h.server_port_override.is_some() {
        cx.notice(&hp.key("server_port_override"), "deprecated: use the service's `backend_port_override`");
    }
    let backend_port_override = match svc.backend_port_override {
        Some(p) => parse_port(cx, &path.key("backend_port_override"), Some(p)),
        None => parse_port(cx, &hp.key("server_port_override"), h.server_port_override),
    };
    let order = match h.backend_order {
        None | Some(BackendOrderConfig::Asc) | Some(BackendOrderConfig::NoShuffle) => BackendOrder::Asc,
        Some(BackendOrderConfig::Desc) => BackendOrder::Desc,
        Some(BackendOrderConfig::Shuffle) => BackendOrder::Shuffle(host_seed()),
    };
    if h.shared_frontend.is_some() {
        cx.not_supported(&hp.key("shared_frontend"), "shared_frontend");
    }
    if h.cookie_value_method.is_some() {
        cx.not_supported(&hp.key("cookie_value_method"), "cookie_value_method");
    }
    if cx.errors.len() > errors_before {
        return None;
    }
    Some(ServiceSpec {
        frontend,
        backend_name: backend_name?,
        backend_lines,
        server_options,
        default_servers,
        keep_default_servers: svc.keep_default_servers,
        backend_port_override,
        order,
    })
}

/// A seed that is stable on one machine and differs across machines.
fn host_seed() -> u64 {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    host.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A `default_servers` entry as a backend; on error, the entry's key at fault (if one is).
fn server_entry(s: &ServerEntry) -> Result<Backend, (Option<&'static str>, String)> {
    let d = Discovered {
        name: s.name.clone(),
        host: s.host.clone(),
        port: s.port.0.to_string(),
        weight: s.weight.map(|w| w.0.to_string()),
        labels: s.labels.clone(),
    };
    d.validate().map_err(|e| {
        let field = match e.what {
            "host" => Some("host"),
            "port" => Some("port"),
            "weight" => Some("weight"),
            "label" => Some("labels"),
            _ if s.name.is_some() => Some("name"),
            _ => None,
        };
        (field, e.to_string())
    })
}
