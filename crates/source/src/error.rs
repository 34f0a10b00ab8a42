use std::fmt;
use std::sync::Arc;

/// The underlying error of a [`SourceError`]: a library's error kept whole (for its own
/// `source()` chain), or a message. Cheap to clone.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(e))
    }

    /// A cause that is only a message.
    pub fn msg(m: impl fmt::Display) -> Self {
        Self(Arc::new(Message(m.to_string())))
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// A problem a source reports. `origin` names what was asked (`docker engine unix:///…`, a
/// file's path, `consul http://…`); the cause is kept with `#[source]`. [`SourceError::report`]
/// gives the whole chain on one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The registry cannot be reached or read (refused, timed out, gone): the service keeps
    /// its backends.
    #[error("{origin} is unreachable")]
    Unreachable { origin: String, #[source] cause: Cause },
    /// The registry answered, but with an error or an answer that cannot be used as a whole
    /// (a status that is not success, a document that does not parse): the service keeps its
    /// backends.
    #[error("{origin}: {what}")]
    Failed { origin: String, what: String, #[source] cause: Option<Cause> },
    /// One record cannot be used; the others are. Counted as a rejected record.
    #[error("{origin}: {entry} rejected")]
    Entry { origin: String, entry: String, #[source] cause: Cause },
}

impl SourceError {
    pub fn unreachable(origin: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unreachable { origin: origin.into(), cause: Cause::new(cause) }
    }

    pub fn failed(origin: impl Into<String>, what: impl Into<String>) -> Self {
        Self::Failed { origin: origin.into(), what: what.into(), cause: None }
    }

    pub fn failed_with(origin: impl Into<String>, what: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed { origin: origin.into(), what: what.into(), cause: Some(Cause::new(cause)) }
    }

    pub fn entry(origin: impl Into<String>, entry: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::Entry { origin: origin.into(), entry: entry.into(), cause: Cause::msg(reason) }
    }

    /// Whether this is one rejected record (rather than a problem of the whole source).
    pub fn is_entry(&self) -> bool {
        matches!(self, Self::Entry { .. })
    }

    /// The message and every cause under it, joined by `: ` (for logs and the status page).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let s = e.to_string();
            if !s.is_empty() && !out.ends_with(&s) {
                out.push_str(": ");
                out.push_str(&s);
            }
            next = e.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connect failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn report_gives_the_whole_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = SourceError::unreachable("consul http://127.0.0.1:8500", Outer(io));
        assert_eq!(e.to_string(), "consul http://127.0.0.1:8500 is unreachable");
        assert_eq!(e.report(), "consul http://127.0.0.1:8500 is unreachable: connect failed: connection refused");
        let f = SourceError::failed("/etc/web.yaml", "malformed");
        assert_eq!(f.report(), "/etc/web.yaml: malformed");
        let r = SourceError::entry("/etc/web.yaml", "entry 3", "`host` and `port` are required");
        assert!(r.is_entry());
        assert_eq!(r.report(), "/etc/web.yaml: entry 3 rejected: `host` and `port` are required");
        // Cloning keeps the chain.
        assert_eq!(e.clone().report(), e.report());
    }
}
