//! What HAProxy reports about its servers (`show servers state`, `show stat`), and how it
//! differs from what it should run.

use std::collections::{BTreeMap, BTreeSet};

use myelin_core::{BackendName, DesiredState, Host, Port, Server, ServerName, Weight};

use crate::ops::weight_of;

/// A server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub admin_state: u32,
    pub weight: u16,
}

/// Parse `show servers state` (format version 1).
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = text.lines();
    match lines.next().map(str::trim) {
        Some("1") => {}
        other => return Err(format!("unexpected reply (no format version 1): {:?}", other.unwrap_or(""))),
    }
    let mut out = Vec::new();
    for line in lines {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 19 {
            return Err(format!("short line: {line}"));
        }
        let num = |i: usize| f[i].parse::<u32>().map_err(|_| format!("bad number in: {line}"));
        out.push(ServerState {
            backend: f[1].to_owned(),
            name: f[3].to_owned(),
            addr: f[4].to_owned(),
            admin_state: num(6)?,
            weight: num(7)? as u16,
            port: num(18)? as u16,
        });
    }
    Ok(out)
}

/// Parse `show stat` CSV into current sessions (`scur`) per server.
pub fn parse_stat_sessions(csv: &str) -> Result<BTreeMap<(String, String), u64>, String> {
    let mut lines = csv.lines();
    let header = lines.next().ok_or("empty reply")?;
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let pos = |name: &str| cols.iter().position(|c| *c == name).ok_or(format!("no `{name}` column"));
    let (px, sv, scur) = (pos("pxname")?, pos("svname")?, pos("scur")?);
    let mut out = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() <= scur || f[sv] == "FRONTEND" || f[sv] == "BACKEND" {
            continue;
        }
        out.insert((f[px].to_owned(), f[sv].to_owned()), f[scur].parse().unwrap_or(0));
    }
    Ok(out)
}

/// HAProxy's admin state bit for a forced drain (`set server ... state drain`), which is how
/// myelin takes a removed server out of rotation.
pub const ADMIN_FORCED_DRAIN: u32 = 0x08;

/// Servers `applied` wants that HAProxy holds in a forced drain, myelin not draining them: left
/// over from a myelin killed while it drained (a server removed, then back), or drained by hand.
/// They take no new traffic until set `ready` again. An operator's maintenance is left alone.
pub fn stuck_draining(applied: &DesiredState, observed: &[ServerState], draining: &BTreeSet<(BackendName, ServerName)>) -> Vec<(BackendName, ServerName)> {
    let mut out = Vec::new();
    let by: BTreeMap<(&str, &str), &ServerState> = observed.iter().map(|o| ((o.backend.as_str(), o.name.as_str()), o)).collect();
    for svc in applied.services.values() {
        let be = &svc.shape.backend_name;
        for name in svc.servers.keys() {
            let Some(o) = by.get(&(be.as_str(), name.as_str())) else { continue };
            if o.admin_state & ADMIN_FORCED_DRAIN != 0 && !draining.contains(&(be.clone(), name.clone())) {
                out.push((be.clone(), name.clone()));
            }
        }
    }
    out
}

/// What a drift check found: servers held in a drain nobody runs ([`stuck_draining`]) and the
/// differences from what HAProxy should run ([`drift`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub stuck: Vec<(BackendName, ServerName)>,
    /// Each difference, with the backend it is in.
    pub drift: Vec<(BackendName, String)>,
}

/// Compare what HAProxy reports with `applied`, servers in `draining` excepted: run where the
/// report was read (the blocking pool), so that only the findings reach the daemon loop.
pub fn check(applied: &DesiredState, observed: &[ServerState], draining: &BTreeSet<(BackendName, ServerName)>) -> Findings {
    Findings { stuck: stuck_draining(applied, observed, draining), drift: drift(applied, observed, draining) }
}

/// Admin states of a server in maintenance (forced, inherited, from the configuration, from DNS
/// resolution, from a hostname lookup): not taking traffic, and not counted as running.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;

/// At start-up, `current` (what the haproxy.cfg on disk says HAProxy runs) with the servers
/// HAProxy reports instead: the file lags the runtime API by up to 1–5 s (more while a write
/// that failed waits for its retry), so after a SIGKILL HAProxy can be ahead of it, and a plan
/// from the file would send commands HAProxy refuses ("Already exists", "No such server"). A
/// server keeps the options (and the unset weight) of its line on disk, else of `desired`'s
/// server of that name; servers in maintenance (deleted half-way) count as absent. Backends HAProxy does not list are left as the file says.
pub fn servers_running(mut current: DesiredState, desired: &DesiredState, observed: &[ServerState]) -> DesiredState {
    let mut by_backend: BTreeMap<&str, Vec<&ServerState>> = BTreeMap::new();
    for o in observed {
        by_backend.entry(o.backend.as_str()).or_default().push(o);
    }
    for (service, svc) in current.services.iter_mut() {
        let Some(seen) = by_backend.get(svc.shape.backend_name.as_str()) else { continue };
        let wanted = desired.services.get(service);
        let mut servers = BTreeMap::new();
        for o in seen.iter().filter(|o| o.admin_state & ADMIN_MAINT == 0) {
            let (Ok(name), Ok(host), Ok(port)) = (ServerName::parse(&o.name), Host::parse(&o.addr), Port::new(o.port)) else { continue };
            let base = svc.servers.get(&name).or_else(|| wanted.and_then(|w| w.servers.get(&name)));
            let weight = match base {
                Some(b) if weight_of(b) == o.weight => b.weight,
                _ => Weight::parse(&o.weight.to_string()).ok(),
            };
            let options = base.and_then(|b| b.options.clone());
            servers.insert(name.clone(), Server { name, host, port, weight, options });
        }
        std::sync::Arc::make_mut(svc).servers = servers;
    }
    current
}

/// Differences between what HAProxy runs and `applied` (servers being drained excepted): a
/// description of each, empty when they agree. Only membership, address, port and weight are
/// compared; an operator's maintenance or drain is not undone. `observed` is indexed by backend
/// once, so the cost is linear in the fleet.
pub fn drift(applied: &DesiredState, observed: &[ServerState], draining: &BTreeSet<(BackendName, ServerName)>) -> Vec<(BackendName, String)> {
    let mut by_backend: BTreeMap<&str, BTreeMap<&str, &ServerState>> = BTreeMap::new();
    for o in observed {
        by_backend.entry(o.backend.as_str()).or_default().insert(o.name.as_str(), o);
    }
    let is_draining = |be: &BackendName, name: &str| ServerName::parse(name).is_ok_and(|n| draining.contains(&(be.clone(), n)));
    let mut out = Vec::new();
    let empty = BTreeMap::new();
    for svc in applied.services.values() {
        let backend = &svc.shape.backend_name;
        let be = backend.as_str();
        let seen = by_backend.get(be).unwrap_or(&empty);
        for (name, s) in &svc.servers {
            match seen.get(name.as_str()) {
                None => out.push((backend.clone(), format!("{be}/{name} is missing"))),
                Some(o) => {
                    if o.port != s.port.get() || (s.host.as_str().parse::<std::net::IpAddr>().is_ok() && o.addr != s.host.as_str()) {
                        out.push((backend.clone(), format!("{be}/{name} is at {}:{}, not {}:{}", o.addr, o.port, s.host, s.port)));
                    }
                    if o.weight != weight_of(s) {
                        out.push((backend.clone(), format!("{be}/{name} has weight {}, not {}", o.weight, weight_of(s))));
                    }
                }
            }
        }
        for name in seen.keys() {
            if !svc.servers.keys().any(|k| k.as_str() == *name) && !is_draining(&svc.shape.backend_name, name) {
                out.push((backend.clone(), format!("{be}/{name} should not be there")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;


    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 web 1 a 127.0.0.1 2 0 10 10 2 8 2 0 6 0 0 0 - 19081 - 0 0 - - 0\n3 web 2 b 127.0.0.1 0 1 5 5 1 1 0 0 2 0 0 0 - 19082 - 0 0 - - 0\n\n";

    #[test]
    fn haproxy_ahead_of_the_file_is_what_runs() {
        use myelin_core::{diff, BackendOrder, ConfigLine, DesiredService, ServiceName, ServiceShape};
        let opts = ConfigLine::parse("check inter 1s").ok();
        let server = |n: &str, port: u16, w: Option<u16>| Server {
            name: ServerName::parse(n).unwrap(),
            host: Host::parse("127.0.0.1").unwrap(),
            port: Port::new(port).unwrap(),
            weight: w.map(|w| Weight::parse(&w.to_string()).unwrap()),
            options: opts.clone(),
        };
        let state = |servers: Vec<Server>| {
            let shape = ServiceShape { frontend: None, backend_name: BackendName::parse("web").unwrap(), backend_lines: vec![], order: BackendOrder::Asc };
            let servers = servers.into_iter().map(|s| (s.name.clone(), s)).collect();
            DesiredState { services: [(ServiceName::parse("web").unwrap(), std::sync::Arc::new(DesiredService { shape, servers }))].into(), ..Default::default() }
        };
        // The file says a (weight 1) and b; HAProxy runs a (weight 4 by the runtime API), c
        // (added), b deleted half-way (maintenance); d of another backend is ignored.
        let disk = state(vec![server("a", 1, None), server("b", 2, None)]);
        let desired = state(vec![server("a", 1, Some(4)), server("c", 3, Some(2)), server("e", 5, None)]);
        let st = |be: &str, name: &str, port: u16, admin: u32, weight: u16| ServerState { backend: be.into(), name: name.into(), addr: "127.0.0.1".into(), port, admin_state: admin, weight };
        let observed = [st("web", "a", 1, 0, 4), st("web", "b", 2, 0x01, 1), st("web", "c", 3, 0, 2), st("api", "d", 9, 0, 1)];
        let running = servers_running(disk, &desired, &observed);
        assert_eq!(running.services.values().next().unwrap().servers.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        // Only e is left to do: no command HAProxy would refuse.
        let plan = diff(&running, &desired);
        assert_eq!(plan.server_counts(), (1, 0, 0));
        assert!(!plan.reload_required());
    }

    #[test]
    fn finds_servers_stuck_in_a_drain() {
        use myelin_core::{BackendOrder, DesiredService, Host, Port, Server, ServiceName, ServiceShape};
        let server = |n: &str| Server { name: ServerName::parse(n).unwrap(), host: Host::parse("127.0.0.1").unwrap(), port: Port::new(1).unwrap(), weight: None, options: None };
        let shape = ServiceShape { frontend: None, backend_name: BackendName::parse("web").unwrap(), backend_lines: vec![], order: BackendOrder::Asc };
        let servers = ["a", "b", "c"].map(server).into_iter().map(|s| (s.name.clone(), s)).collect();
        let applied = DesiredState { services: [(ServiceName::parse("web").unwrap(), std::sync::Arc::new(DesiredService { shape, servers }))].into(), ..Default::default() };
        let st = |n: &str, admin: u32| ServerState { backend: "web".into(), name: n.into(), addr: "127.0.0.1".into(), port: 1, admin_state: admin, weight: 1 };
        // a: drained and wanted; b: in maintenance (an operator's); c: drained, but myelin drains it.
        let observed = [st("a", 8), st("b", 1), st("c", 8), st("gone", 8)];
        let draining = [(BackendName::parse("web").unwrap(), ServerName::parse("c").unwrap())].into();
        let stuck = stuck_draining(&applied, &observed, &draining);
        assert_eq!(stuck.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn each_difference_names_its_backend() {
        use myelin_core::{BackendOrder, DesiredService, Host, Port, Server, ServiceName, ServiceShape};
        let server = |n: &str, w: Option<u16>| Server {
            name: ServerName::parse(n).unwrap(),
            host: Host::parse("127.0.0.1").unwrap(),
            port: Port::new(1).unwrap(),
            weight: w.map(|w| Weight::parse(&w.to_string()).unwrap()),
            options: None,
        };
        let service = |backend: &str, servers: Vec<Server>| {
            let shape = ServiceShape { frontend: None, backend_name: BackendName::parse(backend).unwrap(), backend_lines: vec![], order: BackendOrder::Asc };
            let servers = servers.into_iter().map(|s| (s.name.clone(), s)).collect();
            (ServiceName::parse(&format!("svc-{backend}")).unwrap(), std::sync::Arc::new(DesiredService { shape, servers }))
        };
        let applied = DesiredState {
            services: [service("web", vec![server("a", None), server("b", None)]), service("api", vec![server("c", Some(3)), server("d", None)])].into(),
            ..Default::default()
        };
        let st = |be: &str, n: &str, port: u16, weight: u16| ServerState { backend: be.into(), name: n.into(), addr: "127.0.0.1".into(), port, admin_state: 0, weight };
        // web: a missing, x not wanted; api: c at another port with another weight; b, d right.
        let observed = [st("web", "b", 1, 1), st("web", "x", 1, 1), st("api", "c", 2, 1), st("api", "d", 1, 1)];
        let found = drift(&applied, &observed, &BTreeSet::new());
        let tagged: Vec<(&str, &str)> = found.iter().map(|(b, d)| (b.as_str(), d.as_str())).collect();
        assert_eq!(
            tagged,
            [
                ("api", "api/c is at 127.0.0.1:2, not 127.0.0.1:1"),
                ("api", "api/c has weight 1, not 3"),
                ("web", "web/a is missing"),
                ("web", "web/x should not be there"),
            ]
        );
    }

    #[test]
    fn parses_servers_state() {
        let s = parse_servers_state(STATE).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].name.as_str(), s[0].port, s[0].weight, s[0].admin_state), ("a", 19081, 10, 0));
        assert_eq!((s[1].name.as_str(), s[1].admin_state), ("b", 1));
        assert!(parse_servers_state("Unknown command.\n").is_err());
    }


    #[test]
    fn parses_stat_sessions() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax\nweb,FRONTEND,,,3,5\nweb,a,0,0,2,4\nweb,b,0,0,0,1\nweb,BACKEND,0,0,2,5\n";
        let s = parse_stat_sessions(csv).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[&("web".to_string(), "a".to_string())], 2);
    }
}
