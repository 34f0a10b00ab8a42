//! `check` and `render`, and what they share with `run`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use myelin_config::Loaded;
use myelin_core::{DesiredState, Store};
use myelin_haproxy::Writer;
use tracing::warn;

/// The configuration (or the haproxy.cfg it gives) is invalid: exit status 2.
#[derive(Debug)]
pub struct ConfigInvalid(pub String);

impl std::fmt::Display for ConfigInvalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigInvalid {}

/// Load a config, printing each error on stderr; warn about every notice.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    load_with(path, None)
}

/// As [`load`], with the services `consul_services` makes of the tagged Consul services.
pub fn load_with(path: &Path, catalog: Option<&myelin_watch_consul::catalog::Catalog>) -> anyhow::Result<Loaded> {
    match myelin_config::load_with(path, catalog) {
        Ok(l) => {
            for n in &l.notices {
                warn!("{n}");
            }
            for (name, svc) in &l.services {
                if !svc.discovery.supported() {
                    warn!(service = %name, method = svc.discovery.method(), "Discovery method not supported yet: the service is written with its default_servers only.");
                }
            }
            Ok(l)
        }
        Err(errors) => {
            let n = errors.len();
            let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
            Err(ConfigInvalid(format!("{text}\n{n} error{} in the configuration", if n == 1 { "" } else { "s" })).into())
        }
    }
}

pub fn writer(l: &Loaded) -> Writer {
    let h = &l.haproxy;
    Writer {
        path: h.config_file_path.clone(),
        do_writes: h.do_writes,
        do_checks: h.do_checks,
        check_command: h.check_command.as_ref().map(|c| c.argv()),
        haproxy_bin: "haproxy".into(),
        timeout: Duration::from_secs(30),
        written: Default::default(),
    }
}

/// How the daemon drives HAProxy, from the `haproxy` section.
pub fn driver_settings(l: &Loaded) -> myelin_haproxy::DriverSettings {
    let h = &l.haproxy;
    myelin_haproxy::DriverSettings {
        writer: writer(l),
        do_reloads: h.do_reloads,
        reload_command: h.reload_command.as_ref().map(|c| c.argv()),
        restart_interval: h.restart_interval,
        restart_jitter: h.restart_jitter,
        socket: h.socket_file_path.clone().filter(|_| h.do_socket),
        master_socket: h.master_socket_path.clone(),
        drain_timeout: h.drain_timeout,
        server_state_file: h.server_state_file.clone(),
        verify_interval: h.verify_interval,
    }
}

fn haproxy_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("haproxy").is_file()))
}

pub async fn check(path: &Path) -> anyhow::Result<()> {
    let loaded = load(path)?;
    let store = Store::new(loaded.services.iter().map(|(n, s)| (n.clone(), s.store)));
    let text = myelin_haproxy::render(&DesiredState::build(&loaded.spec, &store));
    let mut w = writer(&loaded);
    if w.check_command.is_none() && !haproxy_installed() {
        warn!("haproxy is not installed: the rendered haproxy.cfg was not validated");
        println!("{}: configuration is valid (haproxy.cfg not checked)", path.display());
        return Ok(());
    }
    w.do_checks = true;
    let tmp = tempfile::Builder::new().prefix("myelin-check-").suffix(".cfg").tempfile().context("creating a temporary file")?;
    std::fs::write(tmp.path(), &text).context("writing a temporary file")?;
    match w.check(tmp.path()).await {
        Ok(()) => {
            println!("{}: configuration is valid, and HAProxy accepts the haproxy.cfg it gives", path.display());
            Ok(())
        }
        Err(myelin_haproxy::Error::Failed { output, .. }) => {
            Err(ConfigInvalid(format!("HAProxy rejects the haproxy.cfg this configuration gives:\n{output}")).into())
        }
        Err(e) => Err(e).context("validating the rendered haproxy.cfg"),
    }
}

pub async fn render(path: &Path, timeout: f64) -> anyhow::Result<()> {
    let loaded = load(path)?;
    let timeout = Duration::try_from_secs_f64(timeout).context("--timeout must be a non-negative number of seconds")?;
    let mut store = Store::new(loaded.services.iter().map(|(n, s)| (n.clone(), s.store)));
    let mut waits = Vec::new();
    for (name, svc) in &loaded.services {
        for p in svc.discovery.source().partitions(&loaded.source_context(name)) {
            let name = name.clone();
            waits.push(async move { (name, p.name, myelin_watch::first_sync(&p.open, timeout).await) });
        }
    }
    for (name, partition, result) in futures::future::join_all(waits).await {
        match result {
            Ok((update, problems)) => {
                for p in problems {
                    warn!(service = %name, "{}", p.report());
                }
                for r in store.apply(&name, &partition, update).rejected {
                    warn!(service = %name, server = %r.key, "Rejected: {}", r.error);
                }
            }
            Err(e) => warn!(service = %name, "{}: rendered with what is known", e.report()),
        }
    }
    print!("{}", myelin_haproxy::render(&DesiredState::build(&loaded.spec, &store)));
    Ok(())
}

/// Where `myelin status` finds the admin listener: `--admin`, else the config's `admin.bind`.
/// A listener on every address is asked on loopback.
fn admin_address(config: &Path, admin: Option<&str>) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let addr = match admin {
        Some(a) => match a.trim().parse::<u16>() {
            Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            Err(_) => a.trim().parse().with_context(|| format!("--admin {a:?} is not ADDRESS:PORT with an IP address, nor a port"))?,
        },
        None => {
            let loaded = load(config)?;
            loaded.admin.with_context(|| {
                format!("the admin listener is off in {}: add `admin: {{bind: 127.0.0.1:9213}}` and reload myelin, or give --admin", config.display())
            })?
        }
    };
    Ok(match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    })
}

pub async fn status(config: &Path, admin: Option<&str>, json: bool) -> anyhow::Result<()> {
    let addr = admin_address(config, admin)?;
    let snap = tokio::task::spawn_blocking(move || myelin_admin::client::fetch_status(addr, Duration::from_secs(5)))
        .await
        .context("asking the admin listener")?
        .with_context(|| format!("is myelin running with its admin listener on {addr}?"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snap).context("printing the status")?);
    } else {
        print!("{}", myelin_admin::render_table(&snap, std::time::SystemTime::now()));
    }
    Ok(())
}

/// See `myelin configured --help`.
pub fn configured(config: &Path) -> std::process::ExitCode {
    match myelin_config::load(config) {
        Ok(l) if l.services.is_empty() && l.spec.services.is_empty() => {
            eprintln!("{} defines no services: not starting. Edit it, then `systemctl start myelin`.", config.display());
            std::process::ExitCode::from(1)
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}
