use std::collections::BTreeMap;
use std::io::{IoSlice, Write};
use std::sync::Arc;

use askama::Template;
use myelin_core::{DesiredService, DesiredState, Scope, Server, ServiceName};

struct ServiceView<'a> {
    name: &'a ServiceName,
    service: &'a DesiredService,
    servers: Vec<&'a Server>,
}

/// `global`, `defaults` and the extra sections. Only validated types reach these templates
/// (`escape = "none"`): `ConfigLine`, `Ident`s, `Host`, `Port`, `Weight`.
#[derive(Template)]
#[template(path = "head.cfg", escape = "none")]
struct Head<'a> {
    version: &'a str,
    state: &'a DesiredState,
}

/// One service: its frontend (when it has a port) and its backend.
#[derive(Template)]
#[template(path = "service.cfg", escape = "none")]
struct Service<'a> {
    svc: ServiceView<'a>,
}

fn head(state: &DesiredState) -> String {
    Head { version: env!("CARGO_PKG_VERSION"), state }.render().expect("rendering into a String cannot fail")
}

fn service(name: &ServiceName, service: &DesiredService) -> String {
    Service { svc: ServiceView { name, service, servers: service.ordered_servers() } }.render().expect("rendering into a String cannot fail")
}

/// haproxy.cfg for a desired state: the same state always gives the same bytes.
pub fn render(state: &DesiredState) -> String {
    Renderer::default().render(state, &Scope::All).to_string()
}

/// A rendered haproxy.cfg as the pieces the [`Renderer`] keeps (the head, then each service's
/// text), shared with it rather than copied into one string: written to disk a batch of pieces
/// per `writev` and compared with the file on disk piece by piece. At 100,000 servers the file
/// is 4 MB; bringing it in step after a runtime change copies it once, into the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    parts: Vec<Arc<str>>,
    len: usize,
}

/// Pieces handed to one `writev` (Linux takes at most 1,024).
const WRITE_BATCH: usize = 1024;

impl Rendered {
    pub(crate) fn of(parts: Vec<Arc<str>>) -> Self {
        let len = parts.iter().map(|p| p.len()).sum();
        Self { parts, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text, piece by piece, in order.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| &**p)
    }

    /// Whether the two hold the same text: piece by piece when they are cut alike (pieces that
    /// are the same `Arc` are not read), else byte by byte.
    pub fn same_text(&self, other: &Rendered) -> bool {
        if self.len != other.len {
            return false;
        }
        if self.parts.len() == other.parts.len() && self.parts.iter().zip(&other.parts).all(|(a, b)| a.len() == b.len()) {
            return self.parts.iter().zip(&other.parts).all(|(a, b)| Arc::ptr_eq(a, b) || a == b);
        }
        self.parts().flat_map(str::bytes).eq(other.parts().flat_map(str::bytes))
    }

    /// Write the whole text to `w`, up to [`WRITE_BATCH`] pieces per vectored write.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        for batch in self.parts.chunks(WRITE_BATCH) {
            let mut slices: Vec<IoSlice<'_>> = batch.iter().filter(|p| !p.is_empty()).map(|p| IoSlice::new(p.as_bytes())).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match w.write_vectored(rest) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => IoSlice::advance_slices(&mut rest, n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.parts().try_for_each(|p| f.write_str(p))
    }
}

impl From<String> for Rendered {
    fn from(text: String) -> Self {
        Self::of(vec![text.into()])
    }
}

impl From<&str> for Rendered {
    fn from(text: &str) -> Self {
        Self::of(vec![text.into()])
    }
}

/// Renders haproxy.cfg keeping each service's text, so that a change re-renders only the
/// services it touched. The output is always what [`render`] gives for the same state.
#[derive(Debug, Default)]
pub struct Renderer {
    head: Arc<str>,
    services: BTreeMap<ServiceName, Arc<str>>,
}

impl Renderer {
    /// Render `state`, of which only the services in `scope` changed since the last call.
    pub fn render(&mut self, state: &DesiredState, scope: &Scope) -> Rendered {
        self.refresh(state, scope);
        let mut parts = Vec::with_capacity(self.services.len() + 2);
        parts.push(self.head.clone());
        parts.extend(self.services.values().cloned());
        parts.push(Arc::from("\n"));
        Rendered::of(parts)
    }

    fn refresh(&mut self, state: &DesiredState, scope: &Scope) {
        match scope {
            Scope::All => {
                self.head = head(state).into();
                self.services = state.services.iter().map(|(n, s)| (n.clone(), service(n, s).into())).collect();
            }
            Scope::Services(names) => {
                for name in names {
                    match state.services.get(name) {
                        Some(s) => {
                            self.services.insert(name.clone(), service(name, s).into());
                        }
                        None => {
                            self.services.remove(name);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most a few bytes per call, as a vectored write may.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut budget = 5;
            for b in bufs {
                let n = b.len().min(budget);
                self.0.extend_from_slice(&b[..n]);
                budget -= n;
                if budget == 0 {
                    break;
                }
            }
            Ok(5 - budget)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pieces_are_written_whole_and_in_order_across_short_writes_and_batches() {
        // More pieces than one vectored write takes, empty ones among them.
        let pieces: Vec<String> = (0..WRITE_BATCH * 2 + 3).map(|i| if i % 7 == 0 { String::new() } else { format!("piece {i}\n") }).collect();
        let text = Rendered::of(pieces.iter().map(|p| Arc::from(p.as_str())).collect());
        assert_eq!(text.len(), pieces.concat().len());
        let mut out = Trickle(Vec::new());
        text.write_to(&mut out).unwrap();
        assert_eq!(String::from_utf8(out.0).unwrap(), pieces.concat());
        assert_eq!(text.to_string(), pieces.concat());
    }

    #[test]
    fn the_cache_renders_what_a_full_render_gives() {
        let names: Vec<ServiceName> = ["a", "b", "c"].iter().map(|n| ServiceName::parse(n).unwrap()).collect();
        let spec = Spec {
            sections: Sections { global: vec![line("maxconn 100")], ..Sections::default() },
            services: names
                .iter()
                .map(|n| {
                    (n.clone(), ServiceSpec {
                        frontend: None,
                        backend_name: BackendName::parse(n.as_str()).unwrap(),
                        backend_lines: vec![],
                        server_options: None,
                        default_servers: vec![],
                        keep_default_servers: false,
                        backend_port_override: None,
                        order: BackendOrder::Asc,
                    })
                })
                .collect(),
        };
        let mut store = Store::new(names.iter().map(|n| (n.clone(), StoreOptions::default())));
        let mut state = DesiredState::build(&spec, &store);
        let mut r = Renderer::default();
        assert_eq!(r.render(&state, &Scope::All).to_string(), render(&state));
        for (i, n) in names.iter().cycle().take(7).enumerate() {
            store.apply(n, "", Update::Upsert(Discovered::new("127.0.0.1", 80 + i as u16).named(format!("s{i}"))));
            let scope = Scope::Services([n.clone()].into());
            state.update(&spec, &store, &scope);
            assert_eq!(r.render(&state, &scope).to_string(), render(&state));
        }
        // A service gone from the state goes from the text.
        let mut smaller = state.clone();
        smaller.services.remove(&names[1]);
        assert_eq!(r.render(&smaller, &Scope::Services([names[1].clone()].into())).to_string(), render(&smaller));
    }
    use myelin_core::{
        BackendName, BackendOrder, BindAddress, ConfigLine, Discovered, FrontendSpec, Port, Sections, ServiceSpec, Spec,
        Store, StoreOptions, Update,
    };

    fn line(s: &str) -> ConfigLine {
        ConfigLine::parse(s).unwrap()
    }

    #[test]
    fn renders_a_complete_config() {
        let web = ServiceName::parse("web").unwrap();
        let spec = Spec {
            sections: Sections {
                global: vec![line("maxconn 100")],
                defaults: vec![line("mode http"), line("timeout connect 5s")],
                extra: vec![(line("listen stats"), vec![line("bind 127.0.0.1:9999"), line("stats enable")])],
            },
            services: [(
                web.clone(),
                ServiceSpec {
                    frontend: Some(FrontendSpec {
                        bind_address: BindAddress::parse("127.0.0.1").unwrap(),
                        port: Port::new(8080).unwrap(),
                        bind_options: Some(line("accept-proxy")),
                        lines: vec![line("mode http")],
                    }),
                    backend_name: BackendName::parse("web-be").unwrap(),
                    backend_lines: vec![line("mode http"), line("option httpchk GET /")],
                    server_options: Some(line("check port %{port}")),
                    default_servers: vec![],
                    keep_default_servers: false,
                    backend_port_override: None,
                    order: BackendOrder::Asc,
                },
            )]
            .into(),
        };
        let mut store = Store::new([(web.clone(), StoreOptions::default())]);
        store.apply(
            &web,
            "",
            Update::Reset(vec![
                Discovered::new("127.0.0.2", 81).named("b"),
                Discovered::new("127.0.0.1", 80).named("a").weighted(10),
                Discovered::new("::1", 82).named("c"),
                Discovered::new("127.0.0.1\n    server evil 127.0.0.66:1", 80).named("evil"),
            ]),
        );
        let out = render(&DesiredState::build(&spec, &store));
        let expected = format!(
            "# Written by myelin {}; changes made here are overwritten.
global
    maxconn 100

defaults
    mode http
    timeout connect 5s

listen stats
    bind 127.0.0.1:9999
    stats enable

frontend web
    mode http
    bind 127.0.0.1:8080 accept-proxy
    default_backend web-be

backend web-be
    mode http
    option httpchk GET /
    server a 127.0.0.1:80 weight 10 check port 80
    server b 127.0.0.2:81 check port 81
    server c ipv6@::1:82 check port 82
",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(out, expected);
        assert!(!out.contains("evil"));
    }

    #[test]
    fn backend_without_frontend_and_no_servers() {
        let api = ServiceName::parse("api").unwrap();
        let spec = Spec {
            sections: Sections::default(),
            services: [(
                api.clone(),
                ServiceSpec {
                    frontend: None,
                    backend_name: BackendName::parse("api").unwrap(),
                    backend_lines: vec![],
                    server_options: None,
                    default_servers: vec![],
                    keep_default_servers: false,
                    backend_port_override: None,
                    order: BackendOrder::Asc,
                },
            )]
            .into(),
        };
        let store = Store::new([(api, StoreOptions::default())]);
        let out = render(&DesiredState::build(&spec, &store));
        assert!(out.ends_with("\nbackend api\n"), "{out}");
        assert!(!out.contains("frontend"));
    }
}
