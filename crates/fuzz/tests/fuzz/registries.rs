//! The registries' payloads: Consul's health and catalog answers, etcd values, ZooKeeper node
//! data (Nerve and serverset). Any bytes give records or a reason, never a panic; every record
//! is untrusted text that the store validates (see `render`); the stateful parts (etcd's keys,
//! ZooKeeper's children) always tell the store exactly what a complete read would.

use std::collections::BTreeMap;

use myelin_core::{Discovered, Update};
use myelin_fuzz::{config as fuzz_config, has_control, hostile, json_value, value};
use proptest::prelude::*;
use serde_json::{json, Value};

const HOSTS: &[&str] = &["127.0.0.1", "192.0.2.7", "::1", "[::1]", "db.example", ""];
const PORTS: &[&str] = &["80", "8080", "0", "65535", "65536", "-1"];
const NAMES: &[&str] = &["web-1", "i-0a1b", "a.b", ""];

/// Arbitrary bytes, JSON-ish text, or hostile text.
fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "[{}\\[\\]\":,0-9a-z \\\\]{0,40}".prop_map(String::into_bytes),
        hostile().prop_map(String::into_bytes),
    ]
    .boxed()
}

/// Builds a JSON object from a list of optional members.
fn object(members: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(members.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect())
}

fn opt(v: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop::option::weighted(0.85, v).boxed()
}

fn labels() -> BoxedStrategy<Value> {
    prop::collection::btree_map(value(&["az", "canary", "x"]), json_value(&["a", "1", "true"]), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .boxed()
}

/// A Nerve registration (ZooKeeper and etcd), fields hostile at times.
fn nerve() -> BoxedStrategy<Value> {
    (opt(json_value(HOSTS)), opt(json_value(PORTS)), opt(json_value(NAMES)), opt(json_value(&["1", "10", "256", "257"])), opt(labels()))
        .prop_map(|(host, port, name, weight, labels)| object(vec![("host", host), ("port", port), ("name", name), ("weight", weight), ("labels", labels)]))
        .boxed()
}

/// A serverset member.
fn serverset() -> BoxedStrategy<Value> {
    let endpoint = || (opt(json_value(HOSTS)), opt(json_value(PORTS))).prop_map(|(h, p)| object(vec![("host", h), ("port", p)]));
    (opt(endpoint().boxed()), opt(prop::collection::btree_map(value(&["http", "admin"]), endpoint(), 0..2).prop_map(|m| Value::Object(m.into_iter().collect())).boxed()), opt(json_value(&["ALIVE", "STARTING", "DEAD"])), opt(json_value(&["0", "1", "x"])))
        .prop_map(|(ep, more, status, shard)| object(vec![("serviceEndpoint", ep), ("additionalEndpoints", more), ("status", status), ("shard", shard)]))
        .boxed()
}

/// One entry of Consul's `/v1/health/service/<name>`.
fn consul_entry() -> BoxedStrategy<Value> {
    let node = (json_value(NAMES), opt(json_value(HOSTS)), opt(prop::collection::btree_map(value(&["lan", "wan"]), json_value(HOSTS), 0..2).prop_map(|m| json!(m)).boxed()))
        .prop_map(|(n, a, t)| object(vec![("Node", Some(n)), ("Address", a), ("TaggedAddresses", t)]));
    let tagged = prop::collection::btree_map(value(&["lan", "wan"]), (opt(json_value(HOSTS)), opt(json_value(PORTS))).prop_map(|(a, p)| object(vec![("address", a), ("port", p)])), 0..2);
    let service = (
        json_value(NAMES),
        opt(prop::collection::vec(json_value(&["v1", "primary"]), 0..3).prop_map(Value::Array).boxed()),
        opt(json_value(HOSTS)),
        opt(tagged.prop_map(|m| json!(m)).boxed()),
        opt(labels()),
        json_value(PORTS),
        opt((json_value(&["1", "10"]), json_value(&["1", "0"])).prop_map(|(p, w)| json!({"Passing": p, "Warning": w})).boxed()),
    )
        .prop_map(|(id, tags, address, tagged, meta, port, weights)| {
            object(vec![("ID", Some(id)), ("Tags", tags), ("Address", address), ("TaggedAddresses", tagged), ("Meta", meta), ("Port", Some(port)), ("Weights", weights)])
        });
    let checks = prop::collection::vec(json_value(&["passing", "warning", "critical", "maintenance"]).prop_map(|s| json!({"Status": s})), 0..3);
    (node, service, checks).prop_map(|(n, s, c)| json!({"Node": n, "Service": s, "Checks": c})).boxed()
}

/// A record out of a payload: untrusted, so only its shape is checked here: it validates into a
/// backend, or says why not without a panic.
fn record_is_usable_or_rejected(d: &Discovered) -> Result<(), TestCaseError> {
    match d.validate() {
        Ok(b) => {
            prop_assert!(!has_control(b.name.as_str()) && !b.name.as_str().contains(' '));
            prop_assert!(!b.host.as_str().chars().any(|c| c.is_whitespace() || c == '#'));
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// Apply updates to what a store would hold (by record key).
fn replay(model: &mut BTreeMap<String, Discovered>, updates: Vec<Update>) {
    for u in updates {
        match u {
            Update::Reset(all) => *model = all.into_iter().map(|d| (d.key(), d)).collect(),
            Update::Upsert(d) => {
                model.insert(d.key(), d);
            }
            Update::Remove(k) => {
                model.remove(&k);
            }
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn consul_health_answers(entries in prop::collection::vec(consul_entry(), 0..4), raw in bytes(), only_passing: bool, tag in prop::option::of(value(&["v1"])), tagged in prop::option::of(value(&["wan", "lan"]))) {
        use myelin_watch_consul::payload::{instances, Selection};
        let sel = Selection { tags: tag.into_iter().collect(), only_passing, tagged_address: tagged };
        let body = serde_json::to_vec(&entries).unwrap();
        let got = instances(&body, &sel).expect("a JSON array is an answer");
        prop_assert!(got.records.len() + got.rejected.len() <= entries.len());
        for d in &got.records {
            record_is_usable_or_rejected(d)?;
        }
        for (what, why) in &got.rejected {
            prop_assert!(!what.is_empty() && !why.is_empty());
        }
        // Anything else: an answer or an error, never a panic.
        if let Ok(got) = instances(&raw, &sel) {
            for d in &got.records {
                record_is_usable_or_rejected(d)?;
            }
        }
    }

    #[test]
    fn consul_catalog_answers_and_tagged_services(catalog in prop::collection::btree_map(value(&["web", "api", "a.b"]), prop::collection::vec(value(&["myelin", "myelin-port=8081", "myelin-port=0", "myelin-port=65536", "myelin-port= 80"]), 0..3), 0..4), raw in bytes()) {
        use myelin_watch_consul::payload::services_with_tag;
        let body = serde_json::to_vec(&catalog).unwrap();
        let tagged = services_with_tag(&body, "myelin").expect("a JSON object is an answer");
        prop_assert!(tagged.keys().all(|k| catalog.contains_key(k)));
        let _ = services_with_tag(&raw, "myelin");
        for (name, port) in myelin_watch_consul::catalog::frontends(&tagged, "myelin-port=") {
            prop_assert!(catalog.contains_key(&name));
            if let Err(why) = port {
                prop_assert!(!why.is_empty());
            }
        }
        // The catalog makes services from the template: what loads is valid, and what is left
        // out says why, in notices that show the untrusted name escaped.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("myelin.yaml");
        std::fs::write(&path, "services:\n  web: {discovery: {method: static}, haproxy: {port: 8080}}\nconsul_services: {tag: myelin}\n").unwrap();
        let loaded = myelin_config::load_with(&path, Some(&tagged));
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => return Err(TestCaseError::fail(format!("a catalog cannot make the config invalid: {e:?}"))),
        };
        for n in &loaded.notices {
            prop_assert!(!has_control(&n.to_string()), "{:?}", n.to_string());
        }
    }

    #[test]
    fn etcd_values(v in nerve(), raw in bytes(), host in value(HOSTS), port in value(PORTS)) {
        use myelin_watch_etcd::registration::parse;
        for value in [serde_json::to_vec(&v).unwrap(), raw, format!("{host}:{port}").into_bytes(), format!("[{host}]:{port}").into_bytes()] {
            match parse(&value) {
                Ok(d) => record_is_usable_or_rejected(&d)?,
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    /// What myelin writes (announcing) is what it reads.
    #[test]
    fn etcd_registrations_round_trip(host in value(HOSTS), port in 1u16.., name in prop::option::of(value(NAMES)), weight in prop::option::of(0u16..300), labels in prop::collection::btree_map(hostile(), hostile(), 0..3)) {
        use myelin_watch_etcd::{registration::parse, Registration};
        // A registration always has a host (`Registration` comes from validated values).
        let host = if host.trim().is_empty() { format!("192.0.2.1{host}") } else { host };
        let r = Registration { host: host.clone(), port, name: name.clone(), weight, labels: labels.clone() };
        let d = parse(r.to_json().as_bytes()).expect("what myelin writes parses");
        prop_assert_eq!(d.host, host.trim());
        prop_assert_eq!(d.port, port.to_string());
        prop_assert_eq!(d.name, name.filter(|n| !n.is_empty()));
        prop_assert_eq!(d.weight, weight.map(|w| w.to_string()));
        prop_assert_eq!(d.labels, labels);
    }

    /// Any sequence of puts and deletes tells the store what a complete read of the final keys
    /// gives.
    #[test]
    fn etcd_events_agree_with_a_full_read(first in prop::collection::vec((0u8..6, nerve()), 0..5), events in prop::collection::vec((0u8..6, prop::option::of(nerve())), 0..12)) {
        use myelin_watch_etcd::Instances;
        let key = |k: u8| format!("/services/web/{k}").into_bytes();
        let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = first.iter().map(|(k, v)| (key(*k), serde_json::to_vec(v).unwrap())).collect();
        let mut live = Instances::default();
        let (all, _) = live.reset(kv.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let mut model = BTreeMap::new();
        replay(&mut model, vec![Update::Reset(all)]);
        for (k, v) in events {
            match v {
                Some(v) => {
                    let v = serde_json::to_vec(&v).unwrap();
                    let (updates, _) = live.put(&key(k), &v);
                    replay(&mut model, updates);
                    kv.insert(key(k), v);
                }
                None => {
                    replay(&mut model, live.delete(&key(k)));
                    kv.remove(&key(k));
                }
            }
        }
        let (all, _) = Instances::default().reset(kv.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let expected: BTreeMap<String, Discovered> = all.into_iter().map(|d| (d.key(), d)).collect();
        prop_assert_eq!(model, expected);
    }

    #[test]
    fn zookeeper_node_data(n in nerve(), s in serverset(), raw in bytes(), endpoint in prop::option::of(value(&["http", "admin"]))) {
        use myelin_watch_zookeeper::payload::{decode, Format, Instance};
        let formats = [Format::Nerve, Format::Serverset { endpoint: None }, Format::Serverset { endpoint }];
        for data in [serde_json::to_vec(&n).unwrap(), serde_json::to_vec(&s).unwrap(), raw] {
            for f in &formats {
                match decode(f, &data) {
                    Ok(Instance::Up(d)) => record_is_usable_or_rejected(&d)?,
                    Ok(Instance::NotAlive { .. }) => {}
                    Err(why) => prop_assert!(!why.is_empty()),
                }
            }
        }
    }

    /// Children coming and going: the changes told always turn the store's view into the new
    /// complete set.
    #[test]
    fn zookeeper_children_changes(rounds in prop::collection::vec(prop::collection::vec((0u8..6, nerve()), 0..5), 1..5)) {
        use myelin_watch_zookeeper::payload::{changes, decode, Format, Instance, Members};
        let mut members = Members::default();
        let mut told = BTreeMap::new();
        let mut model = BTreeMap::new();
        for listed in rounds {
            let names: Vec<String> = listed.iter().map(|(c, _)| format!("member_{c:010}")).collect();
            let fresh = members.retain_listed(&names);
            for child in fresh {
                let data = listed.iter().find(|(c, _)| format!("member_{c:010}") == child).map(|(_, v)| serde_json::to_vec(v).unwrap()).unwrap();
                let record = match decode(&Format::Nerve, &data) {
                    Ok(Instance::Up(d)) => Some(d),
                    _ => None,
                };
                members.insert(child, record);
            }
            let now = members.records();
            replay(&mut model, changes(&told, &now));
            told = now;
            prop_assert_eq!(&model, &told);
        }
    }
}
