//! Reading a config file (and `service_conf_dir`) into a [`Loaded`] configuration.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use myelin_watch_consul::catalog::Catalog;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::error::{with_hint, ConfigError, Notice};
use crate::interpolate::interpolate;
use crate::tagged::tagged_services;
use crate::position::{FileIndex, KeyPath, Positions};
use crate::schema::{Config, ServiceConfig};
use crate::validate::{validate, Loaded};

/// The largest config or `service_conf_dir` file read: far above any real configuration, and
/// small enough that a wrong path (`/dev/zero`, a log file) fails at once.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// At most this many errors are returned; one more says how many were left out.
pub(crate) const MAX_ERRORS: usize = 20;

fn error(file: &Path, message: String) -> ConfigError {
    ConfigError { file: file.into(), line: None, column: None, path: String::new(), message }
}

/// Read a whole file of at most [`MAX_FILE_BYTES`], reading no more than that.
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let file = std::fs::File::open(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| error(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(error(path, format!("larger than {} MiB: not a configuration file", MAX_FILE_BYTES / (1024 * 1024))));
    }
    String::from_utf8(bytes).map_err(|e| error(path, format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))
}

/// Load, interpolate, parse and validate a config file. Errors name the file, position and key.
pub fn load(path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let text = read_bounded(path).map_err(|e| vec![e])?;
    load_str(path, &text)
}

/// As [`load`], with the file's text given (`path` names it in messages and anchors relative paths).
pub fn load_str(path: &Path, text: &str) -> Result<Loaded, Vec<ConfigError>> {
    load_str_with(path, text, None)
}

/// As [`load`], with the services `consul_services` makes of `catalog` (the tagged Consul
/// services, see [`crate::tagged_services`]) added; those it leaves out become notices.
pub fn load_with(path: &Path, catalog: Option<&Catalog>) -> Result<Loaded, Vec<ConfigError>> {
    let text = read_bounded(path).map_err(|e| vec![e])?;
    load_str_with(path, &text, catalog)
}

pub(crate) fn load_str_with(path: &Path, text: &str, catalog: Option<&Catalog>) -> Result<Loaded, Vec<ConfigError>> {
    load_all(path, text, catalog).map_err(cap)
}

fn load_all(path: &Path, text: &str, catalog: Option<&Catalog>) -> Result<Loaded, Vec<ConfigError>> {
    let (mut config, index) = parse::<Config>(path, KeyPath::root(), text)?;
    let mut files = vec![index];
    if let Some(given) = &config.service_conf_dir {
        let dir = resolve(path, given);
        // A directory that cannot be read is an error of the key that names it.
        let at = KeyPath::root().key("service_conf_dir");
        let pos = Positions::new(vec![files[0].clone()]).locate(&at).1;
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            vec![ConfigError {
                file: path.into(),
                line: pos.map(|p| p.line),
                column: pos.map(|p| p.column),
                path: at.to_string(),
                // As the operator wrote it (taken from the config file's directory).
                message: format!("cannot read directory {}: {e}", given.display()),
            }]
        })?;
        for (file, name, index, svc) in read_service_dir(entries)? {
            if config.services.contains_key(&name) {
                let at = KeyPath::root().key("services").key(name.as_str());
                let first = Positions::new(vec![files[0].clone()]).locate(&at).1.map_or(String::new(), |p| format!(" (line {})", p.line));
                let here = Positions::new(vec![index]).locate(&at).1;
                return Err(vec![ConfigError {
                    file: file.clone(),
                    line: here.map(|p| p.line),
                    column: here.map(|p| p.column),
                    path: at.to_string(),
                    message: format!("service {name:?} is also defined in {}{first}", path.display()),
                }]);
            }
            config.services.insert(name, svc);
            files.push(index);
        }
    }
    let mut skipped = BTreeMap::new();
    if let (Some(t), Some(catalog)) = (&config.consul_services, catalog) {
        let (made, left_out) = tagged_services(t, catalog, &config.services);
        config.services.extend(made);
        skipped = left_out;
    }
    let mut loaded = validate(path, config, Positions::new(files))?;
    for (name, why) in skipped {
        loaded.notices.push(Notice { file: path.into(), line: None, path: "consul_services".into(), message: format!("Consul service {name:?} is not routed: {why}") });
    }
    Ok(loaded)
}

/// serde's names for what it expected, in an operator's words: `struct ServiceHaproxy` is a
/// mapping, `u64` a whole number.
fn plain_words(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("expected internally tagged enum ", "expected a mapping with a `method`"),
        ("expected struct ", "expected a mapping"),
        ("expected enum ", "expected a name"),
        // serde_yaml_ng's words for a list or mapping where a name (a unit variant) belongs.
        ("expected a YAML tag starting with '!'", "expected a name"),
        // A YAML tag (`!x value`) where an untagged or internally tagged enum is read.
        ("untagged and internally tagged enums do not support enum input", "a tagged value (`!tag`) is not accepted here"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ];
    // serde buffers what an untagged or internally tagged enum (such as `discovery`) reads,
    // and that buffer holds no integer wider than 64 bits.
    for width in ["u128", "i128"] {
        let tail = format!("` as {width}, expected any value");
        if let Some(n) = message.strip_prefix("invalid type: integer `").and_then(|r| r.strip_suffix(tail.as_str())) {
            return format!("{n} is out of range for any setting (write it in quotes if it is text)");
        }
    }
    // "integer `N` as u128, expected a boolean": the width is Rust's business.
    let mut out = message.replace("` as u128,", "`,").replace("` as i128,", "`,");
    for (serde, plain) in WORDS {
        if let Some(i) = out.find(serde) {
            // A type name follows the words that end with a space: it goes too.
            let rest = &out[i + serde.len()..];
            let name = if serde.ends_with(' ') { rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len()) } else { 0 };
            out = format!("{}{plain}{}", &out[..i], &rest[name..]);
        }
    }
    out
}

/// Keep the first [`MAX_ERRORS`] errors, and say how many more there were.
fn cap(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        let file = errors[0].file.clone();
        errors.truncate(MAX_ERRORS);
        errors.push(error(&file, format!("and {more} more error{}", if more == 1 { "" } else { "s" })));
    }
    errors
}

/// A path from the config, taken relative to the config file's directory.
/// `p` taken from the config file's directory, made absolute: a config given as a relative
/// path (`myelin run -c myelin.yaml`) has an empty parent, and HAProxy reads a relative
/// `stats socket` path as an address, not a file.
pub(crate) fn resolve(config_file: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { config_file.parent().unwrap_or(Path::new(".")).join(p) };
    std::path::absolute(&joined).unwrap_or(joined)
}

/// A `service_conf_dir` file: its path, the service's name, its positions and its settings.
type ServiceFile = (PathBuf, String, FileIndex, ServiceConfig);

fn read_service_dir(entries: std::fs::ReadDir) -> Result<Vec<ServiceFile>, Vec<ConfigError>> {
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("json" | "yaml" | "yml")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let text = read_bounded(&file).map_err(|e| vec![e])?;
        let root = KeyPath::root().key("services").key(name.as_str());
        let (svc, index) = parse::<ServiceConfig>(&file, root, &text)?;
        out.push((file, name, index, svc));
    }
    Ok(out)
}

/// Interpolate, index and deserialize. Keys given twice are errors; otherwise the first
/// deserialization error is returned with its position and key path.
fn parse<T: DeserializeOwned>(file: &Path, root: KeyPath, text: &str) -> Result<(T, FileIndex), Vec<ConfigError>> {
    let text = interpolate(text, |k| std::env::var(k).ok()).map_err(|e| {
        vec![ConfigError { file: file.into(), line: Some(e.line), column: Some(e.column), path: String::new(), message: e.message }]
    })?;
    if text.trim().is_empty() {
        return Err(vec![error(file, "the file is empty".into())]);
    }
    // The index keeps the text, to find positions again if an error needs one.
    let text: Arc<str> = text.into();
    let (index, duplicates) = FileIndex::build(file, root.clone(), text.clone());
    if !duplicates.is_empty() {
        return Err(duplicates);
    }
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok((v, index)),
        Err(e) => {
            // The key path serde reached, typed: where the index knows it, its position is
            // exact (serde's own is the enclosing mapping's for tagged and untagged enums).
            let mut at = root.clone();
            for seg in e.path().iter() {
                match seg {
                    Segment::Seq { index } => at = at.index(*index),
                    Segment::Map { key } => at = at.key(key.as_str()),
                    Segment::Enum { .. } => {}
                    Segment::Unknown => break,
                }
            }
            // serde_path_to_error writes `?` for a segment it does not know: the path stops there.
            let mut rel = at.to_string()[root.to_string().len()..].trim_start_matches('.').to_owned();
            let serde_path = e.path().to_string();
            let inner = e.into_inner();
            let mut message = inner.to_string();
            // serde_yaml_ng appends " at line L column C" to the message: the position is shown
            // in front instead.
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            // ...and prefixes its own key path, which is shown once, from serde_path_to_error.
            // Keys may hold spaces (`services."web app"`): the known path first.
            if let Some(rest) = message.strip_prefix(&format!("{serde_path}: ")) {
                message = rest.to_owned();
            } else if let Some((head, rest)) = message.split_once(": ") {
                if !head.contains(' ') && !head.is_empty() {
                    message = rest.to_owned();
                }
            }
            // A discovery kind's settings say the key below `discovery` in the message.
            if let Some((below, rest)) = crate::discovery::split_path(&message) {
                let below = below.split(".?").next().unwrap_or_default().trim_start_matches('?');
                if !below.is_empty() {
                    at = at.dotted(below);
                    rel = format!("{rel}.{below}");
                }
                message = rest.to_owned();
            }
            // An untagged enum's error is its `expecting` text alone ("a whole number").
            if message.starts_with("a ") {
                message = format!("expected {message}");
            }
            let message = plain_words(&message);
            let pos = Positions::new(vec![index]);
            let (line, column) = match (pos.exists(&at), inner.location()) {
                (true, _) | (false, None) => {
                    let p = pos.locate(&at).1;
                    (p.map(|p| p.line), p.map(|p| p.column))
                }
                (false, Some(l)) => (Some(l.line()), Some(l.column())),
            };
            let path = match (root.to_string(), rel.trim_start_matches('.')) {
                (r, "") => r,
                (r, rel) if r.is_empty() => rel.to_owned(),
                (r, rel) => format!("{r}.{rel}"),
            };
            Err(vec![ConfigError { file: file.into(), line, column, path, message: with_hint(&message) }])
        }
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[test]
    fn paths_are_absolute_even_from_a_relative_config_file() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve(Path::new("myelin.yaml"), Path::new("stats.sock")), cwd.join("stats.sock"));
        assert_eq!(resolve(Path::new("etc/myelin.yaml"), Path::new("run/stats.sock")), cwd.join("etc/run/stats.sock"));
        assert_eq!(resolve(Path::new("/etc/myelin/myelin.yaml"), Path::new("/run/a.sock")), Path::new("/run/a.sock"));
        assert_eq!(resolve(Path::new("/etc/myelin/myelin.yaml"), Path::new("a.sock")), Path::new("/etc/myelin/a.sock"));
    }
}
