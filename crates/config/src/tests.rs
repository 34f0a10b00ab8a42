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
    assert!(matches!(*l.services[&name].discovery, Discovery::Docker(_)));
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
fn synapse_example_zookeeper_services_load_unchanged() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/synapse-zookeeper.json.conf");
    let l = load(&path).unwrap_or_else(|e| panic!("{}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")));
    for (svc, zk_path) in [("service1", "/services/service1"), ("service2", "/services/service2")] {
        let name = myelin_core::ServiceName::parse(svc).unwrap();
        let Discovery::Zookeeper(zk) = &*l.services[&name].discovery else { panic!("{svc}: not zookeeper") };
        let s = zk.settings().unwrap();
        assert_eq!((s.connect.as_str(), s.path.as_str()), ("localhost:2181", zk_path));
        assert_eq!(l.services[&name].discovery.method(), "zookeeper");
    }
    // Synapse's other ZooKeeper form, and decode settings.
    let l = ok("services:\n  web:\n    discovery: {method: zookeeper_poll, hosts: ['zk1:2181', 'zk2:2181/smartstack'], path: /nerve/web, polling_interval_sec: 30, decode: {method: serverset, endpoint_name: http}}\n");
    let web = myelin_core::ServiceName::parse("web").unwrap();
    assert!(matches!(*l.services[&web].discovery, Discovery::ZookeeperPoll(_)));
    let e = err("services:\n  web:\n    discovery: {method: zookeeper, hosts: [], path: nerve/web}\n");
    assert!(e.contains("services.web.discovery.hosts") && e.contains("services.web.discovery.path"), "{e}");
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
    match &*l.services[&name].discovery {
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
    // A directory that cannot be read: the error is the key's, in the main file (it named the
    // directory alone, without a position).
    std::fs::write(&main, "haproxy: {do_reloads: false}\nservice_conf_dir: nope\n").unwrap();
    let e = load(&main).unwrap_err();
    assert_eq!(e[0].to_string(), format!("{}:2:19: service_conf_dir: cannot read directory nope: No such file or directory (os error 2)", main.display()));
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
    // Found by the fuzz suite: "invalid type: integer `...` as u128, expected any value".
    for (bind, why) in [("18446744073709551616", "port 18446744073709551616 is not from 1 to 65535"), ("-1", "port -1 is not from 1 to 65535"), ("80.5", "80.5 is not a port number"), ("[1]", "invalid type: sequence, expected a port number or \"ADDRESS:PORT\"")] {
        let e = err(&format!("{MIN}admin: {{bind: {bind}}}\n"));
        assert!(e.ends_with(&format!("admin.bind: {why}")), "{e}");
    }
    // The same in a port and a duration.
    let e = err(&format!("services:\n  web: {{discovery: {{method: static}}, haproxy: {{port: 18446744073709551616}}}}\n{MIN}"));
    assert!(e.ends_with("services.web.haproxy.port: 18446744073709551616 is too large (at most 18446744073709551615)"), "{e}");
    let e = err("haproxy:\n  do_reloads: false\n  drain_timeout: 18446744073709551616\n");
    assert!(e.ends_with("haproxy.drain_timeout: 18446744073709552000 is not a number of seconds from 0 to 315360000"), "{e}");
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
    let Discovery::Docker(d) = &*l.services[&myelin_core::ServiceName::parse("web").unwrap()].discovery else { panic!() };
    // Relative paths are taken from the config file's directory when the sources open.
    let cx = l.source_context(&myelin_core::ServiceName::parse("web").unwrap());
    assert_eq!(d.servers[0].cert_path.as_deref().map(|p| cx.resolve(p)), Some(PathBuf::from("/etc/myelin/certs")));
    assert_eq!(d.address, myelin_watch_docker::DockerAddress::Container);
    assert!(!d.require_healthy);
    assert_eq!(d.check_interval.map(crate::Seconds::get), Some(5.0));

    let l = ok(&format!("{MIN}services:\n  web:\n    discovery: {{method: docker, container_port: 8000}}\n"));
    let Discovery::Docker(d) = &*l.services[&myelin_core::ServiceName::parse("web").unwrap()].discovery else { panic!() };
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
    let Discovery::Docker(d) = &*l.services[&myelin_core::ServiceName::parse("web").unwrap()].discovery else { panic!() };
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

/// The errors of a config that must not load, one line each.
fn errors(text: &str) -> Vec<String> {
    match load_str(Path::new("/etc/myelin/test.yaml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

/// One of the errors begins with `prefix` (`file:line:column: key.path: `).
#[track_caller]
fn has_error(text: &str, prefix: &str) {
    let all = errors(text);
    assert!(all.iter().any(|e| e.starts_with(prefix)), "no error starting with {prefix:?} in:\n{}", all.join("\n"));
}

const T: &str = "/etc/myelin/test.yaml";

#[test]
fn the_second_of_two_services_with_the_same_key_is_the_one_pointed_at() {
    let text = "haproxy:\n  do_reloads: false\nservices:\n  a:\n    discovery: {method: static}\n    haproxy:\n      port: 8080\n  b:\n    discovery: {method: static}\n    haproxy:\n      port: 0\n      bind_address: 'no such'\n";
    has_error(text, &format!("{T}:11:13: services.b.haproxy.port: "));
    has_error(text, &format!("{T}:12:21: services.b.haproxy.bind_address: "));
}

#[test]
fn listen_lines_and_extra_sections_point_at_the_line() {
    let text = "haproxy:\n  do_reloads: false\n  extra_sections:\n    'listen stats.a b':\n      - mode http\n      - \"bind :1\\nfrontend x\"\nservices:\n  web:\n    discovery: {method: static}\n    haproxy:\n      listen:\n        - mode http\n        - \"option httpchk\\nbackend evil\"\n      backend: \"a\\nb\"\n";
    has_error(text, &format!("{T}:6:9: haproxy.extra_sections.listen stats.a b[1]: "));
    has_error(text, &format!("{T}:13:11: services.web.haproxy.listen[1]: "));
    // A single string for a list: its key.
    has_error(text, &format!("{T}:14:7: services.web.haproxy.backend[0]: "));
}

#[test]
fn default_servers_errors_point_at_the_entry_key() {
    // From the issue tracker: this weight (line 8) was reported at line 6.
    let text = "haproxy: {do_reloads: false}\nservices:\n  web:\n    discovery: {method: static}\n    default_servers:\n      - host: 127.0.0.1\n        port: 80\n        weight: 1000\n      - {name: 'a b', host: 127.0.0.1, port: 81}\n      - {host: 127.0.0.1, port: 0}\n";
    has_error(text, &format!("{T}:8:17: services.web.default_servers[0].weight: "));
    has_error(text, &format!("{T}:9:16: services.web.default_servers[1].name: "));
    has_error(text, &format!("{T}:10:33: services.web.default_servers[2].port: "));
    let dup = "haproxy: {do_reloads: false}\nservices:\n  web:\n    discovery: {method: static}\n    default_servers:\n      - {host: 127.0.0.1, port: 80}\n      - {host: 127.0.0.1, port: 80}\n";
    has_error(dup, &format!("{T}:7:9: services.web.default_servers[1]: duplicate server name"));
}

#[test]
fn discovery_problems_point_at_their_key() {
    let text = "haproxy: {do_reloads: false}\nservices:\n  a:\n    discovery:\n      method: docker\n      container_port: 8000\n  b:\n    discovery:\n      method: docker\n      container_port: 0\n      servers:\n        - {name: h1, host: 192.0.2.1}\n        - name: h2\n          host: 192.0.2.2\n          port: 70000\n";
    has_error(text, &format!("{T}:10:23: services.b.discovery.container_port: "));
    has_error(text, &format!("{T}:15:17: services.b.discovery.servers[1].port: "));
}

#[test]
fn haproxy_settings_point_at_their_key() {
    let text = "services: {}\nhaproxy:\n  global: [maxconn 10]\n  do_reloads: true\n  restart_jitter: 5\n  drain_timeout: 90000\n  do_socket: true\n  check_command: []\n";
    has_error(text, &format!("{T}:5:19: haproxy.restart_jitter: "));
    has_error(text, &format!("{T}:6:18: haproxy.drain_timeout: "));
    has_error(text, &format!("{T}:8:3: haproxy.check_command: "));
    // Required keys that are missing: at the value that requires them.
    has_error(text, &format!("{T}:4:15: haproxy.reload_command: required"));
    // With the master CLI, no reload command is needed.
    ok("haproxy:\n  master_socket_path: /run/haproxy-master.sock\n");
    has_error(text, &format!("{T}:7:14: haproxy.socket_file_path: required"));
}

#[test]
fn admin_and_file_output_point_at_their_key() {
    // From the issue tracker: this admin.bind (line 11) was reported at line 6.
    let text = "haproxy:\n  do_reloads: false\nservices:\n  web:\n    discovery: {method: static}\n    haproxy: {bind_address: 127.0.0.1, port: 8080}\nfile_output:\n  output_directory: ''\n\nadmin:\n  bind: 'localhost:9213'\n";
    has_error(text, &format!("{T}:11:9: admin.bind: "));
    has_error(text, &format!("{T}:8:21: file_output.output_directory: must not be empty"));
}

#[test]
fn notices_point_at_their_key() {
    let l = ok("services: {}\nhaproxy:\n  do_reloads: false\n  server_order_seed: 7\n  max_server_id: 9\n");
    let shown: Vec<_> = l.notices.iter().map(|n| n.to_string()).collect();
    assert!(shown.iter().any(|n| n.starts_with(&format!("{T}:4: haproxy.server_order_seed: "))), "{shown:?}");
    assert!(shown.iter().any(|n| n.starts_with(&format!("{T}:5: haproxy.max_server_id: "))), "{shown:?}");
}

#[test]
fn keys_given_twice_are_errors_at_the_second() {
    has_error(
        "haproxy: {do_reloads: false}\nservices:\n  web:\n    discovery: {method: static}\n  web:\n    discovery: {method: static}\n",
        &format!("{T}:5:3: services.web: this key is given twice in the same mapping (first on line 3)"),
    );
    has_error(
        "haproxy:\n  do_reloads: false\n  extra_sections:\n    'listen a':\n      - mode http\n    'listen a': [mode tcp]\n",
        &format!("{T}:6:5: haproxy.extra_sections.listen a: this key is given twice"),
    );
    has_error("haproxy:\n  do_reloads: false\n  do_reloads: true\n", &format!("{T}:3:3: haproxy.do_reloads: this key is given twice"));
    // JSON too.
    has_error("{\"haproxy\": {\"do_reloads\": false},\n \"haproxy\": {}}\n", &format!("{T}:2:2: haproxy: this key is given twice"));
}

#[test]
fn two_frontends_on_the_same_address_and_port_are_an_error_at_the_second() {
    let svc = |name: &str, bind: &str, port: u16| format!("  {name}:\n    discovery: {{method: static}}\n    haproxy: {{bind_address: '{bind}', port: {port}}}\n");
    let cfg = |services: &[String]| format!("{MIN}services:\n{}", services.concat());
    // Services are read in name order; "second" is the file's order.
    has_error(
        &cfg(&[svc("zeta", "127.0.0.1", 8080), svc("alpha", "127.0.0.1", 8080)]),
        &format!("{T}:9:48: services.alpha.haproxy.port: `127.0.0.1:8080` overlaps `127.0.0.1:8080`, the frontend of service `zeta`"),
    );
    has_error(&cfg(&[svc("a", "127.0.0.1", 8080), svc("b", "*", 8080)]), &format!("{T}:9:40: services.b.haproxy.port: `:8080` overlaps"));
    has_error(&cfg(&[svc("a", "0.0.0.0", 8080), svc("b", "::1", 8080)]), &format!("{T}:9:42: services.b.haproxy.port: "));
    ok(&cfg(&[svc("a", "127.0.0.1", 8080), svc("b", "127.0.0.2", 8080), svc("c", "*", 8081)]));
}

#[test]
fn service_conf_dir_errors_point_into_their_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("svc")).unwrap();
    std::fs::write(dir.path().join("svc/api.yaml"), "discovery: {method: static}\nhaproxy:\n  port: 8080\ndefault_servers:\n  - {host: 127.0.0.1, port: 81, weight: 300}\n").unwrap();
    std::fs::write(dir.path().join("svc/web.json"), "{\"discovery\": {\"method\": \"static\"},\n \"haproxy\": {\"port\": 0}}\n").unwrap();
    let main = dir.path().join("myelin.yaml");
    std::fs::write(&main, "service_conf_dir: svc\nhaproxy: {do_reloads: false}\nservices:\n  other:\n    discovery: {method: static}\n").unwrap();
    let shown: Vec<_> = load(&main).unwrap_err().iter().map(|e| e.to_string()).collect();
    let api = dir.path().join("svc/api.yaml");
    let web = dir.path().join("svc/web.json");
    assert!(shown.iter().any(|e| e.starts_with(&format!("{}:5:41: services.api.default_servers[0].weight: ", api.display()))), "{shown:?}");
    assert!(shown.iter().any(|e| e.starts_with(&format!("{}:2:22: services.web.haproxy.port: ", web.display()))), "{shown:?}");

    std::fs::write(dir.path().join("svc/api.yaml"), "discovery: {method: static}\ndiscovery: {method: static}\n").unwrap();
    let shown: Vec<_> = load(&main).unwrap_err().iter().map(|e| e.to_string()).collect();
    assert_eq!(shown, [format!("{}:2:1: services.api.discovery: this key is given twice in the same mapping (first on line 1); give it once", api.display())]);
}

#[test]
fn errors_deep_in_many_service_files_point_at_their_position() {
    // Positions are found only for a file an error is about: the 5,000th of 5,100 here.
    let dir = tempfile::tempdir().unwrap();
    let svc = dir.path().join("svc");
    std::fs::create_dir(&svc).unwrap();
    let plain = "{\"discovery\": {\"method\": \"static\"},\n \"default_servers\": [{\"host\": \"127.0.0.1\", \"port\": 80}]}\n";
    for i in 0..5100 {
        let text = match i {
            0 => "{\"discovery\": {\"method\": \"static\"}, \"haproxy\": {\"port\": 8080}}\n",
            4999 => "{\"discovery\": {\"method\": \"static\"},\n \"default_servers\": [{\"host\": \"127.0.0.1\", \"port\": 80},\n   {\"host\": \"127.0.0.1\", \"port\": 81, \"weight\": 1000}]}\n",
            _ => plain,
        };
        std::fs::write(svc.join(format!("s{i:04}.json")), text).unwrap();
    }
    let main = dir.path().join("myelin.yaml");
    std::fs::write(&main, "service_conf_dir: svc\nhaproxy: {do_reloads: false}\n").unwrap();
    let shown: Vec<_> = load(&main).unwrap_err().iter().map(|e| e.to_string()).collect();
    let bad = svc.join("s4999.json").display().to_string();
    assert_eq!(shown, [format!("{bad}:3:48: services.s4999.default_servers[1].weight: invalid weight \"1000\": must be 0 to 256")]);

    // The second of two frontends on one port, by file order.
    std::fs::write(svc.join("s4999.json"), "{\"discovery\": {\"method\": \"static\"},\n \"haproxy\": {\"port\": 8080}}\n").unwrap();
    let shown: Vec<_> = load(&main).unwrap_err().iter().map(|e| e.to_string()).collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].starts_with(&format!("{bad}:2:22: services.s4999.haproxy.port: `localhost:8080` overlaps `localhost:8080`, the frontend of service `s0000`")), "{shown:?}");

    // A key given twice there is found while the files are read.
    std::fs::write(svc.join("s4999.json"), "{\"discovery\": {\"method\": \"static\"},\n \"discovery\": {\"method\": \"static\"}}\n").unwrap();
    let shown: Vec<_> = load(&main).unwrap_err().iter().map(|e| e.to_string()).collect();
    assert_eq!(shown, [format!("{bad}:2:2: services.s4999.discovery: this key is given twice in the same mapping (first on line 1); give it once")]);
}

#[test]
fn files_are_read_through_a_size_bound() {
    let started = std::time::Instant::now();
    let e = load(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].to_string(), "/dev/zero: larger than 16 MiB: not a configuration file");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big).unwrap().set_len(crate::load::MAX_FILE_BYTES + 1).unwrap();
    assert!(load(&big).unwrap_err()[0].message.contains("larger than 16 MiB"));
    std::fs::create_dir(dir.path().join("svc")).unwrap();
    std::fs::File::create(dir.path().join("svc/huge.yaml")).unwrap().set_len(crate::load::MAX_FILE_BYTES + 1).unwrap();
    let main = dir.path().join("myelin.yaml");
    std::fs::write(&main, "service_conf_dir: svc\nhaproxy: {do_reloads: false}\n").unwrap();
    let e = load(&main).unwrap_err();
    assert!(e[0].to_string().contains("huge.yaml: larger than 16 MiB"), "{}", e[0]);

    std::fs::write(&big, b"haproxy: {do_reloads: false}\n# \xff\n").unwrap();
    assert!(load(&big).unwrap_err()[0].message.contains("not UTF-8"));
}

#[test]
fn the_number_of_errors_is_capped() {
    let services: String = (0..30).map(|i| format!("  s{i}:\n    discovery: {{method: static}}\n    haproxy: {{port: 0}}\n")).collect();
    let e = errors(&format!("{MIN}services:\n{services}"));
    assert_eq!(e.len(), crate::load::MAX_ERRORS + 1);
    assert_eq!(e.last().unwrap(), &format!("{T}: and 10 more errors"));
}

#[test]
fn statsd_numbers_are_checked() {
    has_error("statsd:\n  port: 70000\n", &format!("{T}:2:9: statsd.port: "));
    has_error("statsd:\n  sample_rate: {'a.b': .nan}\n", &format!("{T}:2:24: statsd.sample_rate.a.b: must be a fraction"));
    ok("statsd: {port: 8125, sample_rate: {a: 0.5}}\n");
}

/// Every key that holds a number, by its path in [`numbers_config`].
const NUMERIC_KEYS: &[&str] = &[
    "haproxy.restart_interval",
    "haproxy.restart_jitter",
    "haproxy.state_file_ttl",
    "haproxy.server_order_seed",
    "haproxy.max_server_id",
    "haproxy.drain_timeout",
    "haproxy.verify_interval",
    "services.web.haproxy.port",
    "services.web.haproxy.server_port_override",
    "services.web.backend_port_override",
    "services.web.default_servers[0].port",
    "services.web.default_servers[0].weight",
    "services.web.discovery.container_port",
    "services.web.discovery.check_interval",
    "services.web.discovery.servers[0].port",
    "services.zk.discovery.discovery_jitter",
    "services.etcd.discovery.port",
    "statsd.port",
    "statsd.sample_rate.x",
    "admin.bind",
];

/// A config with every numeric key set to a valid value, except `key`, set to `value`.
fn numbers_config(key: &str, value: &str) -> String {
    let v = |k: &str, good: &str| if k == key { value.to_owned() } else { good.to_owned() };
    format!(
        "haproxy:
  do_reloads: false
  socket_file_path: /run/myelin-test.sock
  restart_interval: {}
  restart_jitter: {}
  state_file_ttl: {}
  server_order_seed: {}
  max_server_id: {}
  drain_timeout: {}
  verify_interval: {}
services:
  web:
    haproxy:
      port: {}
      server_port_override: {}
    backend_port_override: {}
    default_servers:
      - host: 127.0.0.1
        port: {}
        weight: {}
    discovery:
      method: docker
      container_port: {}
      check_interval: {}
      servers:
        - name: h1
          host: 192.0.2.1
          port: {}
  zk:
    discovery:
      method: zookeeper
      hosts: [zk1]
      path: /s
      discovery_jitter: {}
  etcd:
    discovery:
      method: etcd
      host: etcd1
      path: /s
      port: {}
statsd:
  port: {}
  sample_rate:
    x: {}
admin:
  bind: {}
",
        v("haproxy.restart_interval", "2"),
        v("haproxy.restart_jitter", "0.5"),
        v("haproxy.state_file_ttl", "60"),
        v("haproxy.server_order_seed", "1"),
        v("haproxy.max_server_id", "10"),
        v("haproxy.drain_timeout", "30"),
        v("haproxy.verify_interval", "30"),
        v("services.web.haproxy.port", "8080"),
        v("services.web.haproxy.server_port_override", "81"),
        v("services.web.backend_port_override", "82"),
        v("services.web.default_servers[0].port", "80"),
        v("services.web.default_servers[0].weight", "10"),
        v("services.web.discovery.container_port", "8000"),
        v("services.web.discovery.check_interval", "5"),
        v("services.web.discovery.servers[0].port", "2375"),
        v("services.zk.discovery.discovery_jitter", "1"),
        v("services.etcd.discovery.port", "2379"),
        v("statsd.port", "8125"),
        v("statsd.sample_rate.x", "0.5"),
        v("admin.bind", "9213"),
    )
}

/// Any YAML scalar, or a small collection of them.
fn yaml_value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| n.to_string()),
        "-?[0-9]{19,60}",
        any::<f64>().prop_map(|f| format!("{f:e}")),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        (0u32..70000).prop_map(|n| format!("{n}.0")),
        (-2.0f64..2.0).prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            ".nan", ".NaN", ".inf", "-.inf", "+.inf", ".Inf", "1e308", "-1e308", "1e309", "-0.0", "0.0", "0", "-0", "-1", "65535", "65536",
            "4294967296", "18446744073709551615", "18446744073709551616", "0x1F", "0o17", "1_000", "5e-324", "3.6e3", "'8080'", "' 80 '",
            "'1e400'", "'.nan'", "'-1'", "true", "false", "yes", "no", "null", "~", "''", "\"\"", "'127.0.0.1:80'", "'[::1]:0'", "[]", "{}",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9.:+-]{1,12}",
        "[ -~]{0,16}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
    ];
    scalar.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(inner, 0..3).prop_map(|v| format!("{{{}}}", v.iter().enumerate().map(|(i, x)| format!("k{i}: {x}")).collect::<Vec<_>>().join(", "))),
        ]
    })
}

#[test]
fn the_numbers_config_loads_with_valid_values() {
    let l = ok(&numbers_config("", ""));
    assert_eq!(l.haproxy.restart_jitter, 0.5);
    let e = errors(&numbers_config("services.web.default_servers[0].weight", ".nan"));
    assert!(e[0].starts_with(&format!("{T}:20:17: services.web.default_servers[0].weight: ")), "{e:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, failure_persistence: None, ..Default::default() })]

    /// No value in any numeric key makes loading panic: it loads, or it is a config error with
    /// a position. What loads opens its sources' partitions without panicking too.
    #[test]
    fn any_scalar_in_any_numeric_key_is_a_value_or_an_error(key in proptest::sample::select(NUMERIC_KEYS), value in yaml_value()) {
        let text = numbers_config(key, &value);
        match load_str(Path::new("/etc/myelin/test.yaml"), &text) {
            Ok(l) => {
                for (name, svc) in &l.services {
                    let _ = svc.discovery.source().partitions(&l.source_context(name));
                }
            }
            Err(errors) => {
                // Only `key` can be wrong: each error is about it, on its line (when the
                // position parser reads the text: see `FileIndex::is_empty`).
                let line = numbers_config(key, "@@").lines().position(|l| l.contains("@@")).map(|i| i + 1);
                let indexed = !crate::position::FileIndex::build(Path::new("t"), crate::position::KeyPath::root(), text.as_str()).0.is_empty();
                proptest::prop_assert!(!errors.is_empty());
                for e in &errors {
                    proptest::prop_assert!(e.line.is_some(), "{} ({} = {})", e, key, value);
                    if indexed {
                        proptest::prop_assert_eq!(e.line, line, "{} ({} = {})", e, key, value);
                    }
                    proptest::prop_assert!(e.path.starts_with(key) || key.starts_with(&e.path), "{} ({} = {})", e, key, value);
                }
            }
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    // serde_yaml_ng (libyaml) takes quadratic time on deep flow nesting (12 s at 20,000 levels
    // in a debug build): the index refuses it first.
    for depth in [70, 300, 1_000_000] {
        let text = format!("services: {}1{}\n", "[".repeat(depth), "]".repeat(depth));
        let started = std::time::Instant::now();
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("nested more than 64 levels deep"), "{e:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "{depth}: {:?}", started.elapsed());
    }
}

#[test]
fn a_syntax_error_inside_discovery_has_no_unknown_key() {
    let e = errors(&numbers_config("services.web.discovery.container_port", "0:"));
    assert!(e[0].starts_with(&format!("{T}:23:")) && e[0].contains(": services.web.discovery: "), "{e:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, ..Default::default() })]

    /// Any text made of YAML's punctuation and a few keys loads or is an error, never a panic.
    #[test]
    fn any_text_loads_or_is_an_error(text in "(services|haproxy|web|port|discovery|method|static|[-?:,\\[\\]{}&*!|>'\" #a1\n.]){0,60}") {
        let _ = load_str(Path::new("/etc/myelin/test.yaml"), &text);
    }
}

#[test]
fn consul_discovery_keys_aliases_and_checks() {
    let l = ok(&format!(
        "services:
  web:
    discovery: {{method: consul, tag: v2, dc: eu1, only_passing: false, token: s3cret, stale: true, max_stale: 5, tagged_address: wan}}
    haproxy: {{port: 8080}}
{MIN}"
    ));
    let name = myelin_core::ServiceName::parse("web").unwrap();
    let d = &*l.services[&name].discovery;
    assert!(d.supported() && d.method() == "consul");
    let Discovery::Consul(c) = d else { panic!() };
    assert_eq!((c.selection().tags, c.datacenter.as_deref()), (vec!["v2".to_owned()], Some("eu1")));
    assert!(!format!("{l:?}").contains("s3cret"));
    let e = err(&format!("services:\n  web:\n    discovery: {{method: consul, servce: web}}\n{MIN}"));
    assert!(e.contains("servce") && e.contains("service"), "{e}");
    let e = err(&format!("services:\n  web:\n    discovery: {{method: consul, wait: 0.5, max_stale: 1}}\n{MIN}"));
    assert!(e.contains("services.web.discovery.wait") && e.contains("services.web.discovery.max_stale"), "{e}");
}

/// Found by the fuzz suite: serde's type names (`struct ServiceHaproxy`, `u64`) reached the
/// operator.
#[test]
fn errors_name_no_rust_types() {
    let svc = |rest: &str| format!("services:\n  web:\n    discovery: {{method: static}}\n{rest}{MIN}");
    for (text, expected) in [
        ("s\n".to_owned(), format!("{T}:1:1: invalid type: string \"s\", expected a mapping")),
        (svc("    haproxy: x\n"), format!("{T}:4:14: services.web.haproxy: invalid type: string \"x\", expected a mapping")),
        ("services:\n  web:\n    discovery: file\n".to_owned(), format!("{T}:3:16: services.web.discovery: invalid type: string \"file\", expected a mapping with a `method`")),
        (svc("    haproxy: {backend_order: [asc]}\n"), format!("{T}:4:15: services.web.haproxy.backend_order: invalid type: sequence, expected a name")),
        ("haproxy:\n  do_reloads: false\n  server_order_seed: x\n".to_owned(), format!("{T}:3:22: haproxy.server_order_seed: invalid type: string \"x\", expected a whole number")),
        ("services:\n  web:\n    discovery: {method: etcd, path: /x, port: !x 1}\n".to_owned(), format!("{T}:3:50: services.web.discovery.port: a tagged value (`!tag`) is not accepted here")),
        ("services:\n  web:\n    discovery: {method: etcd, path: /x, user: 99999999999999999999999}\n".to_owned(), format!("{T}:3:47: services.web.discovery.user: 99999999999999999999999 is out of range for any setting (write it in quotes if it is text)")),
        (svc("    keep_default_servers: 18446744073709551616\n"), format!("{T}:4:27: services.web.keep_default_servers: invalid type: integer `18446744073709551616`, expected a boolean")),
        ("haproxy:\n  do_reloads: false\n  restart_jitter: x\n".to_owned(), format!("{T}:3:19: haproxy.restart_jitter: invalid type: string \"x\", expected a number")),
    ] {
        assert_eq!(err(&text), expected, "{text}");
    }
}

/// Found by the fuzz suite: with a space in a key on the way, serde_yaml_ng's own copy of the
/// key path stayed in the message (shown twice, and hiding what the message says).
#[test]
fn a_key_path_with_spaces_is_shown_once() {
    let e = err(&format!("services:\n  \"web app\":\n    discovery: {{method: static}}\n    use_previous_backends: maybe\n{MIN}"));
    assert!(e.ends_with(": services.web app.use_previous_backends: invalid type: string \"maybe\", expected a boolean"), "{e}");
    let e = err("services:\n  \" \":\n    discovery:\n      method: etcd\n      endpoints: [99999999999999999999999]\n      path: /x\n");
    assert!(e.starts_with(&format!("{T}:5:")) && e.ends_with(": services. .discovery.endpoints[0]: 99999999999999999999999 is out of range for any setting (write it in quotes if it is text)"), "{e}");
}
