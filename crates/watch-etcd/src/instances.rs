//! What one opening knows of a prefix: the record each etcd key registers, and the updates that
//! a read or an event makes. Pure: tested without etcd.
//!
//! Two keys may register the same backend (the same `name`, or the same `host:port` without
//! one). The backend then stays while any of its keys does, and the record of the smallest such
//! key is the one routed; deleting one key of two does not remove the backend.

use std::collections::{BTreeMap, BTreeSet};

use myelin_core::{Discovered, Update};

use crate::registration::{self, RegistrationError};

/// A key whose value is not a registration, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: Vec<u8>,
    pub error: RegistrationError,
}

#[derive(Debug, Default)]
pub struct Instances {
    /// etcd key → the record its value registers (valid values only).
    records: BTreeMap<Vec<u8>, Discovered>,
    /// backend key → the etcd keys that register it.
    holders: BTreeMap<String, BTreeSet<Vec<u8>>>,
}

impl Instances {
    /// Forget everything and take a complete read of the prefix: the records for a `Reset`
    /// (one per backend key) and the keys whose values were rejected.
    pub fn reset<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> (Vec<Discovered>, Vec<Rejected>) {
        *self = Self::default();
        let mut rejected = Vec::new();
        for (key, value) in kvs {
            match registration::parse(value) {
                Ok(d) => self.insert(key.to_vec(), d),
                Err(error) => rejected.push(Rejected { key: key.to_vec(), error }),
            }
        }
        let all = self.holders.keys().filter_map(|b| self.routed(b).cloned()).collect();
        (all, rejected)
    }

    /// A key was put: the updates it makes, and the rejection if its value is not a
    /// registration (a key whose value turns malformed no longer registers anything).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> (Vec<Update>, Option<Rejected>) {
        let parsed = registration::parse(value);
        let mut affected: Vec<String> = self.records.get(key).map(Discovered::key).into_iter().collect();
        if let Ok(d) = &parsed {
            affected.push(d.key());
        }
        affected.dedup();
        let before: Vec<Option<Discovered>> = affected.iter().map(|b| self.routed(b).cloned()).collect();
        self.remove(key);
        let rejected = match parsed {
            Ok(d) => {
                self.insert(key.to_vec(), d);
                None
            }
            Err(error) => Some(Rejected { key: key.to_vec(), error }),
        };
        (self.changes(affected, before), rejected)
    }

    /// A key was deleted (or its lease expired): the updates it makes.
    pub fn delete(&mut self, key: &[u8]) -> Vec<Update> {
        let Some(b) = self.records.get(key).map(Discovered::key) else {
            return Vec::new();
        };
        let before = vec![self.routed(&b).cloned()];
        self.remove(key);
        self.changes(vec![b], before)
    }

    /// How many keys register a valid record.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn insert(&mut self, key: Vec<u8>, d: Discovered) {
        self.holders.entry(d.key()).or_default().insert(key.clone());
        self.records.insert(key, d);
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.records.remove(key) {
            let b = old.key();
            if let Some(set) = self.holders.get_mut(&b) {
                set.remove(key);
                if set.is_empty() {
                    self.holders.remove(&b);
                }
            }
        }
    }

    /// The record routed for a backend key: that of its smallest etcd key.
    fn routed(&self, backend: &str) -> Option<&Discovered> {
        self.holders.get(backend)?.first().and_then(|k| self.records.get(k))
    }

    fn changes(&self, affected: Vec<String>, before: Vec<Option<Discovered>>) -> Vec<Update> {
        let mut out = Vec::new();
        for (b, before) in affected.into_iter().zip(before) {
            match (before, self.routed(&b)) {
                (Some(_), None) => out.push(Update::Remove(b)),
                (before, Some(now)) if before.as_ref() != Some(now) => out.push(Update::Upsert(now.clone())),
                _ => {}
            }
        }
        // A removal first: a record that moved from one backend key to another leaves before
        // the new one arrives.
        out.sort_by_key(|u| !matches!(u, Update::Remove(_)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(i: &mut Instances, kvs: &[(&str, &str)]) -> (Vec<Discovered>, Vec<Rejected>) {
        i.reset(kvs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
    }

    fn put(i: &mut Instances, k: &str, v: &str) -> Vec<Update> {
        i.put(k.as_bytes(), v.as_bytes()).0
    }

    fn up(host: &str, port: u16) -> Update {
        Update::Upsert(Discovered::new(host, port))
    }

    #[test]
    fn reset_keeps_good_values_and_names_the_bad_keys() {
        let mut i = Instances::default();
        let (all, bad) = reset(&mut i, &[("/s/web/a", "192.0.2.1:80"), ("/s/web/b", "garbage"), ("/s/web/c", r#"{"host":"192.0.2.3","port":80,"name":"c"}"#)]);
        assert_eq!(all, vec![Discovered::new("192.0.2.1", 80), Discovered::new("192.0.2.3", 80).named("c")]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].key, b"/s/web/b");
        assert_eq!(i.len(), 2);
        // A second reset starts from nothing.
        let (all, bad) = reset(&mut i, &[]);
        assert!(all.is_empty() && bad.is_empty() && i.is_empty());
    }

    #[test]
    fn put_and_delete() {
        let mut i = Instances::default();
        reset(&mut i, &[]);
        assert_eq!(put(&mut i, "/s/a", "192.0.2.1:80"), vec![up("192.0.2.1", 80)]);
        // The same value again changes nothing.
        assert_eq!(put(&mut i, "/s/a", "192.0.2.1:80"), vec![]);
        // A new weight is an upsert of the same backend.
        assert_eq!(put(&mut i, "/s/a", r#"{"host":"192.0.2.1","port":80,"weight":5}"#), vec![Update::Upsert(Discovered::new("192.0.2.1", 80).weighted(5))]);
        // A new address under the same key: the old backend goes, then the new one comes.
        assert_eq!(put(&mut i, "/s/a", "192.0.2.2:80"), vec![Update::Remove("192.0.2.1:80".into()), up("192.0.2.2", 80)]);
        assert_eq!(i.delete(b"/s/a"), vec![Update::Remove("192.0.2.2:80".into())]);
        // Deleting an unknown key (or a malformed one's) does nothing.
        assert_eq!(i.delete(b"/s/a"), vec![]);
    }

    #[test]
    fn a_value_turning_malformed_unregisters_its_key() {
        let mut i = Instances::default();
        reset(&mut i, &[("/s/a", "192.0.2.1:80")]);
        let (updates, rejected) = i.put(b"/s/a", b"{oops");
        assert_eq!(updates, vec![Update::Remove("192.0.2.1:80".into())]);
        assert_eq!(rejected.unwrap().key, b"/s/a");
        let (updates, rejected) = i.put(b"/s/b", b"not a registration");
        assert!(updates.is_empty() && rejected.is_some());
        assert_eq!(i.delete(b"/s/b"), vec![]);
    }

    #[test]
    fn two_keys_for_one_backend() {
        let mut i = Instances::default();
        let (all, _) = reset(&mut i, &[("/s/a", r#"{"host":"192.0.2.1","port":80,"weight":1}"#), ("/s/b", r#"{"host":"192.0.2.1","port":80,"weight":2}"#)]);
        // One record per backend key: the smallest etcd key's.
        assert_eq!(all, vec![Discovered::new("192.0.2.1", 80).weighted(1)]);
        // Deleting the routed key routes the other one's record; deleting both removes it.
        assert_eq!(i.delete(b"/s/a"), vec![Update::Upsert(Discovered::new("192.0.2.1", 80).weighted(2))]);
        assert_eq!(put(&mut i, "/s/c", r#"{"host":"192.0.2.1","port":80,"weight":2}"#), vec![]);
        assert_eq!(i.delete(b"/s/b"), vec![]);
        assert_eq!(i.delete(b"/s/c"), vec![Update::Remove("192.0.2.1:80".into())]);
    }

    /// Any sequence of events leaves the same routed set as a fresh read of the final keys.
    #[test]
    fn events_agree_with_a_fresh_read() {
        let values = ["192.0.2.1:80", "192.0.2.2:80", r#"{"host":"192.0.2.1","port":80,"weight":3}"#, r#"{"host":"192.0.2.9","port":81,"name":"n"}"#, "bad"];
        let keys = ["/s/a", "/s/b", "/s/c"];
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut live = Instances::default();
        reset(&mut live, &[]);
        let mut applied: BTreeMap<String, Discovered> = BTreeMap::new();
        let mut truth: BTreeMap<&str, &str> = BTreeMap::new();
        for _ in 0..2000 {
            let k = keys[next() % keys.len()];
            let updates = if next() % 3 == 0 {
                truth.remove(k);
                live.delete(k.as_bytes())
            } else {
                let v = values[next() % values.len()];
                truth.insert(k, v);
                put(&mut live, k, v)
            };
            for u in updates {
                match u {
                    Update::Upsert(d) => {
                        applied.insert(d.key(), d);
                    }
                    Update::Remove(b) => {
                        assert!(applied.remove(&b).is_some(), "removed {b}, which was not there");
                    }
                    Update::Reset(_) => unreachable!(),
                }
            }
            let mut fresh = Instances::default();
            let (all, _) = fresh.reset(truth.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
            let all: BTreeMap<String, Discovered> = all.into_iter().map(|d| (d.key(), d)).collect();
            assert_eq!(applied, all);
        }
    }
}
