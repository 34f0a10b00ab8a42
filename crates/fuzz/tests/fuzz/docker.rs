//! Docker's payloads: a container's inspect answer (from a captured one, every field the
//! source reads made hostile: labels, names, image, network mode, addresses, published
//! ports, state) and the engine's events. Any of them gives a verdict or an action, never a
//! panic; a container routed is an untrusted record the store validates.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{ContainerInspectResponse, EventMessage};
use myelin_fuzz::{config as fuzz_config, has_control, hostile, json_value, value};
use myelin_watch_docker::{backend_key, classify, verdict, Action, Address, Endpoint, ImageRef, Selector, Settings, Verdict};
use proptest::prelude::*;
use serde_json::{json, Value};

const INSPECT: &str = include_str!("../../../watch-docker/testdata/inspect-labelled.json");

fn opt(v: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop::option::weighted(0.8, v).boxed()
}

fn labels() -> BoxedStrategy<Value> {
    let key = prop_oneof![3 => prop::sample::select(&["myelin.name", "myelin.port", "myelin.weight", "app"][..]).prop_map(str::to_owned), 1 => hostile()];
    prop::collection::btree_map(key, value(&["web-a", "8000", "7", "18446744073709551616", " 8000 ", "web"]), 0..4).prop_map(|m| json!(m)).boxed()
}

fn bindings() -> BoxedStrategy<Value> {
    let binding = (opt(json_value(&["127.0.0.1", "0.0.0.0", "::", "192.0.2.7", ""])), opt(json_value(&["32770", "0", "65536", ""])))
        .prop_map(|(ip, port)| {
            let mut m = serde_json::Map::new();
            if let Some(ip) = ip {
                m.insert("HostIp".into(), ip);
            }
            if let Some(port) = port {
                m.insert("HostPort".into(), port);
            }
            Value::Object(m)
        });
    let spec = value(&["8000/tcp", "8000/udp", "9000/tcp", "x/tcp"]);
    prop::collection::btree_map(spec, prop::option::weighted(0.8, prop::collection::vec(binding, 0..3)), 0..3).prop_map(|m| json!(m)).boxed()
}

/// The captured container with hostile values in the fields the source reads.
fn container() -> BoxedStrategy<Value> {
    (
        opt(labels()),
        opt(json_value(&["/web", "web", "/a/b", ""])),
        opt(json_value(&["local/nodeapp:latest", "local/nodeapp", "other"])),
        opt(json_value(&["default", "host", "bridge", "container:x"])),
        opt(bindings()),
        opt(json_value(&["198.51.100.3", "", "::1", "300.1.1.1"])),
        (any::<Option<bool>>(), any::<Option<bool>>(), any::<Option<bool>>()),
        opt(json_value(&["healthy", "unhealthy", "starting", "none", ""])),
        opt(prop::collection::vec(json_value(&["CMD", "NONE", "curl"]), 0..2).prop_map(Value::Array).boxed()),
    )
        .prop_map(|(labels, name, image, mode, ports, ip, (running, paused, restarting), health, test)| {
            let mut c: Value = serde_json::from_str(INSPECT).expect("the captured payload is JSON");
            let set = |c: &mut Value, path: &[&str], v: Option<Value>| {
                let (last, parents) = path.split_last().unwrap();
                let mut at = c;
                for p in parents {
                    at = at.as_object_mut().unwrap().entry(*p).or_insert_with(|| json!({}));
                    if !at.is_object() {
                        *at = json!({});
                    }
                }
                match v {
                    Some(v) => {
                        at.as_object_mut().unwrap().insert((*last).to_owned(), v);
                    }
                    None => {
                        at.as_object_mut().unwrap().remove(*last);
                    }
                }
            };
            set(&mut c, &["Config", "Labels"], labels);
            set(&mut c, &["Name"], name);
            set(&mut c, &["Config", "Image"], image);
            set(&mut c, &["HostConfig", "NetworkMode"], mode);
            set(&mut c, &["NetworkSettings", "Ports"], ports);
            set(&mut c, &["NetworkSettings", "Networks", "bridge", "IPAddress"], ip);
            set(&mut c, &["State", "Running"], running.map(Value::Bool));
            set(&mut c, &["State", "Paused"], paused.map(Value::Bool));
            set(&mut c, &["State", "Restarting"], restarting.map(Value::Bool));
            set(&mut c, &["State", "Health", "Status"], health);
            set(&mut c, &["Config", "Healthcheck", "Test"], test);
            c
        })
        .boxed()
}

fn event() -> BoxedStrategy<Value> {
    let attrs = prop::collection::btree_map(value(&["image", "name", "signal", "oldName", "myelin.name"]), value(&["web", "TERM", "SIGKILL", "HUP", "9", "local/nodeapp"]), 0..4);
    (
        json_value(&["container", "network", "image", ""]),
        json_value(&["start", "kill", "stop", "die", "pause", "unpause", "destroy", "rename", "health_status: healthy", "create"]),
        opt(json_value(&["503e0891", ""])),
        opt(attrs.prop_map(|m| json!(m)).boxed()),
    )
        .prop_map(|(typ, action, id, attrs)| {
            let mut actor = serde_json::Map::new();
            if let Some(id) = id {
                actor.insert("ID".into(), id);
            }
            if let Some(a) = attrs {
                actor.insert("Attributes".into(), a);
            }
            json!({"Type": typ, "Action": action, "Actor": actor})
        })
        .boxed()
}

fn settings() -> BoxedStrategy<(Settings, Endpoint)> {
    (
        prop::option::of(value(&["local/nodeapp", "local/nodeapp:latest", "other", "*"])),
        prop::option::of(value(&["*", "web*", "?eb", "**a*"])),
        prop::option::of(any::<u16>()),
        any::<bool>(),
        any::<bool>(),
        prop::option::of((value(&["dock2", ""]), value(&["192.0.2.7", "127.0.0.1", "localhost", "::1"]))),
    )
        .prop_map(|(image, name_pattern, container_port, container, require_healthy, tcp)| {
            let selector = Selector { image: image.map(|i| ImageRef::parse(&i)), labels: Default::default(), name_pattern };
            let address = if container { Address::Container } else { Address::Published };
            let s = Settings { selector, container_port, address, require_healthy, resync: std::time::Duration::from_secs(30) };
            let e = match tcp {
                Some((name, host)) => Endpoint::Tcp { name, host, port: 4243, cert_path: None },
                None => Endpoint::Local { socket: PathBuf::from("/var/run/docker.sock") },
            };
            (s, e)
        })
        .boxed()
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn container_inspect_answers(c in container(), (settings, endpoint) in settings()) {
        // A payload bollard cannot read is the engine's error, reported before it reaches us.
        let Ok(c) = serde_json::from_value::<ContainerInspectResponse>(c) else { return Ok(()) };
        match verdict(&c, &settings, &endpoint) {
            Verdict::Up(d) => {
                if let Ok(b) = d.validate() {
                    prop_assert!(!has_control(b.name.as_str()) && !b.host.as_str().contains(char::is_whitespace));
                }
            }
            Verdict::Unroutable { reason, .. } => prop_assert!(!reason.is_empty()),
            Verdict::Down { .. } | Verdict::Ignored => {}
        }
        // The same payload, the same verdict.
        prop_assert_eq!(verdict(&c, &settings, &endpoint), verdict(&c, &settings, &endpoint));
    }

    #[test]
    fn engine_events(ev in event(), name in hostile()) {
        let Ok(ev) = serde_json::from_value::<EventMessage>(ev) else { return Ok(()) };
        let local = Endpoint::Local { socket: PathBuf::from("/var/run/docker.sock") };
        match classify(&ev) {
            Action::Drain { name: n, labels, .. } => {
                let _ = backend_key(&local, &n, &labels);
            }
            Action::Rename { old_name, labels, .. } => {
                let _ = backend_key(&local, &old_name, &labels);
            }
            Action::Refresh { .. } | Action::Ignore => {}
        }
        let _ = backend_key(&local, &name, &HashMap::new());
    }
}
