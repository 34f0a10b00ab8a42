//! Services by tag: every Consul service that carries a tag becomes a myelin service, without
//! a config change. [`CatalogSource`] follows `/v1/catalog/services` with blocking queries and
//! yields the set of tagged services whenever it changes; [`frontends`] says which port each
//! one's frontend listens on, from a tag of the form `<prefix><port>` (default prefix
//! `myelin-port=`), since the catalog lists each service's tags (the union over its
//! instances) in one answer. The rest of each service's settings come from a template in the
//! config (`consul_services` in myelin-config).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use myelin_source::SourceError;
use tracing::{debug, info};

use crate::payload;
use crate::settings::{ConsulConfig, Env};
use crate::source::{LastProblem, Query};

/// The default prefix of the tag that gives a service's frontend port: `myelin-port=8080`.
pub const DEFAULT_PORT_TAG: &str = "myelin-port=";

/// Tagged service name → its tags (the union over its instances).
pub type Catalog = BTreeMap<String, Vec<String>>;

pub type CatalogStream = Pin<Box<dyn Stream<Item = Result<Catalog, SourceError>> + Send>>;

/// Each tagged service's frontend port, or why it has none: no `<prefix><port>` tag, several
/// that disagree, or one that is not a port.
pub fn frontends(catalog: &Catalog, prefix: &str) -> BTreeMap<String, Result<u16, String>> {
    catalog
        .iter()
        .map(|(name, tags)| {
            let mut ports: Vec<&str> = tags.iter().filter_map(|t| t.strip_prefix(prefix)).collect();
            ports.sort_unstable();
            ports.dedup();
            let port = match ports.as_slice() {
                [] => Err(format!("no `{prefix}<port>` tag")),
                [one] => one.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("tag `{prefix}{one}`: not a port (1 to 65535)")),
                many => Err(format!("instances disagree on the port: {}", many.iter().map(|p| format!("`{prefix}{p}`")).collect::<Vec<_>>().join(", "))),
            };
            (name.clone(), port)
        })
        .collect()
}

/// The Consul services that carry a tag, followed with blocking queries. Like
/// [`ConsulSource`](crate::ConsulSource), a fault is yielded once and ends the stream; the
/// caller reopens it with backoff and keeps the services it has meanwhile.
#[derive(Debug, Clone)]
pub struct CatalogSource {
    settings: Arc<ConsulConfig>,
    tag: String,
    last_problem: LastProblem,
}

impl CatalogSource {
    /// `settings` give the agent, token, TLS, `datacenter`, `wait` and `stale` (its `service`
    /// and instance selection are not used here).
    pub fn new(settings: ConsulConfig, tag: impl Into<String>) -> Self {
        Self { settings: Arc::new(settings), tag: tag.into(), last_problem: LastProblem::default() }
    }

    /// The tagged services now, then whenever the set or their tags change.
    pub fn open(&self) -> CatalogStream {
        struct Run {
            src: CatalogSource,
            query: Option<Query>,
            origin: String,
            last: Option<Catalog>,
        }
        let run = Run { src: self.clone(), query: None, origin: String::new(), last: None };
        Box::pin(futures::stream::unfold(Some(run), |run| async move {
            let mut run = run?;
            loop {
                let step = async {
                    if run.query.is_none() {
                        let ep = run.src.settings.endpoint(&Env::from_process()).map_err(|e| SourceError::failed("consul catalog", e))?;
                        run.origin = format!("consul {} services tagged {:?}", ep.base.as_str().trim_end_matches('/'), run.src.tag);
                        let params = run.src.settings.datacenter.iter().map(|dc| ("dc".to_owned(), dc.clone())).collect();
                        run.query = Some(Query::connect(&ep, &["v1", "catalog", "services"], params, &run.src.settings, run.origin.clone()).await?);
                    }
                    let answer = run.query.as_mut().expect("connected above").next().await?;
                    payload::services_with_tag(&answer.body, &run.src.tag).map_err(|e| SourceError::failed_with(&run.origin, "malformed answer", e))
                };
                match step.await {
                    Ok(found) => {
                        if run.last.is_none() && run.src.last_problem.clear() {
                            info!(origin = %run.origin, "Consul answers again.");
                        }
                        if run.last.as_ref() != Some(&found) {
                            debug!(origin = %run.origin, services = found.len(), "Tagged services.");
                            run.last = Some(found.clone());
                            return Some((Ok(found), Some(run)));
                        }
                    }
                    Err(e) => {
                        if run.src.last_problem.is_new(&e) {
                            return Some((Err(e), None));
                        }
                        return None;
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_ports_come_from_a_tag() {
        let catalog: Catalog = [
            ("api", vec!["myelin", "myelin-port=8081"]),
            ("same-twice", vec!["myelin", "myelin-port=8082", "myelin-port=8082"]),
            ("none", vec!["myelin"]),
            ("two", vec!["myelin", "myelin-port=1", "myelin-port=2"]),
            ("bad", vec!["myelin", "myelin-port=99999"]),
            ("zero", vec!["myelin", "myelin-port=0"]),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t.into_iter().map(String::from).collect()))
        .collect();
        let f = frontends(&catalog, DEFAULT_PORT_TAG);
        assert_eq!(f["api"], Ok(8081));
        assert_eq!(f["same-twice"], Ok(8082));
        assert!(f["none"].as_ref().unwrap_err().contains("no `myelin-port=<port>` tag"));
        assert!(f["two"].as_ref().unwrap_err().contains("disagree"));
        assert!(f["bad"].is_err() && f["zero"].is_err());
    }
}
