//! The registration format: what one instance's key under a service's prefix holds.
//!
//! This module is the single definition of the format (docs/watchers.md, `## etcd`, describes
//! it for people). A value is either
//!
//! - Nerve's JSON object: `{"host": "192.0.2.5", "port": 8080, "name": "web-1", "weight": 10,
//!   "labels": {"az": "a"}}`. `host` and `port` are required; `port` and `weight` may be numbers
//!   or strings; `name`, `weight` and `labels` may be absent or `null`; label values may be
//!   strings, numbers or booleans; other members (Nerve writes some) are ignored; or
//! - a plain `host:port` (an IPv6 host in brackets: `[2001:db8::1]:8080`).
//!
//! Surrounding white space is ignored. The result is an untrusted [`Discovered`]: hosts, ports,
//! names and weights are validated later, by the store, like every source's records. Writing
//! goes through [`Registration::to_json`], so what myelin writes is what it reads.

use std::collections::BTreeMap;

use myelin_core::Discovered;
use serde::Deserialize;

/// Values longer than this are refused unread.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why a value is not a registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("the value is empty")]
    Empty,
    #[error("the value is {0} bytes, more than {MAX_VALUE_BYTES}")]
    TooLong(usize),
    #[error("the value is not UTF-8")]
    NotUtf8,
    #[error("the value is neither a JSON object nor host:port: {0}")]
    Malformed(String),
    #[error("invalid JSON registration: {0}")]
    Json(String),
}

/// What myelin writes: defined in `myelin-announce` (the ZooKeeper backend writes it too, and
/// no watcher crate depends on another), re-exported here beside its parser.
pub use myelin_announce::Registration;

/// A JSON value that is a string, a number, or (for labels) a boolean, kept as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Num(serde_json::Number),
    Bool(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Self::Str(s) => s,
            Self::Num(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Nerve {
    host: Option<Scalar>,
    port: Option<Scalar>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    weight: Option<Scalar>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Option<Scalar>>>,
}

/// The record a key's value registers (pure: the same bytes always give the same answer).
pub fn parse(value: &[u8]) -> Result<Discovered, RegistrationError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(RegistrationError::TooLong(value.len()));
    }
    let text = std::str::from_utf8(value).map_err(|_| RegistrationError::NotUtf8)?.trim();
    if text.is_empty() {
        return Err(RegistrationError::Empty);
    }
    if text.starts_with('{') {
        return parse_json(text);
    }
    parse_host_port(text)
}

fn parse_json(text: &str) -> Result<Discovered, RegistrationError> {
    let n: Nerve = serde_json::from_str(text).map_err(|e| RegistrationError::Json(e.to_string()))?;
    let host = match n.host {
        Some(Scalar::Str(h)) if !h.trim().is_empty() => h.trim().to_owned(),
        Some(Scalar::Str(_)) | None => return Err(RegistrationError::Json("`host` is required".into())),
        Some(_) => return Err(RegistrationError::Json("`host` must be a string".into())),
    };
    let port = match n.port {
        Some(p @ (Scalar::Str(_) | Scalar::Num(_))) => p.text(),
        Some(Scalar::Bool(_)) => return Err(RegistrationError::Json("`port` must be a number".into())),
        None => return Err(RegistrationError::Json("`port` is required".into())),
    };
    let weight = match n.weight {
        None => None,
        Some(w @ (Scalar::Str(_) | Scalar::Num(_))) => Some(w.text()),
        Some(Scalar::Bool(_)) => return Err(RegistrationError::Json("`weight` must be a number".into())),
    };
    let labels = n.labels.unwrap_or_default().into_iter().filter_map(|(k, v)| v.map(|v| (k, v.text()))).collect();
    let name = n.name.filter(|s| !s.is_empty());
    Ok(Discovered { name, host, port, weight, labels })
}

fn parse_host_port(text: &str) -> Result<Discovered, RegistrationError> {
    let malformed = || RegistrationError::Malformed(format!("{:?}", truncate(text, 80)));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(malformed)?;
        (host, port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or_else(malformed)?;
        if host.contains(':') {
            // An IPv6 address must be bracketed, or the port is ambiguous.
            return Err(malformed());
        }
        (host, port)
    };
    if host.is_empty() || port.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(malformed());
    }
    Ok(Discovered::new(host, port))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> Discovered {
        parse(v.as_bytes()).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn err(v: &[u8]) -> String {
        parse(v).expect_err(&String::from_utf8_lossy(v)).to_string()
    }

    /// Values written with etcdctl (Nerve's JSON, registrator-style `host:port`, and malformed
    /// ones) and read back from a real etcd 3.4 (`etcdctl get --prefix -w json`): one JSON
    /// object per line with the key, the value as stored, and whether it is a registration.
    #[test]
    fn captured_values() {
        let text = include_str!("../testdata/values.jsonl");
        let mut seen = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let (key, value, ok) = (v["key"].as_str().unwrap(), v["value"].as_str().unwrap(), v["ok"].as_bool().unwrap());
            match (ok, parse(value.as_bytes())) {
                (true, Ok(d)) => assert!(!d.host.is_empty() && !d.port.is_empty(), "{key}"),
                (false, Err(_)) => {}
                (_, r) => panic!("{key}: {value:?} gave {r:?}"),
            }
            seen += 1;
        }
        assert_eq!(seen, 16);
        // Two captured values in full.
        let find = |k: &str| text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v["key"] == k).unwrap()["value"].as_str().unwrap().to_owned();
        let mut want = Discovered::new("192.0.2.11", 3000).named("i-0a1b2c3d");
        want.labels.insert("az".into(), "us-east-1a".into());
        assert_eq!(parse(find("/capture/web/nerve-1").as_bytes()).unwrap(), want);
        assert_eq!(parse(find("/capture/web/registrator-2").as_bytes()).unwrap(), Discovered::new("192.0.2.14", 8080));
    }

    #[test]
    fn nerve_json() {
        let d = ok(r#"{"host":"192.0.2.5","port":8080,"name":"web-1","weight":10,"labels":{"az":"a","canary":true,"rack":3}}"#);
        assert_eq!(d.host, "192.0.2.5");
        assert_eq!(d.port, "8080");
        assert_eq!(d.name.as_deref(), Some("web-1"));
        assert_eq!(d.weight.as_deref(), Some("10"));
        assert_eq!(d.labels.get("az").map(String::as_str), Some("a"));
        assert_eq!(d.labels.get("canary").map(String::as_str), Some("true"));
        assert_eq!(d.labels.get("rack").map(String::as_str), Some("3"));
        assert_eq!(d.key(), "web-1");
        // Strings for numbers, nulls, unknown members, white space around.
        let d = ok("  {\"host\":\"db.internal\",\"port\":\"5432\",\"name\":null,\"weight\":null,\"labels\":null,\"zk_path\":\"/x\"}\n");
        assert_eq!((d.host.as_str(), d.port.as_str(), d.name.clone(), d.weight.clone()), ("db.internal", "5432", None, None));
        assert_eq!(d.key(), "db.internal:5432");
        // An empty name is no name.
        assert_eq!(ok(r#"{"host":"h","port":1,"name":""}"#).name, None);
        // A label whose value is null is left out.
        assert!(ok(r#"{"host":"h","port":1,"labels":{"a":null}}"#).labels.is_empty());
    }

    #[test]
    fn out_of_range_numbers_pass_through_for_the_store_to_reject() {
        // The store validates ports and weights (and counts the rejection); the parser keeps
        // the text.
        assert_eq!(ok(r#"{"host":"h","port":70000}"#).port, "70000");
        assert_eq!(ok(r#"{"host":"h","port":-1}"#).port, "-1");
        assert_eq!(ok(r#"{"host":"h","port":1,"weight":1.5}"#).weight.as_deref(), Some("1.5"));
    }

    #[test]
    fn plain_host_port() {
        assert_eq!(ok("192.0.2.7:9000"), Discovered::new("192.0.2.7", "9000"));
        assert_eq!(ok("web-3.internal:80\n"), Discovered::new("web-3.internal", "80"));
        assert_eq!(ok("[2001:db8::1]:8080"), Discovered::new("2001:db8::1", "8080"));
    }

    #[test]
    fn malformed_values() {
        assert_eq!(err(b""), "the value is empty");
        assert_eq!(err(b"  \n"), "the value is empty");
        assert_eq!(err(b"\xff\xfe"), "the value is not UTF-8");
        assert!(err(b"hello").starts_with("the value is neither"));
        assert!(err(b"2001:db8::1:80").starts_with("the value is neither"));
        assert!(err(b"host name:80").starts_with("the value is neither"));
        assert!(err(b":80").starts_with("the value is neither"));
        assert!(err(b"h:").starts_with("the value is neither"));
        assert!(err(b"{\"host\":\"h\"").starts_with("invalid JSON"));
        assert_eq!(err(br#"{"port":80}"#), "invalid JSON registration: `host` is required");
        assert_eq!(err(br#"{"host":"h"}"#), "invalid JSON registration: `port` is required");
        assert_eq!(err(br#"{"host":" ","port":1}"#), "invalid JSON registration: `host` is required");
        assert_eq!(err(br#"{"host":1,"port":1}"#), "invalid JSON registration: `host` must be a string");
        assert_eq!(err(br#"{"host":"h","port":true}"#), "invalid JSON registration: `port` must be a number");
        assert!(err(br#"{"host":"h","port":1,"labels":{"a":{"b":1}}}"#).starts_with("invalid JSON"));
        assert!(err(br#"{"host":"h","port":1,"labels":[1]}"#).starts_with("invalid JSON"));
        assert!(err(br#"{"host":"h","port":[1]}"#).starts_with("invalid JSON"));
        let big = vec![b'a'; MAX_VALUE_BYTES + 1];
        assert!(err(&big).contains("more than"));
        // The message quotes at most 80 characters of the value, escaped.
        let long = format!("{}\u{1b}[31m", "x".repeat(200));
        let e = err(long.as_bytes());
        assert!(e.len() < 140 && !e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn what_myelin_writes_it_reads() {
        let r = Registration {
            host: "203.0.113.3".into(),
            port: 31000,
            name: Some("web_203.0.113.3_31000".into()),
            weight: Some(5),
            labels: [("az".to_owned(), "b".to_owned())].into(),
        };
        let json = r.to_json();
        assert_eq!(json, r#"{"host":"203.0.113.3","port":31000,"name":"web_203.0.113.3_31000","weight":5,"labels":{"az":"b"}}"#);
        let mut expected = Discovered::new("203.0.113.3", 31000).named("web_203.0.113.3_31000").weighted(5);
        expected.labels = r.labels.clone();
        assert_eq!(parse(json.as_bytes()).unwrap(), expected);
        let bare = Registration { host: "h".into(), port: 1, name: None, weight: None, labels: BTreeMap::new() };
        assert_eq!(bare.to_json(), r#"{"host":"h","port":1}"#);
    }
}
