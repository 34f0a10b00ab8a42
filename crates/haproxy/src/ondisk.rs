//! What HAProxy runs, read back from a haproxy.cfg that myelin wrote: used at start-up, so that
//! a restarted myelin can apply membership changes through the runtime API instead of reloading.

use std::collections::BTreeMap;

use myelin_core::{ConfigLine, DesiredState, Host, Port, Server, ServerName, Weight};

use crate::render;

fn parse_server(rest: &str) -> Option<Server> {
    let (name, rest) = rest.split_once(' ')?;
    let (addr, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (host, port) = addr.strip_prefix("ipv6@").unwrap_or(addr).rsplit_once(':')?;
    let (weight, options) = match rest.strip_prefix("weight ") {
        Some(w) => {
            let (n, o) = w.split_once(' ').unwrap_or((w, ""));
            (Some(Weight::parse(n).ok()?), o)
        }
        None => (None, rest),
    };
    Some(Server {
        name: ServerName::parse(name).ok()?,
        host: Host::parse(host).ok()?,
        port: Port::parse(port).ok()?,
        weight,
        options: if options.is_empty() { None } else { Some(ConfigLine::parse(options).ok()?) },
    })
}

/// The servers of each `backend` section of a haproxy.cfg myelin wrote, by backend name. At
/// start-up they stand in for a service until its source syncs, so that a source that never
/// syncs cannot empty a backend HAProxy serves. Lines that do not parse are skipped.
pub fn servers_by_backend(disk: &str) -> BTreeMap<String, Vec<Server>> {
    let mut out: BTreeMap<String, Vec<Server>> = BTreeMap::new();
    let mut backend: Option<String> = None;
    for line in disk.lines() {
        if let Some(b) = line.strip_prefix("backend ") {
            backend = Some(b.trim().to_owned());
        } else if !line.starts_with(' ') && !line.is_empty() {
            backend = None;
        } else if let (Some(b), Some(rest)) = (&backend, line.strip_prefix("    server ")) {
            if let Some(server) = parse_server(rest) {
                out.entry(b.clone()).or_default().push(server);
            }
        }
    }
    out
}

/// If `disk` is what myelin renders for `desired` but for the servers, the state it describes:
/// `desired`'s structure with the servers written on disk. `None` when anything else differs
/// (then only a reload can bring HAProxy to `desired`).
pub fn servers_on_disk(disk: &str, desired: &DesiredState) -> Option<DesiredState> {
    let mut state = desired.clone();
    for s in state.services.values_mut() {
        std::sync::Arc::make_mut(s).servers.clear();
    }
    let stripped: String = disk.lines().filter(|l| !l.starts_with("    server ")).flat_map(|l| [l, "\n"]).collect();
    if stripped != render(&state) {
        return None;
    }
    let by_backend: BTreeMap<String, _> =
        state.services.iter().map(|(name, s)| (s.shape.backend_name.as_str().to_owned(), name.clone())).collect();
    let mut backend = None;
    for line in disk.lines() {
        if let Some(b) = line.strip_prefix("backend ") {
            backend = by_backend.get(b.trim()).cloned();
        } else if !line.starts_with(' ') && !line.is_empty() {
            backend = None;
        } else if let Some(rest) = line.strip_prefix("    server ") {
            let svc = std::sync::Arc::make_mut(state.services.get_mut(backend.as_ref()?)?);
            let server = parse_server(rest)?;
            svc.servers.insert(server.name.clone(), server);
        }
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servers_of_each_backend() {
        let cfg = "global\n    maxconn 10\n\nbackend web\n    mode http\n    server a 127.0.0.1:8001 weight 3 check\n    server b 127.0.0.1:8002\n    server bad host:notaport\n\nfrontend web\n    bind 127.0.0.1:80\n    server x 127.0.0.1:1\n\nbackend api\n    server c [::1]:9\n";
        let by = servers_by_backend(cfg);
        let names = |b: &str| by[b].iter().map(|s| format!("{}={}:{}", s.name, s.host, s.port)).collect::<Vec<_>>();
        assert_eq!(names("web"), ["a=127.0.0.1:8001", "b=127.0.0.1:8002"]);
        assert_eq!(by["web"][0].weight.map(|w| w.get()), Some(3));
        assert_eq!(by.len(), 2, "{by:?}");
    }
    use myelin_core::{
        diff, BackendName, BackendOrder, BindAddress, Discovered, FrontendSpec, Sections, ServiceName, ServiceSpec, Spec, Store,
        StoreOptions, Update,
    };

    fn state(servers: Vec<Discovered>, lines: &[&str]) -> DesiredState {
        let web = ServiceName::parse("web").unwrap();
        let spec = Spec {
            sections: Sections { global: vec![ConfigLine::parse("maxconn 10").unwrap()], ..Sections::default() },
            services: [(
                web.clone(),
                ServiceSpec {
                    frontend: Some(FrontendSpec {
                        bind_address: BindAddress::parse("127.0.0.1").unwrap(),
                        port: Port::new(80).unwrap(),
                        bind_options: None,
                        lines: vec![],
                    }),
                    backend_name: BackendName::parse("web").unwrap(),
                    backend_lines: lines.iter().map(|l| ConfigLine::parse(l).unwrap()).collect(),
                    server_options: Some(ConfigLine::parse("check  inter 1s").unwrap()),
                    default_servers: vec![],
                    keep_default_servers: false,
                    backend_port_override: None,
                    order: BackendOrder::Asc,
                },
            )]
            .into(),
        };
        let mut store = Store::new([(web.clone(), StoreOptions::default())]);
        store.apply(&web, "", Update::Reset(servers));
        DesiredState::build(&spec, &store)
    }

    #[test]
    fn reads_back_what_it_rendered() {
        let old = state(vec![Discovered::new("127.0.0.1", 1).named("a").weighted(3), Discovered::new("::1", 2).named("b")], &[]);
        let new = state(vec![Discovered::new("127.0.0.1", 1).named("a"), Discovered::new("127.0.0.1", 3).named("c")], &[]);
        let disk = render(&old);
        let back = servers_on_disk(&disk, &new).expect("same structure");
        assert_eq!(back, old);
        let plan = diff(&back, &new);
        assert!(!plan.reload_required());
        assert_eq!(plan.server_counts(), (1, 1, 1));
    }

    #[test]
    fn a_different_structure_is_refused() {
        let old = state(vec![Discovered::new("127.0.0.1", 1).named("a")], &[]);
        let new = state(vec![Discovered::new("127.0.0.1", 1).named("a")], &["balance first"]);
        assert!(servers_on_disk(&render(&old), &new).is_none());
        assert!(servers_on_disk("global\n    maxconn 10\n", &new).is_none());
        // A user's own `server` line in the backend's lines cannot be told apart: refused.
        let own = state(vec![], &["server static 127.0.0.1:9"]);
        assert!(servers_on_disk(&render(&own), &own).is_none());
    }
}
