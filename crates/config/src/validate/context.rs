//! What validation carries along: the positions of every key, the errors and notices found, and
//! the text the backends of this load share.

use std::path::PathBuf;

use myelin_core::{ConfigLine, Interner};

use crate::error::{ConfigError, Notice};
use crate::position::{KeyPath, Pos, Positions};
use crate::schema::Lines;

/// Keywords HAProxy 2.x no longer accepts, and what replaces them.
const LEGACY: &[(&str, &str)] = &[("contimeout", "timeout connect"), ("clitimeout", "timeout client"), ("srvtimeout", "timeout server")];

pub(super) struct Ctx {
    pub positions: Positions,
    pub errors: Vec<ConfigError>,
    pub notices: Vec<Notice>,
    /// The `default_servers` of every service share equal hosts and names.
    pub interner: Interner,
}

impl Ctx {
    pub fn new(positions: Positions) -> Self {
        Self { positions, errors: Vec::new(), notices: Vec::new(), interner: Interner::default() }
    }

    /// The file and position of `path`'s node, or of its nearest ancestor in the file.
    fn locate(&self, path: &KeyPath) -> (PathBuf, Option<Pos>) {
        self.positions.locate(path)
    }

    pub fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        let (file, pos) = self.locate(path);
        self.errors.push(ConfigError {
            file,
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// An error about `path` (a key that may be missing), shown at `near` when `path` is not
    /// in the file (e.g. a required key, at the key that requires it).
    pub fn error_near(&mut self, path: &KeyPath, near: &KeyPath, message: impl Into<String>) {
        let before = self.errors.len();
        self.error(if self.positions.exists(path) || !self.positions.exists(near) { path } else { near }, message);
        self.errors[before].path = path.to_string();
    }

    pub fn notice(&mut self, path: &KeyPath, message: impl Into<String>) {
        let (file, pos) = self.locate(path);
        self.notices.push(Notice { file, line: pos.map(|p| p.line), path: path.to_string(), message: message.into() });
    }

    /// A key myelin reads but does not act on yet.
    pub fn not_supported(&mut self, path: &KeyPath, key: &str) {
        self.notice(path, format!("`{key}` is read but not supported yet; it has no effect"));
    }

    /// Validate lines, translating keywords HAProxy 2.x no longer accepts.
    pub fn lines(&mut self, path: &KeyPath, lines: &Lines) -> Vec<ConfigLine> {
        let mut out = Vec::new();
        for (i, raw) in lines.0.iter().enumerate() {
            let p = path.index(i);
            let mut line = match ConfigLine::parse(raw) {
                Ok(l) => l,
                Err(e) => {
                    self.error(&p, e.to_string());
                    continue;
                }
            };
            if let Some((old, new)) = LEGACY.iter().find(|(old, _)| line.keyword() == *old) {
                let rest = line.as_str()[old.len()..].trim_start();
                let translated = ConfigLine::parse(&format!("{new} {rest}")).expect("a valid line stays valid");
                self.notice(&p, format!("`{line}` is not accepted by HAProxy 2.x; writing `{translated}` instead"));
                line = translated;
            }
            out.push(line);
        }
        out
    }
}
