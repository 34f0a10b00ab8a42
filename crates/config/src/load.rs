//! Reading a config file (and `service_conf_dir`) into a [`Loaded`] configuration.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use std::collections::BTreeMap;

use myelin_watch_consul::catalog::Catalog;

use crate::error::{with_hint, ConfigError, Notice};
use crate::tagged::tagged_services;
use crate::interpolate::interpolate;
use crate::schema::{Config, ServiceConfig};
use crate::validate::{validate, Loaded};

/// Load, interpolate, parse and validate a config file. Errors name the file, position and key.
pub fn load(path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError { file: path.into(), line: None, column: None, path: String::new(), message: format!("cannot read: {e}") }]
    })?;
    load_str(path, &text)
}

/// As [`load`], with the file's text given (`path` names it in messages and anchors relative paths).
pub fn load_str(path: &Path, text: &str) -> Result<Loaded, Vec<ConfigError>> {
    load_str_with(path, text, None)
}

/// As [`load`], with the services `consul_services` makes of `catalog` (the tagged Consul
/// services, see [`crate::tagged_services`]) added; those it leaves out become notices.
pub fn load_with(path: &Path, catalog: Option<&Catalog>) -> Result<Loaded, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError { file: path.into(), line: None, column: None, path: String::new(), message: format!("cannot read: {e}") }]
    })?;
    load_str_with(path, &text, catalog)
}

pub(crate) fn load_str_with(path: &Path, text: &str, catalog: Option<&Catalog>) -> Result<Loaded, Vec<ConfigError>> {
    let (mut config, text) = parse::<Config>(path, text).map_err(|e| vec![e])?;
    let mut sources = vec![(path.to_path_buf(), text)];
    if let Some(dir) = &config.service_conf_dir {
        let dir = resolve(path, dir);
        for (file, name, text, svc) in read_service_dir(&dir).map_err(|e| vec![e])? {
            if config.services.contains_key(&name) {
                return Err(vec![ConfigError {
                    file: file.clone(),
                    line: None,
                    column: None,
                    path: format!("services.{name}"),
                    message: format!("service {name:?} is also defined in {}", path.display()),
                }]);
            }
            config.services.insert(name, svc);
            sources.push((file, text));
        }
    }
    let mut skipped = BTreeMap::new();
    if let (Some(t), Some(catalog)) = (&config.consul_services, catalog) {
        let (made, left_out) = tagged_services(t, catalog, &config.services);
        config.services.extend(made);
        skipped = left_out;
    }
    let mut loaded = validate(path, config, &sources)?;
    for (name, why) in skipped {
        loaded.notices.push(Notice { file: path.into(), line: None, path: "consul_services".into(), message: format!("Consul service {name:?} is not routed: {why}") });
    }
    Ok(loaded)
}

/// A path from the config, taken relative to the config file's directory.
pub(crate) fn resolve(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn read_service_dir(dir: &Path) -> Result<Vec<(PathBuf, String, String, ServiceConfig)>, ConfigError> {
    let err = |message: String| ConfigError { file: dir.into(), line: None, column: None, path: "service_conf_dir".into(), message };
    let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot read directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("json" | "yaml" | "yml")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError { file: file.clone(), line: None, column: None, path: String::new(), message: format!("cannot read: {e}") })?;
        let (svc, text) = parse::<ServiceConfig>(&file, &text)?;
        out.push((file, name, text, svc));
    }
    Ok(out)
}

/// Interpolate and deserialize, keeping the position and key path of the first error.
fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<(T, String), ConfigError> {
    let text = interpolate(text, |k| std::env::var(k).ok()).map_err(|e| ConfigError {
        file: file.into(),
        line: Some(e.line),
        column: Some(e.column),
        path: String::new(),
        message: e.message,
    })?;
    if text.trim().is_empty() {
        return Err(ConfigError { file: file.into(), line: None, column: None, path: String::new(), message: "the file is empty".into() });
    }
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok((v, text)),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let loc = inner.location();
            // serde_yaml_ng appends " at line L column C" to the message: the position is shown
            // in front instead.
            let mut message = inner.to_string();
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            // ...and prefixes its own key path, which is shown once, from serde_path_to_error.
            if let Some((head, rest)) = message.split_once(": ") {
                if !head.contains(' ') && !head.is_empty() {
                    message = rest.to_owned();
                }
            }
            Err(ConfigError {
                file: file.into(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                path,
                message: with_hint(&message),
            })
        }
    }
}
