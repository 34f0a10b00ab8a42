use askama::Template;
use myelin_core::{DesiredService, DesiredState, Server, ServiceName};

struct ServiceView<'a> {
    name: &'a ServiceName,
    service: &'a DesiredService,
    servers: Vec<&'a Server>,
}

/// Only validated types reach this template (`escape = "none"`): `ConfigLine`, `Ident`s, `Host`,
/// `Port`, `Weight`.
#[derive(Template)]
#[template(path = "haproxy.cfg", escape = "none")]
struct Config<'a> {
    version: &'a str,
    state: &'a DesiredState,
    services: Vec<ServiceView<'a>>,
}

/// haproxy.cfg for a desired state: the same state always gives the same bytes.
pub fn render(state: &DesiredState) -> String {
    let services = state
        .services
        .iter()
        .map(|(name, service)| ServiceView { name, service, servers: service.ordered_servers() })
        .collect();
    Config { version: env!("CARGO_PKG_VERSION"), state, services }.render().expect("rendering into a String cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
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
