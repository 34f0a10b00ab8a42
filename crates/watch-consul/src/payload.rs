//! Consul's answers as records: pure functions, tested on payloads shaped as Consul's HTTP API
//! documentation shows them (`testdata/`). Everything here is untrusted text: it is handed on
//! as [`Discovered`] and validated by the store.

use std::collections::BTreeMap;

use myelin_core::Discovered;
use serde::Deserialize;

/// How a service's instances are chosen and turned into records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Every one of these tags must be on the instance.
    pub tags: Vec<String>,
    /// Only instances whose checks all pass; otherwise those whose worst check is `warning`
    /// are routed too (with their `Warning` weight). `critical` ones never are.
    pub only_passing: bool,
    /// Dial this tagged address (`lan`, `wan`, `lan_ipv4`, ...) when the instance has it.
    pub tagged_address: Option<String>,
}

/// The worst status of an instance's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    /// Consul's check statuses; anything unknown counts as critical (`maintenance` is a
    /// critical check in Consul).
    fn of(status: &str) -> Self {
        match status {
            "passing" => Self::Passing,
            "warning" => Self::Warning,
            _ => Self::Critical,
        }
    }
}

/// One entry of `/v1/health/service/<name>`. Only the fields used; unknown fields are ignored
/// (Consul adds fields between versions).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: Node,
    service: Service,
    #[serde(default)]
    checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    node: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    tagged_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    port: i64,
    #[serde(default)]
    weights: Option<Weights>,
}

/// `Service.TaggedAddresses` values (lower-case keys in Consul's API).
#[derive(Debug, Deserialize)]
struct ServiceAddress {
    #[serde(default, alias = "Address")]
    address: String,
    #[serde(default, alias = "Port")]
    port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: i64,
    warning: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    status: String,
}

/// What one health answer gave: the records, and the entries that could not be used (with
/// why; the others are still used).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Instances {
    pub records: Vec<Discovered>,
    pub rejected: Vec<(String, String)>,
}

/// The answer of `/v1/health/service/<name>` as records. `Err` when the document as a whole is
/// not a JSON array (the answer cannot be used); a single entry that does not have Consul's
/// shape is rejected and the others are kept.
pub fn instances(body: &[u8], sel: &Selection) -> Result<Instances, serde_json::Error> {
    let entries: Vec<serde_json::Value> = serde_json::from_slice(body)?;
    let mut out = Instances::default();
    for (i, v) in entries.into_iter().enumerate() {
        let e: HealthEntry = match serde_json::from_value(v) {
            Ok(e) => e,
            Err(err) => {
                out.rejected.push((format!("entry {i}"), err.to_string()));
                continue;
            }
        };
        if let Some(d) = record(e, sel) {
            out.records.push(d);
        }
    }
    out.records.sort_by_key(Discovered::key);
    Ok(out)
}

/// One instance as a record, or `None` when the selection leaves it out.
fn record(e: HealthEntry, sel: &Selection) -> Option<Discovered> {
    let health = e.checks.iter().map(|c| Health::of(&c.status)).max().unwrap_or(Health::Passing);
    let admitted = match health {
        Health::Passing => true,
        Health::Warning => !sel.only_passing,
        Health::Critical => false,
    };
    let svc = e.service;
    let tags = svc.tags.as_deref().unwrap_or_default();
    if !admitted || !sel.tags.iter().all(|t| tags.contains(t)) {
        return None;
    }
    let mut host = if svc.address.is_empty() { e.node.address } else { svc.address };
    let mut port = svc.port;
    if let Some(tag) = &sel.tagged_address {
        // The service's own tagged address first (it has a port), then the node's.
        if let Some(a) = svc.tagged_addresses.as_ref().and_then(|m| m.get(tag)).filter(|a| !a.address.is_empty()) {
            host.clone_from(&a.address);
            port = a.port.unwrap_or(port);
        } else if let Some(a) = e.node.tagged_addresses.as_ref().and_then(|m| m.get(tag)).filter(|a| !a.is_empty()) {
            host.clone_from(a);
        }
    }
    let weight = svc.weights.map(|w| if health == Health::Warning { w.warning } else { w.passing });
    Some(Discovered {
        name: Some(format!("{}:{}", e.node.node, svc.id)),
        host,
        port: port.to_string(),
        weight: weight.map(|w| w.to_string()),
        labels: svc.meta.unwrap_or_default(),
    })
}

/// The answer of `/v1/catalog/services` (service name → the union of its instances' tags):
/// the names of the services that carry `tag`, with their tags.
pub fn services_with_tag(body: &[u8], tag: &str) -> Result<BTreeMap<String, Vec<String>>, serde_json::Error> {
    let all: BTreeMap<String, Option<Vec<String>>> = serde_json::from_slice(body)?;
    Ok(all.into_iter().filter_map(|(name, tags)| tags.filter(|t| t.iter().any(|x| x == tag)).map(|t| (name, t))).collect())
}

/// The next `index` to ask with, by Consul's rules for blocking queries: an index that went
/// backwards starts again from 0, and one below 1 is taken as 1 (so it blocks).
pub fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel() -> Selection {
        Selection { tags: vec![], only_passing: true, tagged_address: None }
    }

    const DOC: &[u8] = include_bytes!("../testdata/health-service.json");

    #[test]
    fn documented_health_answer() {
        let got = instances(DOC, &sel()).unwrap();
        assert!(got.rejected.is_empty());
        assert_eq!(got.records.len(), 1, "{got:?}");
        let d = &got.records[0];
        assert_eq!(d.name.as_deref(), Some("foobar:redis"));
        assert_eq!((d.host.as_str(), d.port.as_str(), d.weight.as_deref()), ("203.0.113.12", "8000", Some("10")));
        assert_eq!(d.labels.get("redis_version").map(String::as_str), Some("4.0"));
        d.validate().unwrap();
    }

    #[test]
    fn node_address_when_the_service_has_none_and_tagged_addresses() {
        let body = br#"[{"Node": {"Node": "n1", "Address": "192.0.2.1", "TaggedAddresses": {"lan": "192.0.2.1", "wan": "198.51.100.1"}},
            "Service": {"ID": "web-1", "Service": "web", "Address": "", "Port": 80, "TaggedAddresses": null}, "Checks": []},
          {"Node": {"Node": "n2", "Address": "192.0.2.2"},
            "Service": {"ID": "web-2", "Service": "web", "Address": "198.51.100.2", "Port": 81,
              "TaggedAddresses": {"wan": {"address": "198.51.100.2", "port": 8081}}}, "Checks": []}]"#;
        let got = instances(body, &sel()).unwrap().records;
        assert_eq!(got.iter().map(|d| (d.host.as_str(), d.port.as_str())).collect::<Vec<_>>(), [("192.0.2.1", "80"), ("198.51.100.2", "81")]);
        assert_eq!(got[0].weight, None);
        let wan = Selection { tagged_address: Some("wan".into()), ..sel() };
        let got = instances(body, &wan).unwrap().records;
        assert_eq!(got.iter().map(|d| (d.host.as_str(), d.port.as_str())).collect::<Vec<_>>(), [("198.51.100.1", "80"), ("198.51.100.2", "8081")]);
        // A tag neither has: the default address.
        let other = Selection { tagged_address: Some("lan_ipv6".into()), ..sel() };
        assert_eq!(instances(body, &other).unwrap().records[1].host, "198.51.100.2");
    }

    #[test]
    fn health_and_tags_select_instances() {
        let entry = |id: &str, tags: &str, statuses: &[&str]| {
            let checks: Vec<String> = statuses.iter().map(|s| format!(r#"{{"CheckID": "c", "Status": "{s}"}}"#)).collect();
            format!(
                r#"{{"Node": {{"Node": "n", "Address": "192.0.2.1"}}, "Service": {{"ID": "{id}", "Tags": {tags}, "Port": 80,
                   "Weights": {{"Passing": 5, "Warning": 2}}}}, "Checks": [{}]}}"#,
                checks.join(",")
            )
        };
        let body = format!(
            "[{}]",
            [
                entry("ok", r#"["a", "b"]"#, &["passing", "passing"]),
                entry("warn", r#"["a", "b"]"#, &["passing", "warning"]),
                entry("down", r#"["a", "b"]"#, &["warning", "critical"]),
                entry("maint", r#"["a", "b"]"#, &["maintenance"]),
                entry("only-a", r#"["a"]"#, &["passing"]),
                entry("untagged", "null", &[]),
            ]
            .join(",")
        );
        let ids = |s: &Selection| instances(body.as_bytes(), s).unwrap().records.into_iter().map(|d| (d.name.unwrap(), d.weight.unwrap())).collect::<Vec<_>>();
        let n = |id: &str, w: &str| (format!("n:{id}"), w.to_owned());
        assert_eq!(ids(&sel()), [n("ok", "5"), n("only-a", "5"), n("untagged", "5")]);
        let both = Selection { tags: vec!["a".into(), "b".into()], ..sel() };
        assert_eq!(ids(&both), [n("ok", "5")]);
        let warn = Selection { only_passing: false, ..both };
        assert_eq!(ids(&warn), [n("ok", "5"), n("warn", "2")]);
    }

    #[test]
    fn hostile_and_broken_entries() {
        // Not an array: the whole answer is unusable.
        assert!(instances(b"{\"a\": 1}", &sel()).is_err());
        assert!(instances(b"[{\"Node\": ", &sel()).is_err());
        // One entry without Consul's shape is rejected; the other is kept.
        let body = br#"[{"Node": {}, "Service": 3},
            {"Node": {"Node": "n", "Address": "192.0.2.1\nbackend evil"}, "Service": {"ID": "x y", "Port": 99999, "Weights": {"Passing": 1000, "Warning": 1}}}]"#;
        let got = instances(body, &sel()).unwrap();
        assert_eq!(got.rejected.len(), 1);
        assert_eq!(got.rejected[0].0, "entry 0");
        // Passed on as text; the store's validation refuses it.
        assert_eq!(got.records.len(), 1);
        assert!(got.records[0].validate().is_err());
    }

    #[test]
    fn documented_catalog_answer() {
        let body = include_bytes!("../testdata/catalog-services.json");
        let got = services_with_tag(body, "primary").unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["postgresql"]);
        assert!(services_with_tag(body, "absent").unwrap().is_empty());
        assert!(services_with_tag(b"[]", "x").is_err());
        assert!(services_with_tag(br#"{"a": null}"#, "x").unwrap().is_empty());
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 12), 12);
        assert_eq!(next_index(12, 12), 12);
        assert_eq!(next_index(12, 40), 40);
        // Went backwards (e.g. the cluster's state was restored): start again from 0.
        assert_eq!(next_index(40, 7), 0);
        // Below 1: taken as 1, so the next query blocks instead of returning at once.
        assert_eq!(next_index(0, 0), 1);
    }
}
