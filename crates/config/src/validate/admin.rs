//! myelin's own outputs and listeners: `admin`, `file_output`, and Synapse's `statsd` (read,
//! not supported yet, but its numbers are still checked).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use myelin_core::Port;

use super::context::Ctx;
use crate::load::resolve;
use crate::position::KeyPath;
use crate::schema::{AdminBind, Config};

/// `admin.bind`, when the admin listener is on.
pub(super) fn admin(cx: &mut Ctx, config: &Config) -> Option<SocketAddr> {
    config.admin.as_ref().and_then(|a| match admin_bind(&a.bind) {
        Ok(addr) => Some(addr),
        Err(e) => {
            cx.error(&KeyPath::root().key("admin").key("bind"), e);
            None
        }
    })
}

/// `file_output.output_directory`, taken from the config file's directory.
pub(super) fn file_output(cx: &mut Ctx, file: &Path, config: &Config) -> Option<PathBuf> {
    let f = config.file_output.as_ref()?;
    if f.output_directory.as_os_str().is_empty() {
        cx.error(&KeyPath::root().key("file_output").key("output_directory"), "must not be empty");
    }
    Some(resolve(file, &f.output_directory))
}

/// `statsd`: not supported yet, said once; numbers that could never work are still errors.
pub(super) fn statsd(cx: &mut Ctx, config: &Config) {
    let Some(s) = &config.statsd else { return };
    let path = KeyPath::root().key("statsd");
    cx.not_supported(&path, "statsd");
    if let Some(p) = s.port {
        if let Err(e) = Port::parse(&p.0.to_string()) {
            cx.error(&path.key("port"), e.to_string());
        }
    }
    for (k, v) in &s.sample_rate {
        if !(v.is_finite() && (0.0..=1.0).contains(v)) {
            cx.error(&path.key("sample_rate").key(k.as_str()), "must be a fraction from 0 to 1");
        }
    }
}

/// `admin.bind`: a port alone means 127.0.0.1, so nothing is exposed by accident.
fn admin_bind(b: &AdminBind) -> Result<SocketAddr, String> {
    let port = |n: u64| u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("port {n} is not from 1 to 65535"));
    match b {
        AdminBind::Port(n) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port(*n)?)),
        AdminBind::Text(t) => {
            let t = t.trim();
            if let Ok(n) = t.parse::<u64>() {
                return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port(n)?));
            }
            let addr: SocketAddr =
                t.parse().map_err(|_| format!("{t:?} is not ADDRESS:PORT with an IP address (e.g. 127.0.0.1:9213 or [::1]:9213), nor a port"))?;
            port(u64::from(addr.port()))?;
            Ok(addr)
        }
    }
}
