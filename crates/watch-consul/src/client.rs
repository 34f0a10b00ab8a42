//! An HTTP client for one Consul agent: the ACL token header and TLS (CA, client certificate,
//! server name) from an [`Endpoint`]. Shared by the watchers' blocking queries and the
//! announcer's agent calls, so both speak to Consul the same way.

use std::time::Duration;

use myelin_source::SourceError;
use reqwest::header::{HeaderMap, HeaderValue};

use crate::settings::{Endpoint, TokenFrom};

/// Connecting to the agent.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one agent, made from an [`Endpoint`] at one (re)connection.
pub(crate) struct Agent {
    pub(crate) client: reqwest::Client,
    /// The address asked (its host is `server_name` when that is set, resolved to the
    /// address's own).
    base: reqwest::Url,
    /// The `X-Consul-Token` header (marked sensitive), when there is a token.
    pub(crate) headers: HeaderMap,
    /// Where the token came from, for a 403's message (never the token).
    pub(crate) token_from: String,
}

impl Agent {
    /// Reads the token file and the TLS files now, so a new connection picks up rotated ones.
    /// Errors name `origin`.
    pub(crate) async fn connect(ep: &Endpoint, origin: &str) -> Result<Self, SourceError> {
        let failed = |what: String| SourceError::failed(origin, what);
        let mut headers = HeaderMap::new();
        let token_from = match &ep.token {
            TokenFrom::None => "no ACL token".to_owned(),
            TokenFrom::Value(_) => "the ACL token from the config or CONSUL_HTTP_TOKEN".to_owned(),
            TokenFrom::File(p) => format!("the ACL token in {}", p.display()),
        };
        let secret = match &ep.token {
            TokenFrom::None => None,
            TokenFrom::Value(t) => Some(t.secret().to_owned()),
            TokenFrom::File(p) => {
                let text = tokio::fs::read_to_string(p).await.map_err(|e| SourceError::failed_with(origin, format!("cannot read the token file {}", p.display()), e))?;
                Some(text.trim().to_owned())
            }
        };
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            let mut v = HeaderValue::from_str(&secret).map_err(|_| failed(format!("{token_from} is not a valid header value")))?;
            v.set_sensitive(true);
            headers.insert("x-consul-token", v);
        }
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).use_rustls_tls();
        let mut base = ep.base.clone();
        if let Some(ca) = &ep.ca_file {
            let pem = tokio::fs::read(ca).await.map_err(|e| SourceError::failed_with(origin, format!("cannot read {}", ca.display()), e))?;
            let no_ca = || format!("no CA certificate in {}", ca.display());
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SourceError::failed_with(origin, no_ca(), e))?;
            if certs.is_empty() {
                return Err(failed(no_ca()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&ep.cert_file, &ep.key_file) {
            let mut pem = tokio::fs::read(cert).await.map_err(|e| SourceError::failed_with(origin, format!("cannot read {}", cert.display()), e))?;
            pem.push(b'\n');
            pem.extend(tokio::fs::read(key).await.map_err(|e| SourceError::failed_with(origin, format!("cannot read {}", key.display()), e))?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| SourceError::failed_with(origin, format!("no client certificate and key in {} and {}", cert.display(), key.display()), e))?;
            builder = builder.identity(id);
        }
        if let Some(name) = ep.server_name.as_deref().filter(|n| ep.base.scheme() == "https" && Some(*n) != ep.base.host_str()) {
            // reqwest verifies the certificate against the URL's host: ask for `name` and
            // resolve it to the address's own.
            let host = ep.base.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = ep.base.port_or_known_default().unwrap_or(443);
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port)).await.map_err(|e| SourceError::unreachable(origin, e))?.collect();
            builder = builder.resolve_to_addrs(name, &addrs);
            base.set_host(Some(name)).map_err(|e| failed(format!("server_name {name:?}: {e}")))?;
        }
        let client = builder.build().map_err(|e| SourceError::failed_with(origin, "cannot set up the HTTP client", e))?;
        Ok(Self { client, base, headers, token_from })
    }

    /// The URL of an API path, given as segments (each escaped here).
    pub(crate) fn url(&self, path: &[&str]) -> Result<reqwest::Url, String> {
        let mut url = self.base.clone();
        url.path_segments_mut().map_err(|()| "the address cannot have a path".to_owned())?.pop_if_empty().extend(path);
        Ok(url)
    }
}
