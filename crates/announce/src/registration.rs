//! The Nerve registration JSON: what one announced instance's entry holds in etcd (a key's
//! value) and ZooKeeper (a node's data). This is the one definition of what myelin writes;
//! the etcd and ZooKeeper watchers read it back (`myelin_watch_etcd::registration::parse`,
//! `myelin_watch_zookeeper::payload`), and their tests check that what is written is read.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Instance;

/// One instance's registration, as Nerve writes it: `{"host": "192.0.2.5", "port": 8080,
/// "name": "web-1", "weight": 10, "labels": {"az": "a"}}` (`name`, `weight` and `labels` are
/// left out when absent or empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub host: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Registration {
    /// The JSON value to store under `<path>/<instance-id>`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a map of strings always serializes")
    }
}

impl From<&Instance> for Registration {
    fn from(i: &Instance) -> Self {
        Self { host: i.host.to_string(), port: i.port, name: Some(i.name.clone()), weight: i.weight, labels: i.labels.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstanceId, Owner};

    #[test]
    fn an_instance_as_nerve_json() {
        let owner = Owner::new("host-a").unwrap();
        let i = Instance {
            id: InstanceId::new(&owner, "web_1", 8080).unwrap(),
            host: "2001:db8::1".parse().unwrap(),
            port: 32768,
            name: "host-a_web_1_8080".into(),
            weight: Some(3),
            labels: [("az".to_owned(), "a\"b".to_owned())].into(),
        };
        assert_eq!(Registration::from(&i).to_json(), r#"{"host":"2001:db8::1","port":32768,"name":"host-a_web_1_8080","weight":3,"labels":{"az":"a\"b"}}"#);
        let bare = Instance { weight: None, labels: BTreeMap::new(), host: "192.0.2.1".parse().unwrap(), ..i };
        assert_eq!(Registration::from(&bare).to_json(), r#"{"host":"192.0.2.1","port":32768,"name":"host-a_web_1_8080"}"#);
    }
}
