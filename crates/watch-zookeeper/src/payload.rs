//! Pure translation: a registration node's data into a record, and a set of children into the
//! updates that tell the store about it. Nothing here does I/O.
//!
//! Every value is kept as untrusted text: the store validates hosts, ports, names and weights.

use std::collections::BTreeMap;

use myelin_core::{Discovered, Update};
use serde_json::Value;

/// How the nodes under `path` are written (Synapse's `decode.method`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// Airbnb Nerve: `{"host", "port", "name"?, "weight"?, "labels"?}`.
    #[default]
    Nerve,
    /// Finagle's (and Aurora's) serverset: `{"serviceEndpoint": {"host", "port"},
    /// "additionalEndpoints": {NAME: {"host", "port"}}, "status", "shard"?}`; with `endpoint`,
    /// that additional endpoint is routed instead of the service endpoint.
    Serverset { endpoint: Option<String> },
}

/// What one node says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instance {
    /// An instance to route.
    Up(Discovered),
    /// A serverset member whose `status` is not `ALIVE` (e.g. `STARTING`, `STOPPING`): known,
    /// not routed.
    NotAlive { status: String },
}

/// The HAProxy server name Synapse gives an instance: `<name>_<host>:<port>` when the node
/// names it, else `host:port` (the store's default key, so no name is set then).
fn server_name(name: Option<String>, host: &str, port: &str) -> Option<String> {
    name.filter(|n| !n.is_empty()).map(|n| format!("{n}_{host}:{port}"))
}

fn host_of(v: Option<&Value>, what: &str) -> Result<String, String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(Value::String(_)) => Err(format!("{what}host is empty")),
        None | Some(Value::Null) => Err(format!("{what}host is missing")),
        Some(_) => Err(format!("{what}host is not a string")),
    }
}

fn port_of(v: Option<&Value>, what: &str) -> Result<String, String> {
    match v {
        Some(Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
        Some(Value::String(s)) => Ok(s.trim().to_owned()),
        None | Some(Value::Null) => Err(format!("{what}port is missing")),
        Some(_) => Err(format!("{what}port is not a whole number")),
    }
}

/// A scalar as text (names, weights and label values are written as numbers too).
fn text_of(v: &Value) -> Option<Result<String, ()>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Ok(s.clone())),
        Value::Number(n) => Some(Ok(n.to_string())),
        Value::Bool(b) => Some(Ok(b.to_string())),
        Value::Array(_) | Value::Object(_) => Some(Err(())),
    }
}

fn labels_of(v: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                match text_of(v) {
                    None => {}
                    Some(Ok(s)) => {
                        out.insert(k.clone(), s);
                    }
                    Some(Err(())) => return Err(format!("label {k:?} is not a string")),
                }
            }
            Ok(out)
        }
        Some(_) => Err("labels is not an object".into()),
    }
}

fn object(data: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err("the node holds no data".into());
    }
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the node's data is not a JSON object".into()),
        Err(e) => Err(format!("the node's data is not JSON: {e}")),
    }
}

/// A Nerve registration.
pub fn nerve(data: &[u8]) -> Result<Instance, String> {
    let m = object(data)?;
    let host = host_of(m.get("host"), "")?;
    let port = port_of(m.get("port"), "")?;
    let name = match m.get("name").and_then(text_of) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(())) => return Err("name is not a string".into()),
    };
    let weight = match m.get("weight").and_then(text_of) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(())) => return Err("weight is not a number".into()),
    };
    let labels = labels_of(m.get("labels"))?;
    let name = server_name(name, &host, &port);
    Ok(Instance::Up(Discovered { name, host, port, weight, labels }))
}

/// A serverset member: the service endpoint, or the additional endpoint `endpoint`. Only
/// members whose `status` is `ALIVE` (or that have none) are routed.
pub fn serverset(data: &[u8], endpoint: Option<&str>) -> Result<Instance, String> {
    let m = object(data)?;
    let ep = match endpoint {
        None => m.get("serviceEndpoint").ok_or("serviceEndpoint is missing")?,
        Some(name) => m
            .get("additionalEndpoints")
            .and_then(|a| a.get(name))
            .ok_or_else(|| format!("additionalEndpoints has no endpoint {name:?}"))?,
    };
    let what = match endpoint {
        None => "serviceEndpoint.".to_owned(),
        Some(name) => format!("additionalEndpoints.{name}."),
    };
    let Value::Object(ep) = ep else {
        return Err(format!("{} is not an object", what.trim_end_matches('.')));
    };
    let host = host_of(ep.get("host"), &what)?;
    let port = port_of(ep.get("port"), &what)?;
    match m.get("status") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "ALIVE" => {}
        Some(Value::String(s)) => return Ok(Instance::NotAlive { status: s.clone() }),
        Some(_) => return Err("status is not a string".into()),
    }
    let name = match m.get("shard").and_then(text_of) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(())) => return Err("shard is not a number".into()),
    };
    let name = server_name(name, &host, &port);
    Ok(Instance::Up(Discovered { name, host, port, weight: None, labels: BTreeMap::new() }))
}

/// Decode one node's data.
pub fn decode(format: &Format, data: &[u8]) -> Result<Instance, String> {
    match format {
        Format::Nerve => nerve(data),
        Format::Serverset { endpoint } => serverset(data, endpoint.as_deref()),
    }
}

/// The children of the watched path that have been read, each with the record it gave (`None`
/// when it is not routed: malformed, or not alive). A child's data is read once, when it
/// appears.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    children: BTreeMap<String, Option<Discovered>>,
}

impl Members {
    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    pub fn contains(&self, child: &str) -> bool {
        self.children.contains_key(child)
    }

    /// Forget the children that are no longer listed; return those listed but not yet known
    /// (whose data must be read), in order.
    pub fn retain_listed(&mut self, listed: &[String]) -> Vec<String> {
        let set: std::collections::BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        self.children.retain(|c, _| set.contains(c.as_str()));
        let mut new: Vec<String> = set.into_iter().filter(|c| !self.children.contains_key(*c)).map(str::to_owned).collect();
        new.dedup();
        new
    }

    pub fn insert(&mut self, child: String, record: Option<Discovered>) {
        self.children.insert(child, record);
    }

    pub fn clear(&mut self) {
        self.children.clear();
    }

    /// The records by key. Two children with the same key (a registration made again before
    /// the old session's node expired) give one record: the child that sorts last, i.e. the
    /// newest sequential node, wins.
    pub fn records(&self) -> BTreeMap<String, Discovered> {
        let mut out = BTreeMap::new();
        for d in self.children.values().flatten() {
            out.insert(d.key(), d.clone());
        }
        out
    }
}

/// The updates that turn what the store was told (`old`) into `new`: removals first, then
/// additions and changes.
pub fn changes(old: &BTreeMap<String, Discovered>, new: &BTreeMap<String, Discovered>) -> Vec<Update> {
    let removed = old.keys().filter(|k| !new.contains_key(*k)).map(|k| Update::Remove(k.clone()));
    let upserted = new.iter().filter(|(k, d)| old.get(*k) != Some(d)).map(|(_, d)| Update::Upsert(d.clone()));
    removed.chain(upserted).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(r: Result<Instance, String>) -> Discovered {
        match r {
            Ok(Instance::Up(d)) => d,
            other => panic!("{other:?}"),
        }
    }

    // What Nerve's ZooKeeper reporter writes (JSON of its service's host, port, instance id,
    // weight and labels), as captured from a registration.
    const NERVE: &str = r#"{"host":"203.0.113.3","port":8080,"name":"i-0a1b2c3d4e5f60718","weight":10,"labels":{"az":"us-east-1a","canary":false}}"#;

    #[test]
    fn nerve_registrations() {
        let d = up(nerve(NERVE.as_bytes()));
        assert_eq!(d.host, "203.0.113.3");
        assert_eq!(d.port, "8080");
        assert_eq!(d.name.as_deref(), Some("i-0a1b2c3d4e5f60718_203.0.113.3:8080"));
        assert_eq!(d.key(), "i-0a1b2c3d4e5f60718_203.0.113.3:8080");
        assert_eq!(d.weight.as_deref(), Some("10"));
        assert_eq!(d.labels.get("az").map(String::as_str), Some("us-east-1a"));
        assert_eq!(d.labels.get("canary").map(String::as_str), Some("false"));
        // The store accepts it.
        d.validate().unwrap();

        // Host and port only (Synapse's minimal form); the port as a string; unknown keys
        // (Nerve's `haproxy_server_options`, never written into HAProxy) ignored.
        let d = up(nerve(br#"{"host":"web-1.example.com","port":"31000","haproxy_server_options":"backup","id":7}"#));
        assert_eq!((d.name.as_deref(), d.key().as_str()), (None, "web-1.example.com:31000"));
        assert_eq!(d.weight, None);
        assert!(d.labels.is_empty());
        // An empty name is no name; a numeric name is text.
        assert_eq!(up(nerve(br#"{"host":"h","port":1,"name":""}"#)).key(), "h:1");
        assert_eq!(up(nerve(br#"{"host":"h","port":1,"name":3}"#)).key(), "3_h:1");
    }

    #[test]
    fn malformed_nerve_nodes_say_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "the node holds no data"),
            (b"not json", "the node's data is not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"port":80}"#, "host is missing"),
            (br#"{"host":"","port":80}"#, "host is empty"),
            (br#"{"host":["a"],"port":80}"#, "host is not a string"),
            (br#"{"host":"a"}"#, "port is missing"),
            (br#"{"host":"a","port":80.5}"#, "port is not a whole number"),
            (br#"{"host":"a","port":-1}"#, "port is not a whole number"),
            (br#"{"host":"a","port":1,"weight":[1]}"#, "weight is not a number"),
            (br#"{"host":"a","port":1,"labels":[]}"#, "labels is not an object"),
            (br#"{"host":"a","port":1,"labels":{"x":{"y":1}}}"#, "label \"x\" is not a string"),
        ];
        for (data, want) in cases {
            let got = nerve(data).unwrap_err();
            assert!(got.contains(want), "{:?}: {got}", String::from_utf8_lossy(data));
        }
        // Values the store rejects still decode: validation is the store's job.
        let d = up(nerve(br#"{"host":"bad host","port":99999,"weight":"heavy"}"#));
        assert!(d.validate().is_err());
    }

    // What Finagle's ZooKeeper announcer (and Aurora) write for a serverset member.
    const SERVERSET: &str = r#"{"serviceEndpoint":{"host":"192.0.2.7","port":31943},"additionalEndpoints":{"http":{"host":"192.0.2.7","port":31944},"admin":{"host":"192.0.2.7","port":31945}},"status":"ALIVE","shard":2}"#;

    #[test]
    fn serverset_members() {
        let d = up(serverset(SERVERSET.as_bytes(), None));
        assert_eq!((d.host.as_str(), d.port.as_str()), ("192.0.2.7", "31943"));
        assert_eq!(d.key(), "2_192.0.2.7:31943");
        d.validate().unwrap();
        let d = up(serverset(SERVERSET.as_bytes(), Some("http")));
        assert_eq!(d.key(), "2_192.0.2.7:31944");
        let e = serverset(SERVERSET.as_bytes(), Some("thrift")).unwrap_err();
        assert_eq!(e, "additionalEndpoints has no endpoint \"thrift\"");
        // No shard, no status: routed, named host:port.
        let d = up(serverset(br#"{"serviceEndpoint":{"host":"h","port":1},"additionalEndpoints":{}}"#, None));
        assert_eq!((d.name.as_deref(), d.key().as_str()), (None, "h:1"));
        // A member that is not alive is known but not routed.
        let stopping = SERVERSET.replace("ALIVE", "STOPPING");
        assert_eq!(serverset(stopping.as_bytes(), None), Ok(Instance::NotAlive { status: "STOPPING".into() }));
        // Malformed members.
        assert_eq!(serverset(br#"{"status":"ALIVE"}"#, None).unwrap_err(), "serviceEndpoint is missing");
        assert_eq!(serverset(br#"{"serviceEndpoint":{"port":1}}"#, None).unwrap_err(), "serviceEndpoint.host is missing");
        assert_eq!(serverset(br#"{"serviceEndpoint":7}"#, None).unwrap_err(), "serviceEndpoint is not an object");
        let bad_port = br#"{"serviceEndpoint":{"host":"h","port":1},"additionalEndpoints":{"http":{"host":"h","port":true}}}"#;
        assert_eq!(serverset(bad_port, Some("http")).unwrap_err(), "additionalEndpoints.http.port is not a whole number");
        assert_eq!(serverset(br#"{"serviceEndpoint":{"host":"h","port":1},"status":0}"#, None).unwrap_err(), "status is not a string");
    }

    #[test]
    fn decode_picks_the_format() {
        assert!(matches!(decode(&Format::Nerve, NERVE.as_bytes()), Ok(Instance::Up(_))));
        assert!(decode(&Format::Nerve, SERVERSET.as_bytes()).is_err());
        let http = Format::Serverset { endpoint: Some("http".into()) };
        assert_eq!(up(decode(&http, SERVERSET.as_bytes())).port, "31944");
    }

    fn rec(name: &str, port: u16) -> Option<Discovered> {
        Some(Discovered::new("192.0.2.1", port).named(name))
    }

    #[test]
    fn members_read_new_children_only_and_the_newest_node_wins_a_key() {
        let mut m = Members::default();
        let listed = vec!["b_0002".to_owned(), "a_0001".to_owned()];
        assert_eq!(m.retain_listed(&listed), ["a_0001", "b_0002"]);
        m.insert("a_0001".into(), rec("a", 1));
        m.insert("b_0002".into(), None); // malformed: not read again
        assert_eq!(m.retain_listed(&listed), Vec::<String>::new());
        assert_eq!(m.records().keys().collect::<Vec<_>>(), ["a"]);
        // The same instance registered again before its old node expired.
        let listed = vec!["a_0001".to_owned(), "a_0003".to_owned()];
        assert_eq!(m.retain_listed(&listed), ["a_0003"]);
        assert!(!m.contains("b_0002"));
        m.insert("a_0003".into(), rec("a", 3));
        assert_eq!(m.records()["a"].port, "3");
        // The old node expires: the record stays, unchanged.
        m.retain_listed(&["a_0003".to_owned()]);
        assert_eq!(m.records()["a"].port, "3");
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn changes_remove_then_upsert() {
        let old: BTreeMap<String, Discovered> = [("a", 1), ("b", 2), ("c", 3)].iter().map(|(n, p)| (n.to_string(), rec(n, *p).unwrap())).collect();
        let mut new = old.clone();
        new.remove("a");
        new.insert("b".into(), rec("b", 20).unwrap());
        new.insert("d".into(), rec("d", 4).unwrap());
        let got = changes(&old, &new);
        assert_eq!(got, [Update::Remove("a".into()), Update::Upsert(rec("b", 20).unwrap()), Update::Upsert(rec("d", 4).unwrap())]);
        assert!(changes(&new, &new).is_empty());
        // Replaying the changes onto the old set gives the new one.
        let mut replay = old.clone();
        for u in got {
            match u {
                Update::Remove(k) => {
                    replay.remove(&k);
                }
                Update::Upsert(d) => {
                    replay.insert(d.key(), d);
                }
                Update::Reset(_) => unreachable!(),
            }
        }
        assert_eq!(replay, new);
    }
}
