//! `discovery: {method: consul, ...}`: the settings, the environment Consul's own tools read,
//! and the ACL token.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use myelin_source::{Context, LabelFilter, Partition, Seconds, SettingsProblem, SourceConfig};
use serde::Deserialize;

use crate::payload::Selection;
use crate::source::ConsulSource;

/// Consul's HTTP address when neither the config nor `CONSUL_HTTP_ADDR` gives one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";
/// The default `wait` of a blocking query, in seconds.
pub const DEFAULT_WAIT: f64 = 60.0;
/// Consul caps `wait` at ten minutes.
const MAX_WAIT: f64 = 600.0;

/// A Consul ACL token. It never shows: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the `X-Consul-Token` header only.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `services.<name>.discovery` with `method: consul`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    /// The service's name in Consul (default: the myelin service's name).
    #[serde(default)]
    pub service: Option<String>,
    /// Route only instances that carry every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// One tag (the form other Synapse-style Consul watchers use); added to `tags`.
    #[serde(default)]
    pub tag: Option<String>,
    /// The datacenter to ask (default: the agent's). `dc` is accepted too.
    #[serde(default, alias = "dc")]
    pub datacenter: Option<String>,
    /// Route only instances whose checks all pass (default). When false, instances whose worst
    /// check is `warning` are routed too, with their `Warning` weight; `critical` never.
    #[serde(default = "yes")]
    pub only_passing: bool,
    /// Consul's filter expression, passed through as `filter`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Consul's HTTP(S) address (default: `CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`).
    #[serde(default)]
    pub address: Option<String>,
    /// PEM CA certificate(s) to trust (default: `CONSUL_CACERT`, else the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (default: `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name to verify the server's certificate against (default: the address's host;
    /// `CONSUL_TLS_SERVER_NAME`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The ACL token (default: `token_file`, else `CONSUL_HTTP_TOKEN`, else
    /// `CONSUL_HTTP_TOKEN_FILE`). Never printed.
    #[serde(default)]
    pub token: Option<Token>,
    /// A file holding the ACL token, read at every (re)connection.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// How long a blocking query waits for a change (default 60 s, at most 600).
    #[serde(default)]
    pub wait: Option<Seconds>,
    /// Read from any server, not only the leader (`stale`).
    #[serde(default)]
    pub stale: bool,
    /// With `stale`: an answer from a server that last heard from the leader longer ago than
    /// this (`X-Consul-LastContact`) is asked again of the leader.
    #[serde(default)]
    pub max_stale: Option<Seconds>,
    /// Dial this tagged address of an instance (`lan`, `wan`, ...) when it has one.
    #[serde(default)]
    pub tagged_address: Option<String>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

fn yes() -> bool {
    true
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            service: None,
            tags: vec![],
            tag: None,
            datacenter: None,
            only_passing: true,
            filter: None,
            address: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            token: None,
            token_file: None,
            wait: None,
            stale: false,
            max_stale: None,
            tagged_address: None,
            label_filters: vec![],
        }
    }
}

impl ConsulConfig {
    /// The blocking queries' `wait`.
    pub fn wait(&self) -> Duration {
        self.wait.map_or(Duration::from_secs_f64(DEFAULT_WAIT), Seconds::duration)
    }

    /// Which instances are routed, and how.
    pub fn selection(&self) -> Selection {
        let mut tags = self.tags.clone();
        tags.extend(self.tag.clone());
        tags.sort();
        tags.dedup();
        Selection { tags, only_passing: self.only_passing, tagged_address: self.tagged_address.clone() }
    }

    /// Where and how to ask, with Consul's environment variables filling what the settings
    /// leave out.
    pub fn endpoint(&self, env: &Env) -> Result<Endpoint, String> {
        let raw = self.address.clone().or_else(|| env.http_addr.clone()).unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
        let base = parse_address(&raw, env.http_ssl)?;
        let token = match (&self.token, &self.token_file, &env.http_token, &env.http_token_file) {
            (Some(t), ..) => TokenFrom::Value(t.clone()),
            (None, Some(f), ..) => TokenFrom::File(f.clone()),
            (None, None, Some(t), _) if !t.is_empty() => TokenFrom::Value(Token::new(t.clone())),
            (None, None, _, Some(f)) if !f.as_os_str().is_empty() => TokenFrom::File(f.clone()),
            _ => TokenFrom::None,
        };
        Ok(Endpoint {
            base,
            ca_file: self.ca_file.clone().or_else(|| env.cacert.clone()),
            cert_file: self.cert_file.clone().or_else(|| env.client_cert.clone()),
            key_file: self.key_file.clone().or_else(|| env.client_key.clone()),
            server_name: self.server_name.clone().or_else(|| env.tls_server_name.clone()),
            token,
        })
    }
}

/// An address as Consul's tools take it: a URL, or `host:port` (HTTPS when `CONSUL_HTTP_SSL`
/// is true).
pub(crate) fn parse_address(raw: &str, ssl: bool) -> Result<reqwest::Url, String> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") { raw.to_owned() } else { format!("{}://{raw}", if ssl { "https" } else { "http" }) };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{raw:?} is not an HTTP address: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw:?}: only http:// and https:// addresses are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) || !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(format!("{raw:?} is not an HTTP address (a host, no credentials, no query)"));
    }
    Ok(url)
}

/// The environment variables Consul's own tools read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub http_addr: Option<String>,
    pub http_ssl: bool,
    pub cacert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub http_token: Option<String>,
    pub http_token_file: Option<PathBuf>,
}

impl Env {
    /// This process's environment (empty values count as unset).
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            http_addr: var("CONSUL_HTTP_ADDR"),
            http_ssl: var("CONSUL_HTTP_SSL").is_some_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "True")),
            cacert: var("CONSUL_CACERT").map(PathBuf::from),
            client_cert: var("CONSUL_CLIENT_CERT").map(PathBuf::from),
            client_key: var("CONSUL_CLIENT_KEY").map(PathBuf::from),
            tls_server_name: var("CONSUL_TLS_SERVER_NAME"),
            http_token: var("CONSUL_HTTP_TOKEN").map(|t| t.trim().to_owned()),
            http_token_file: var("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from),
        }
    }
}

/// Where the ACL token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFrom {
    None,
    Value(Token),
    /// Read at every connection, so a rotated token is picked up.
    File(PathBuf),
}

/// The agent to ask, resolved from the settings and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub base: reqwest::Url,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub token: TokenFrom,
}

impl SourceConfig for ConsulConfig {
    fn method(&self) -> &'static str {
        "consul"
    }

    fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    fn check(&self) -> Vec<SettingsProblem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, m: String| out.push(SettingsProblem::new(key, m));
        if self.service.as_deref().is_some_and(|s| s.trim().is_empty()) {
            bad("service", "must not be empty".into());
        }
        for (i, t) in self.tags.iter().enumerate() {
            if t.is_empty() {
                bad(&format!("tags[{i}]"), "must not be empty".into());
            }
        }
        if self.tag.as_deref().is_some_and(str::is_empty) {
            bad("tag", "must not be empty".into());
        }
        if let Some(a) = &self.address {
            if let Err(e) = parse_address(a, false) {
                bad("address", e);
            }
        }
        if let Some(w) = self.wait {
            if !(1.0..=MAX_WAIT).contains(&w.get()) {
                bad("wait", format!("must be 1 to {MAX_WAIT} seconds (Consul's limit)"));
            }
        }
        if self.max_stale.is_some() && !self.stale {
            bad("max_stale", "only applies with `stale: true`".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bad(if self.cert_file.is_some() { "key_file" } else { "cert_file" }, "`cert_file` and `key_file` go together".into());
        }
        if self.token.is_some() && self.token_file.is_some() {
            bad("token_file", "give either `token` or `token_file`".into());
        }
        if self.tagged_address.as_deref().is_some_and(str::is_empty) {
            bad("tagged_address", "must not be empty".into());
        }
        out
    }

    fn partitions(&self, cx: &Context) -> Vec<Partition> {
        let name = self.service.clone().unwrap_or_else(|| cx.service.to_string());
        let mut settings = self.clone();
        for p in [&mut settings.ca_file, &mut settings.cert_file, &mut settings.key_file, &mut settings.token_file].into_iter().flatten() {
            *p = cx.resolve(p);
        }
        let source = ConsulSource::new(name, Arc::new(settings));
        vec![Partition::single(Box::new(move || source.open()))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(yaml: &str) -> Result<ConsulConfig, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_aliases() {
        let d = parse("{}").unwrap();
        assert!(d.only_passing && !d.stale);
        assert_eq!(d.wait(), Duration::from_secs(60));
        let ep = d.endpoint(&Env::default()).unwrap();
        assert_eq!(ep.base.as_str(), "http://127.0.0.1:8500/");
        assert_eq!(ep.token, TokenFrom::None);
        let d = parse("{tag: primary, tags: [a, primary], dc: eu1}").unwrap();
        assert_eq!(d.selection().tags, ["a", "primary"]);
        assert_eq!(d.datacenter.as_deref(), Some("eu1"));
        assert!(parse("{servicename: x}").unwrap_err().contains("unknown field"));
        assert!(parse("{wait: .inf}").is_err());
    }

    #[test]
    fn the_environment_fills_what_the_settings_leave_out() {
        let env = Env {
            http_addr: Some("consul.internal:8501".into()),
            http_ssl: true,
            cacert: Some("/env/ca.pem".into()),
            http_token: Some("env-secret".into()),
            ..Env::default()
        };
        let ep = parse("{}").unwrap().endpoint(&env).unwrap();
        assert_eq!(ep.base.as_str(), "https://consul.internal:8501/");
        assert_eq!(ep.ca_file.as_deref(), Some(Path::new("/env/ca.pem")));
        assert_eq!(ep.token, TokenFrom::Value(Token::new("env-secret")));
        let ep = parse("{address: 'http://192.0.2.1:8500', token_file: /t, ca_file: /c.pem}").unwrap().endpoint(&env).unwrap();
        assert_eq!(ep.base.as_str(), "http://192.0.2.1:8500/");
        assert_eq!(ep.token, TokenFrom::File("/t".into()));
        assert_eq!(ep.ca_file.as_deref(), Some(Path::new("/c.pem")));
        let file_env = Env { http_token_file: Some("/run/token".into()), ..Env::default() };
        assert_eq!(parse("{}").unwrap().endpoint(&file_env).unwrap().token, TokenFrom::File("/run/token".into()));
        let bad = Env { http_addr: Some("unix:///run/consul.sock".into()), ..Env::default() };
        assert!(parse("{}").unwrap().endpoint(&bad).unwrap_err().contains("only http"));
    }

    #[test]
    fn the_token_never_shows() {
        let d = parse("{token: s3cr3t-token}").unwrap();
        let shown = format!("{d:?} {} {:?}", d.token.as_ref().unwrap(), d.endpoint(&Env::default()).unwrap());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert_eq!(d.token.unwrap().secret(), "s3cr3t-token");
    }

    #[test]
    fn check_finds_what_serde_cannot() {
        let keys = |yaml: &str| parse(yaml).unwrap().check().into_iter().map(|p| p.key).collect::<Vec<_>>();
        assert!(keys("{}").is_empty());
        assert_eq!(keys("{service: '', wait: 0.5, max_stale: 2, cert_file: c}"), ["service", "wait", "max_stale", "key_file"]);
        assert_eq!(keys("{address: 'ftp://x', token: a, token_file: b, tags: ['']}"), ["tags[0]", "address", "token_file"]);
        assert!(keys("{stale: true, max_stale: 5, wait: 600}").is_empty());
    }
}
