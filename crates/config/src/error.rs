use std::fmt;
use std::path::PathBuf;

/// A problem with the configuration. Displayed as `file:line:column: key.path: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the key, e.g. `services.web.haproxy.port`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Something worth telling the operator that does not stop the config from loading: a legacy
/// keyword that was translated, or a key that is read but not supported yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Add a "did you mean" hint to serde's `unknown field`/`unknown variant` messages.
pub(crate) fn with_hint(message: &str) -> String {
    for kind in ["unknown field `", "unknown variant `"] {
        let Some(rest) = message.strip_prefix(kind) else { continue };
        let Some((unknown, tail)) = rest.split_once('`') else { continue };
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let best = expected
            .iter()
            .map(|e| (strsim::jaro_winkler(unknown, e), *e))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, e)) = best {
            return format!("{message} (did you mean `{e}`?)");
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints() {
        assert_eq!(
            with_hint("unknown field `prot`, expected one of `port`, `bind_address`"),
            "unknown field `prot`, expected one of `port`, `bind_address` (did you mean `port`?)"
        );
        assert_eq!(with_hint("unknown field `zzzz`, expected `port`"), "unknown field `zzzz`, expected `port`");
        assert!(with_hint("unknown variant `dockr`, expected one of `static`, `docker`").ends_with("(did you mean `docker`?)"));
    }
}
