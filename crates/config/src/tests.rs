//! Loading real files, good and bad.

use std::path::{Path, PathBuf};

use crate::{load, load_str, Discovery};

fn ok(text: &str) -> crate::Loaded {
    load_str(Path::new("/etc/myelin/test.yaml"), text).unwrap_or_else(|e| panic!("{}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))
}

fn err(text: &str) -> String {
    match load_str(Path::new("/etc/myelin/test.yaml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
    }
}

const MIN: &str = "haproxy:\n  do_reloads: false\n";

#[test]
fn the_tutorial_synapse_config_loads_unchanged() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/synapse.json.conf");
    let l = load(&path).unwrap();
    let name = myelin_core::ServiceName::parse("nodesrv").unwrap();
    assert!(matches!(l.services[&name].discovery, Discovery::Docker(_)));
    let svc = &l.spec.services[&name];
    let fe = svc.frontend.as_ref().unwrap();
    assert_eq!(fe.port.get(), 8080);
    let fl: Vec<_> = fe.lines.iter().map(|l| l.as_str()).collect();
    assert_eq!(fl, ["mode http"]);
    let bl: Vec<_> = svc.backend_lines.iter().map(|l| l.as_str()).collect();
    assert_eq!(bl, ["mode http", "option httpchk /", "http-check expect string Hello"]);
    let d: Vec<_> = l.spec.sections.defaults.iter().map(|l| l.as_str()).collect();
    assert_eq!(d, ["timeout connect 5000", "timeout client 50000", "timeout server 50000"]);
    let n = l.notices.iter().find(|n| n.message.contains("contimeout")).expect("a warning for contimeout");
    assert_eq!(n.line, Some(22), "{n}");
    assert!(n.to_string().contains("synapse.json.conf:22: haproxy.defaults[0]"), "{n}");
    assert_eq!(l.haproxy.reload_command, Some(crate::Command::Shell("service haproxy reload".into())));
}

#[test]
fn unknown_keys_get_position_path_and_hint() {
    let e = err("services:\n  web:\n    discovery: {method: static}\n    haproxy:\n      prot: 80\n");
    assert!(e.starts_with("/etc/myelin/test.yaml:5:"), "{e}");
    assert!(e.contains("services.web.haproxy"), "{e}");
    assert!(e.contains("did you mean `port`?"), "{e}");

    let e = err("services:\n  web:\n    discovery: {method: dockr}\n");
    assert!(e.contains("did you mean `docker`?"), "{e}");
    let e = err("servcies: {}\n");
    assert!(e.contains("did you mean `services`?"), "{e}");
}

#[test]
fn wrong_types_and_values_are_errors() {
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: static}}\n    haproxy: {{port: 70000}}\n"));
    assert!(e.contains("services.web.haproxy.port") && e.contains("1 to 65535"), "{e}");
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: static}}\n    haproxy: {{port: eighty}}\n"));
    assert!(e.contains(":6:") && e.contains("services.web.haproxy.port"), "{e}");
    let e = err(&format!("{MIN}services:\n  'we b':\n    discovery: {{method: static}}\n"));
    assert!(e.contains("services.we b") && e.contains("only letters"), "{e}");
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: static}}\n    haproxy: {{listen: [\"mode http\\nbackend evil\"]}}\n"));
    assert!(e.contains("services.web.haproxy.listen[0]") && e.contains("line break"), "{e}");
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: static}}\n    default_servers: [{{host: 'a b', port: 1}}]\n"));
    assert!(e.contains("services.web.default_servers[0]") && e.contains("host"), "{e}");
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: static}}\n    haproxy: {{server_options: 'check port %{{prot}}'}}\n"));
    assert!(e.contains("unknown placeholder `%{prot}`"), "{e}");
}

#[test]
fn every_error_is_reported() {
    let e = err("haproxy:\n  restart_jitter: 5\nservices:\n  a:\n    discovery: {method: static}\n    haproxy: {port: 0}\n");
    assert!(e.contains("reload_command") && e.contains("restart_jitter") && e.contains("services.a.haproxy.port"), "{e}");
}

#[test]
fn backend_names_must_be_unique() {
    let e = err(&format!(
        "{MIN}services:\n  a:\n    discovery: {{method: static}}\n    haproxy: {{backend_name: shared}}\n  b:\n    discovery: {{method: static}}\n    haproxy: {{backend_name: shared}}\n"
    ));
    assert!(e.contains("already used by service `a`"), "{e}");
}

#[test]
fn environment_interpolation() {
    std::env::set_var("MYELIN_TEST_PORT", "9090");
    let l = ok(&format!("{MIN}services:\n  web:\n    discovery: {{method: static}}\n    haproxy: {{port: ${{MYELIN_TEST_PORT}}, bind_address: '${{MYELIN_UNSET:-127.0.0.1}}'}}\n"));
    let fe = l.spec.services.values().next().unwrap().frontend.clone().unwrap();
    assert_eq!(fe.port.get(), 9090);
    let e = err("haproxy:\n  do_reloads: false\n  global: ['${MYELIN_SURELY_UNSET}']\n");
    assert!(e.contains(":3:") && e.contains("MYELIN_SURELY_UNSET"), "{e}");
}

#[test]
fn native_yaml_form_and_defaults() {
    let l = ok("haproxy:\n  reload_command: [kill, -USR2, '1234']\n  restart_interval: 0.5\nservices:\n  web:\n    discovery:\n      method: file\n      path: backends.yaml\n    haproxy:\n      port: 8080\n      backend: mode http\n");
    assert_eq!(l.haproxy.reload_command, Some(crate::Command::Argv(vec!["kill".into(), "-USR2".into(), "1234".into()])));
    assert_eq!(l.haproxy.restart_interval.as_millis(), 500);
    let name = myelin_core::ServiceName::parse("web").unwrap();
    match &l.services[&name].discovery {
        Discovery::File(f) => assert_eq!(l.source_context(&name).resolve(&f.path), Path::new("/etc/myelin/backends.yaml")),
        d => panic!("{d:?}"),
    }
    assert!(l.spec.sections.defaults.iter().any(|d| d.as_str() == "option redispatch"));
    assert!(l.services[&name].store.use_previous_backends);
}

#[test]
fn not_supported_yet_keys_are_noticed() {
    let l = ok("statsd: {host: localhost}\nhaproxy:\n  do_reloads: false\n  state_file_path: /tmp/s.json\n");
    let all: Vec<_> = l.notices.iter().map(|n| n.to_string()).collect();
    assert!(all.iter().any(|n| n.contains("statsd") && n.contains("not supported yet")), "{all:?}");
    assert!(!all.iter().any(|n| n.contains("state_file_path")), "{all:?}");
}

#[test]
fn service_conf_dir_adds_services() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("svc")).unwrap();
    std::fs::write(dir.path().join("svc/api.json"), r#"{"discovery": {"method": "static"}, "default_servers": [{"host": "127.0.0.1", "port": 81}]}"#).unwrap();
    std::fs::write(dir.path().join("svc/bad.json"), r#"{"discovery": {"method": "static"}, "haproxy": {"prot": 1}}"#).unwrap();
    let main = dir.path().join("myelin.yaml");
    std::fs::write(&main, "service_conf_dir: svc\nhaproxy: {do_reloads: false}\n").unwrap();
    let e = load(&main).unwrap_err();
    assert!(e[0].to_string().contains("bad.json:1:") && e[0].to_string().contains("did you mean `port`"), "{}", e[0]);
    std::fs::remove_file(dir.path().join("svc/bad.json")).unwrap();
    let l = load(&main).unwrap();
    assert_eq!(l.spec.services.len(), 1);
    assert_eq!(l.spec.services.keys().next().unwrap().as_str(), "api");
}

#[test]
fn disabled_services_are_left_out() {
    let l = ok(&format!("{MIN}services:\n  web:\n    discovery: {{method: static}}\n    haproxy: {{disabled: true}}\n"));
    assert!(l.spec.services.is_empty() && l.services.is_empty());
}

#[test]
fn the_runtime_api_adds_its_lines_unless_given() {
    let l = ok("haproxy:\n  do_reloads: false\n  config_file_path: /run/h/haproxy.cfg\n  socket_file_path: /run/h/admin.sock\n");
    let g: Vec<_> = l.spec.sections.global.iter().map(|l| l.as_str()).collect();
    assert!(g.contains(&"stats socket /run/h/admin.sock mode 600 level admin expose-fd listeners"), "{g:?}");
    assert!(g.contains(&"server-state-file /run/h/haproxy.cfg.state"), "{g:?}");
    assert!(l.spec.sections.defaults.iter().any(|d| d.as_str() == "load-server-state-from-file global"));
    assert!(l.haproxy.do_socket);

    let l = ok("haproxy:\n  do_reloads: false\n  socket_file_path: /run/h/admin.sock\n  global: ['stats socket /run/h/admin.sock level admin']\n");
    assert_eq!(l.spec.sections.global.iter().filter(|l| l.as_str().starts_with("stats socket")).count(), 1);

    let l = ok("haproxy:\n  do_reloads: false\n  socket_file_path: /run/h/admin.sock\n  do_socket: false\n");
    assert!(!l.spec.sections.global.iter().any(|l| l.as_str().starts_with("stats socket")));
    assert!(err("haproxy:\n  do_reloads: false\n  do_socket: true\n").contains("socket_file_path"));
}

#[test]
fn admin_listener_defaults_to_loopback_and_bad_binds_are_errors() {
    assert_eq!(ok(MIN).admin, None);
    assert_eq!(ok(&format!("{MIN}admin: {{bind: 9213}}\n")).admin, Some("127.0.0.1:9213".parse().unwrap()));
    assert_eq!(ok(&format!("{MIN}admin: {{bind: '9213'}}\n")).admin, Some("127.0.0.1:9213".parse().unwrap()));
    assert_eq!(ok(&format!("{MIN}admin: {{bind: '0.0.0.0:80'}}\n")).admin, Some("0.0.0.0:80".parse().unwrap()));
    assert_eq!(ok(&format!("{MIN}admin: {{bind: '[::1]:9213'}}\n")).admin, Some("[::1]:9213".parse().unwrap()));
    let e = err(&format!("{MIN}admin: {{bind: 'localhost:9213'}}\n"));
    assert!(e.contains("admin.bind") && e.contains("not ADDRESS:PORT"), "{e}");
    let e = err(&format!("{MIN}admin: {{bind: 70000}}\n"));
    assert!(e.contains("admin.bind") && e.contains("1 to 65535"), "{e}");
    let e = err(&format!("{MIN}admin: {{bnd: 1}}\n"));
    assert!(e.contains("did you mean `bind`?"), "{e}");
}

#[test]
fn file_output_is_supported() {
    let l = ok(&format!("{MIN}file_output: {{output_directory: out}}\n"));
    assert_eq!(l.file_output, Some(PathBuf::from("/etc/myelin/out")));
    assert!(l.notices.iter().all(|n| !n.message.contains("file_output")), "{:?}", l.notices);
}

#[test]
fn docker_discovery_keys() {
    let l = ok(&format!(
        "{MIN}services:\n  web:\n    discovery:\n      method: docker\n      servers: [{{name: h1, host: 192.0.2.10, cert_path: certs}}, {{name: h2, host: docker2.example, port: 2375}}]\n      image_name: local/nodeapp\n      container_port: 8000\n      address: container\n      require_healthy: false\n      name_pattern: 'web-*'\n      labels: {{tier: front}}\n      check_interval: 5\n"
    ));
    let Discovery::Docker(d) = &l.services[&myelin_core::ServiceName::parse("web").unwrap()].discovery else { panic!() };
    // Relative paths are taken from the config file's directory when the sources open.
    let cx = l.source_context(&myelin_core::ServiceName::parse("web").unwrap());
    assert_eq!(d.servers[0].cert_path.as_deref().map(|p| cx.resolve(p)), Some(PathBuf::from("/etc/myelin/certs")));
    assert_eq!(d.address, myelin_watch_docker::DockerAddress::Container);
    assert!(!d.require_healthy);
    assert_eq!(d.check_interval.map(crate::Seconds::get), Some(5.0));

    let l = ok(&format!("{MIN}services:\n  web:\n    discovery: {{method: docker, container_port: 8000}}\n"));
    let Discovery::Docker(d) = &l.services[&myelin_core::ServiceName::parse("web").unwrap()].discovery else { panic!() };
    assert!(d.require_healthy && d.servers.is_empty() && d.address == myelin_watch_docker::DockerAddress::Published);

    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: docker, address: bridge}}\n"));
    assert!(e.contains("services.web.discovery") && e.contains("unknown variant `bridge`"), "{e}");
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: docker, servers: [{{name: 'a b', host: h}}, {{name: x, host: 'h#1', port: 70000}}]}}\n"));
    assert!(e.contains("services.web.discovery.servers[0].name"), "{e}");
    assert!(e.contains("services.web.discovery.servers[1].host"), "{e}");
    assert!(e.contains("services.web.discovery.servers[1].port"), "{e}");
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: docker, check_interval: 0, container_port: 0}}\n"));
    assert!(e.contains("check_interval") && e.contains("container_port"), "{e}");
    let e = err(&format!("{MIN}services:\n  web:\n    discovery: {{method: docker, requre_healthy: false}}\n"));
    assert!(e.contains("did you mean `require_healthy`?"), "{e}");
}

#[test]
fn the_docker_example_loads_and_retries_on_another_server() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/docker.yaml");
    let l = load(&path).unwrap_or_else(|e| panic!("{}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")));
    let Discovery::Docker(d) = &l.services[&myelin_core::ServiceName::parse("web").unwrap()].discovery else { panic!() };
    assert_eq!((d.image_name.as_deref(), d.container_port), (Some("local/nodeapp"), Some(crate::Number(8000))));
    let defaults: Vec<_> = l.spec.sections.defaults.iter().map(|l| l.as_str()).collect();
    assert!(defaults.contains(&"retries 3") && defaults.contains(&"option redispatch"), "{defaults:?}");
    assert!(defaults.contains(&"retry-on conn-failure empty-response response-timeout"), "{defaults:?}");
    // And what myelin writes when a config gives no `defaults`.
    let bare = ok("services:\n  web:\n    discovery: {method: docker, container_port: 8000}\nhaproxy:\n  do_reloads: false\n");
    let defaults: Vec<_> = bare.spec.sections.defaults.iter().map(|l| l.as_str()).collect();
    assert!(defaults.contains(&"retries 3") && defaults.contains(&"option redispatch"), "{defaults:?}");
    assert!(defaults.contains(&"retry-on conn-failure empty-response response-timeout"), "{defaults:?}");
}
