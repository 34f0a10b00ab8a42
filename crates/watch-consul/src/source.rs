//! Blocking queries, and the update stream of one Consul service.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use myelin_core::{Discovered, Update};
use myelin_source::{SourceError, UpdateStream};
use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::payload::{self, Selection};
use crate::client::Agent;
use crate::settings::{ConsulConfig, Endpoint, Env};

/// Requests start at least this far apart, whatever the index does (Consul asks clients of
/// blocking queries to rate-limit).
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// After an answer whose index did not move, the next request starts at least this long after
/// the previous one started: an index that never moves cannot make a hot loop.
const SAME_INDEX_INTERVAL: Duration = Duration::from_secs(1);
/// Added to `wait` + `wait/16` (Consul's jitter) before a blocking query is given up.
const SLACK: Duration = Duration::from_secs(2);
/// How much of an error body is shown.
const BODY_SHOWN: usize = 200;

/// One answer of a blocking query.
#[derive(Debug)]
pub struct Answer {
    pub body: Vec<u8>,
    /// The index answered (`X-Consul-Index`).
    pub index: u64,
}

/// Blocking queries of one endpoint of one agent, following Consul's rules for the index.
/// Its errors name `origin`.
pub struct Query {
    client: reqwest::Client,
    url: reqwest::Url,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    token_from: String,
    origin: String,
    wait: Duration,
    stale: bool,
    max_stale: Option<Duration>,
    /// The index to ask with next (0: answer at once).
    index: u64,
    /// The last answer did not move the index.
    same_index: bool,
    /// The next request must be a consistent read (a stale answer was too old).
    consistent_next: bool,
    last_start: Option<Instant>,
}

impl Query {
    /// A query of `path` (segments, escaped here) with `params`. Reads the token file and the
    /// TLS files now, so a new connection picks up rotated ones.
    pub async fn connect(ep: &Endpoint, path: &[&str], params: Vec<(String, String)>, settings: &ConsulConfig, origin: String) -> Result<Self, SourceError> {
        let agent = Agent::connect(ep, &origin).await?;
        let url = agent.url(path).map_err(|what| SourceError::failed(origin.clone(), what))?;
        let Agent { client, headers, token_from, .. } = agent;
        Ok(Self {
            client,
            url,
            params,
            headers,
            token_from,
            origin,
            wait: settings.wait(),
            stale: settings.stale,
            max_stale: settings.max_stale.map(|s| s.duration()),
            index: 0,
            same_index: false,
            consistent_next: false,
            last_start: None,
        })
    }

    /// The index the next request asks with.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The next answer: at once for the first, then when the index moves past the last one or
    /// `wait` expires.
    pub async fn next(&mut self) -> Result<Answer, SourceError> {
        loop {
            if let Some(t) = self.last_start {
                let gap = if self.same_index { SAME_INDEX_INTERVAL } else { MIN_INTERVAL };
                tokio::time::sleep_until(t + gap).await;
            }
            self.last_start = Some(Instant::now());
            let mut url = self.url.clone();
            {
                let mut q = url.query_pairs_mut();
                for (k, v) in &self.params {
                    q.append_pair(k, v);
                }
                if self.index > 0 {
                    q.append_pair("index", &self.index.to_string());
                    q.append_pair("wait", &format!("{}ms", self.wait.as_millis()));
                }
                if self.stale && !self.consistent_next {
                    q.append_key_only("stale");
                }
            }
            let timeout = self.wait + self.wait / 16 + SLACK;
            let resp = self.client.get(url).headers(self.headers.clone()).timeout(timeout).send().await.map_err(|e| self.unreachable(e, timeout))?;
            let status = resp.status();
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
            let (answered, last_contact) = (header("x-consul-index"), header("x-consul-lastcontact"));
            let body = resp.bytes().await.map_err(|e| self.unreachable(e, timeout))?;
            if status == reqwest::StatusCode::FORBIDDEN {
                return Err(SourceError::failed(&self.origin, format!("Consul refused {} (HTTP 403): {}", self.token_from, shown(&body))));
            }
            if !status.is_success() {
                return Err(SourceError::failed(&self.origin, format!("HTTP {status}: {}", shown(&body))));
            }
            let Some(answered) = answered else {
                return Err(SourceError::failed(&self.origin, "the answer has no X-Consul-Index"));
            };
            if self.stale && !self.consistent_next {
                if let (Some(max), Some(ms)) = (self.max_stale, last_contact) {
                    if Duration::from_millis(ms) > max {
                        debug!(origin = %self.origin, last_contact_ms = ms, "Stale answer too old; asking the leader.");
                        self.consistent_next = true;
                        self.same_index = false;
                        continue;
                    }
                }
            }
            self.consistent_next = false;
            let next = payload::next_index(self.index, answered);
            if next == 0 {
                debug!(origin = %self.origin, was = self.index, answered, "X-Consul-Index went backwards; starting again from 0.");
            }
            self.same_index = next == self.index;
            self.index = next;
            return Ok(Answer { body: body.to_vec(), index: answered });
        }
    }

    fn unreachable(&self, e: reqwest::Error, timeout: Duration) -> SourceError {
        if e.is_timeout() {
            SourceError::failed(&self.origin, format!("no answer within {:.1} s", timeout.as_secs_f64()))
        } else {
            SourceError::unreachable(&self.origin, e.without_url())
        }
    }
}

/// Up to [`BODY_SHOWN`] characters of an error body, on one line, printable only.
fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).take(BODY_SHOWN).collect();
    if text.trim().chars().count() > BODY_SHOWN {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(no message)");
    }
    out
}

/// What the last opening reported, shared by all openings of one source: the same fault at
/// every retry is reported once.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastProblem(Arc<Mutex<Option<String>>>);

impl LastProblem {
    /// Remember this fault; whether it differs from the last one.
    pub(crate) fn is_new(&self, e: &SourceError) -> bool {
        let text = e.report();
        self.0.lock().map(|mut p| p.replace(text.clone()).as_deref() != Some(text.as_str())).unwrap_or(true)
    }

    /// The source answers: forget the fault; whether there was one.
    pub(crate) fn clear(&self) -> bool {
        self.0.lock().map(|mut p| p.take()).ok().flatten().is_some()
    }
}

/// The source of one Consul service. Each [`open`](Self::open) is a new HTTP client and a new
/// series of blocking queries from index 0.
#[derive(Debug, Clone)]
pub struct ConsulSource {
    service: String,
    settings: Arc<ConsulConfig>,
    last_problem: LastProblem,
}

impl ConsulSource {
    pub fn new(service: String, settings: Arc<ConsulConfig>) -> Self {
        Self { service, settings, last_problem: LastProblem::default() }
    }

    /// A `Reset` with the instances, then one whenever they change; it ends after a fault.
    /// Dropping it cancels the query in flight.
    pub fn open(&self) -> UpdateStream {
        let run = Run { src: self.clone(), query: None, origin: String::new(), last: None, last_rejected: vec![], pending: VecDeque::new() };
        Box::pin(futures::stream::unfold(Some(run), |run| async move {
            let mut run = run?;
            loop {
                if let Some(item) = run.pending.pop_front() {
                    return Some((item, Some(run)));
                }
                if let Err(e) = run.step().await {
                    if run.src.last_problem.is_new(&e) {
                        return Some((Err(e), None));
                    }
                    debug!(origin = %run.origin, "Consul still failing the same way.");
                    return None;
                }
            }
        }))
    }

    fn origin(&self, ep: &Endpoint) -> String {
        format!("consul {} service {:?}", ep.base.as_str().trim_end_matches('/'), self.service)
    }

    fn params(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let mut p = Vec::new();
        if s.only_passing {
            p.push(("passing".to_owned(), "true".to_owned()));
        }
        for t in s.selection().tags {
            p.push(("tag".to_owned(), t));
        }
        if let Some(dc) = &s.datacenter {
            p.push(("dc".to_owned(), dc.clone()));
        }
        if let Some(f) = &s.filter {
            p.push(("filter".to_owned(), f.clone()));
        }
        p
    }
}

/// The state of one opening.
struct Run {
    src: ConsulSource,
    query: Option<Query>,
    origin: String,
    last: Option<Vec<Discovered>>,
    last_rejected: Vec<(String, String)>,
    pending: VecDeque<Result<Update, SourceError>>,
}

impl Run {
    /// One answer: queue what it changes.
    async fn step(&mut self) -> Result<(), SourceError> {
        if self.query.is_none() {
            let ep = self.src.settings.endpoint(&Env::from_process()).map_err(|e| SourceError::failed(format!("consul service {:?}", self.src.service), e))?;
            self.origin = self.src.origin(&ep);
            let path = ["v1", "health", "service", self.src.service.as_str()];
            self.query = Some(Query::connect(&ep, &path, self.src.params(), &self.src.settings, self.origin.clone()).await?);
        }
        let query = self.query.as_mut().expect("connected above");
        let answer = query.next().await?;
        let sel: Selection = self.src.settings.selection();
        let found = payload::instances(&answer.body, &sel).map_err(|e| SourceError::failed_with(&self.origin, "malformed answer", e))?;
        if self.last.is_none() && self.src.last_problem.clear() {
            info!(origin = %self.origin, "Consul answers again.");
        }
        if found.rejected != self.last_rejected {
            for (entry, why) in &found.rejected {
                self.pending.push_back(Err(SourceError::entry(&self.origin, entry, why)));
            }
            self.last_rejected = found.rejected;
        }
        if self.last.as_ref() != Some(&found.records) {
            debug!(origin = %self.origin, index = answer.index, instances = found.records.len(), "Consul answered.");
            self.pending.push_back(Ok(Update::Reset(found.records.clone())));
            self.last = Some(found.records);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_shown_short_and_on_one_line() {
        assert_eq!(shown(b"ACL not found\n"), "ACL not found");
        assert_eq!(shown(b"a\nbackend evil"), "a backend evil");
        assert_eq!(shown(b""), "(no message)");
        assert_eq!(shown(&[b'x'; 300]).chars().count(), BODY_SHOWN + 1);
    }
}
