//! `announce_as` and each service's `announce`: checked into an [`Announce`] with every
//! problem at its key.

use std::net::IpAddr;
use std::time::Duration;

use myelin_announce::{Check, CheckKind, Owner};
use myelin_watch_docker::DockerAddress;

use super::context::Ctx;
use super::Announce;
use crate::announce::{AnnounceConfig, AnnounceTo, CheckConfig, CheckType};
use crate::position::KeyPath;
use crate::schema::Discovery;

/// A service's `announce` section, or `None` after reporting its problems.
pub(super) fn announce(cx: &mut Ctx, path: &KeyPath, a: &AnnounceConfig, discovery: &Discovery) -> Option<Announce> {
    let before = cx.errors.len();
    let containers = path.key("containers");
    if !a.containers.servers.is_empty() {
        cx.error(
            &containers.key("servers"),
            "a host announces the containers of its own engine only: leave `servers` out (the engine is `socket`, else DOCKER_HOST, else /var/run/docker.sock)",
        );
    }
    for problem in myelin_source::SourceConfig::check(&a.containers) {
        cx.error(&containers.dotted(&problem.key), problem.message);
    }
    let routed = a.containers.address == DockerAddress::Container;
    let address = match (&a.address, routed) {
        (None, false) => {
            cx.error_near(
                &path.key("address"),
                path,
                "required: the address other hosts reach this host's published ports at (or set `containers.address: container` to announce the containers' own addresses)",
            );
            None
        }
        (None, true) => None,
        (Some(_), true) => {
            cx.error(&path.key("address"), "with `containers.address: container` each container's own address is announced: leave `address` out");
            None
        }
        (Some(text), false) => match text.trim().parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                cx.error(&path.key("address"), format!("{ip} is not an address other hosts can reach this host at"));
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                cx.error(&path.key("address"), format!("{text:?} is not an IP address"));
                None
            }
        },
    };
    let check = a.check.as_ref().and_then(|c| check(cx, &path.key("check"), c));
    let to = match &a.to {
        Some(to) => Some(to.clone()),
        None => {
            match AnnounceTo::default_for(discovery) {
                Ok(d) => Some(d),
                Err(why) => {
                    cx.error_near(
                        &path.key("to"),
                        path,
                        format!("required: {why}; say where, e.g. `to: {{method: etcd, endpoints: [http://127.0.0.1:2379], path: /services/NAME}}`"),
                    );
                    None
                }
            }
        }
    };
    if let Some(to) = &to {
        // Problems of a `to` taken from the discovery are reported there already.
        if a.to.is_some() {
            for problem in to.check() {
                cx.error(&path.key("to").dotted(&problem.key), problem.message);
            }
        }
    }
    if cx.errors.len() > before {
        return None;
    }
    Some(Announce { containers: a.containers.clone(), address, check, to: to? })
}

fn check(cx: &mut Ctx, path: &KeyPath, c: &CheckConfig) -> Option<Check> {
    let before = cx.errors.len();
    let seconds = |cx: &mut Ctx, key: &str, v: Option<myelin_source::Seconds>, default: f64, max: f64| {
        let v = v.map_or(default, |s| s.get());
        if !(0.01..=max).contains(&v) {
            cx.error(&path.key(key), format!("{v} is not from 0.01 to {max} seconds"));
        }
        Duration::from_secs_f64(v.clamp(0.01, max))
    };
    let interval = seconds(cx, "interval", c.interval, 1.0, 3600.0);
    let timeout = seconds(cx, "timeout", c.timeout, 1.0, 60.0);
    let count = |cx: &mut Ctx, key: &str, v: Option<myelin_source::Number>| {
        let v = v.map_or(1, |n| n.0);
        if !(1..=100).contains(&v) {
            cx.error(&path.key(key), format!("{v} is not from 1 to 100"));
        }
        u32::try_from(v.clamp(1, 100)).unwrap_or(1)
    };
    let rise = count(cx, "rise", c.rise);
    let fall = count(cx, "fall", c.fall);
    let kind = match (c.kind, &c.path) {
        (CheckType::Tcp, Some(_)) => {
            cx.error(&path.key("path"), "`path` is for `type: http` checks");
            CheckKind::Tcp
        }
        (CheckType::Tcp, None) => CheckKind::Tcp,
        (CheckType::Http, p) => {
            let p = p.clone().unwrap_or_else(|| "/".into());
            if !p.starts_with('/') || p.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                cx.error(&path.key("path"), format!("{p:?} is not a URL path (it starts with `/` and holds no spaces)"));
            }
            CheckKind::Http { path: p }
        }
    };
    (cx.errors.len() == before).then_some(Check { kind, interval, timeout, rise, fall })
}

/// This host's owner: `announce_as`, else the host name.
pub(super) fn owner(cx: &mut Ctx, announce_as: Option<&str>) -> Option<Owner> {
    let at = KeyPath::root().key("announce_as");
    match announce_as {
        Some(name) => Owner::new(name).map_err(|e| cx.error(&at, format!("{name:?} {e}"))).ok(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host = host.trim();
            Owner::new(host)
                .map_err(|e| cx.error(&at, format!("this host's name {host:?} cannot name it in registries ({e}): set `announce_as`")))
                .ok()
        }
    }
}
