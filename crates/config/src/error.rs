use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

/// `s` with each control character (line breaks, NUL, terminal escapes) written as its Rust
/// escape (`\n`, `\0`, `\u{1b}`): an error or a notice is one line that cannot forge others or
/// drive a terminal, whatever the keys and values it quotes hold.
pub(crate) fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect())
}

/// A problem with the configuration. Displayed as `file:line:column: key.path: message`, on one
/// line (control characters escaped).
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
            write!(f, ": {}", escape_controls(&self.path))?;
        }
        write!(f, ": {}", escape_controls(&self.message))
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
            write!(f, ": {}", escape_controls(&self.path))?;
        }
        write!(f, ": {}", escape_controls(&self.message))
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
    fn control_characters_are_escaped() {
        // Found by the fuzz suite: a key holding NUL or a line break was printed as it is.
        let e = ConfigError { file: "c.yaml".into(), line: Some(2), column: Some(3), path: "services.a\0b".into(), message: "unknown field `x\n\u{1b}[2Jy`".into() };
        assert_eq!(e.to_string(), "c.yaml:2:3: services.a\\0b: unknown field `x\\n\\u{1b}[2Jy`");
        let n = Notice { file: "c.yaml".into(), line: None, path: "a\rb".into(), message: "é日\t".into() };
        assert_eq!(n.to_string(), "c.yaml: a\\rb: é日\\t");
    }

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
