//! The route decision: how a desired state reaches HAProxy. A pure function of what the driver
//! knows, so that every case is a unit test.

use myelin_core::{DesiredState, Plan};

use crate::ops::{runtime_ops, Op};

/// When the file path reloads HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Whatever the file did (a reload is owed: a runtime API failure, a drift found, a reload
    /// that failed before).
    Always,
    /// When the file was replaced (what runs is unknown, the change is structural, or there is
    /// no runtime API to carry it).
    IfWritten,
    /// Never: the runtime API carries server changes, and nothing else changed.
    Never,
}

/// How to bring HAProxy to the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The desired state is the one HAProxy refused last, and its next check is not due yet:
    /// nothing is tried until then, until it changes, or until the configuration is reloaded.
    Skip,
    /// Runtime API commands (no reload), then the file brought in step.
    Runtime(Vec<Op>),
    /// A validated haproxy.cfg, then a reload as said.
    File(Reload),
}

/// What the route depends on.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// The stats socket is configured and in use (`do_socket`).
    pub runtime: bool,
    /// A reload is owed from before.
    pub reload_pending: bool,
    /// The desired state equals the last one refused, and checking it again is not due yet.
    pub refused: bool,
    /// The plan from what HAProxy runs to the desired state; `None` when what runs is unknown.
    pub plan: Option<&'a Plan>,
    pub desired: &'a DesiredState,
}

/// The route for a situation. A runtime API failure is not an input: the caller then takes
/// [`fallback`].
pub fn route(s: Situation<'_>) -> Route {
    if s.refused {
        return Route::Skip;
    }
    if s.reload_pending {
        return Route::File(Reload::Always);
    }
    let Some(plan) = s.plan else { return Route::File(Reload::IfWritten) };
    if !s.runtime {
        return Route::File(Reload::IfWritten);
    }
    match runtime_ops(plan, s.desired) {
        // Structural: only a reload applies it.
        None => Route::File(Reload::IfWritten),
        Some(ops) if ops.is_empty() => Route::File(Reload::Never),
        Some(ops) => Route::Runtime(ops),
    }
}

/// After the runtime API failed part-way: what runs is uncertain, so the file and a reload.
pub fn fallback() -> Route {
    Route::File(Reload::Always)
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_core::{diff, BackendName, BackendOrder, DesiredService, Host, Port, Server, ServerName, ServiceName, ServiceShape, Weight};

    fn server(name: &str, port: u16, weight: Option<u16>) -> Server {
        Server {
            name: ServerName::parse(name).unwrap(),
            host: Host::parse("127.0.0.1").unwrap(),
            port: Port::new(port).unwrap(),
            weight: weight.map(|w| Weight::parse(&w.to_string()).unwrap()),
            options: None,
        }
    }

    fn state(servers: &[Server], lines: &[&str]) -> DesiredState {
        let shape = ServiceShape {
            frontend: None,
            backend_name: BackendName::parse("web").unwrap(),
            backend_lines: lines.iter().map(|l| myelin_core::ConfigLine::parse(l).unwrap()).collect(),
            order: BackendOrder::Asc,
        };
        let servers = servers.iter().map(|s| (s.name.clone(), s.clone())).collect();
        DesiredState { services: [(ServiceName::parse("web").unwrap(), std::sync::Arc::new(DesiredService { shape, servers }))].into(), ..DesiredState::default() }
    }

    fn situation<'a>(runtime: bool, plan: Option<&'a Plan>, desired: &'a DesiredState) -> Situation<'a> {
        Situation { runtime, reload_pending: false, refused: false, plan, desired }
    }

    #[test]
    fn server_changes_go_through_the_runtime_api() {
        let old = state(&[server("a", 1, None), server("b", 2, None)], &[]);
        let new = state(&[server("a", 1, Some(5)), server("c", 3, None)], &[]);
        let plan = diff(&old, &new);
        let Route::Runtime(ops) = route(situation(true, Some(&plan), &new)) else { panic!() };
        // Removals first (drain), then changes, then additions.
        assert!(matches!(&ops[0], Op::Drain { name, .. } if name.as_str() == "b"));
        assert!(matches!(&ops[1], Op::Update { server, .. } if server.name.as_str() == "a"));
        assert!(matches!(&ops[2], Op::Add { server, .. } if server.name.as_str() == "c"));
    }

    #[test]
    fn without_a_socket_every_change_is_a_file_and_a_reload() {
        let old = state(&[server("a", 1, None)], &[]);
        let new = state(&[server("a", 1, None), server("b", 2, None)], &[]);
        let plan = diff(&old, &new);
        assert_eq!(route(situation(false, Some(&plan), &new)), Route::File(Reload::IfWritten));
    }

    #[test]
    fn structural_changes_reload() {
        let old = state(&[server("a", 1, None)], &[]);
        let new = state(&[server("a", 1, None)], &["balance roundrobin"]);
        let plan = diff(&old, &new);
        assert!(plan.reload_required());
        assert_eq!(route(situation(true, Some(&plan), &new)), Route::File(Reload::IfWritten));
    }

    #[test]
    fn nothing_to_change_installs_without_reloading() {
        let s = state(&[server("a", 1, None)], &[]);
        let plan = diff(&s, &s);
        assert_eq!(route(situation(true, Some(&plan), &s)), Route::File(Reload::Never));
    }

    #[test]
    fn unknown_start_up_state_writes_and_reloads_if_the_file_changes() {
        let s = state(&[server("a", 1, None)], &[]);
        assert_eq!(route(situation(true, None, &s)), Route::File(Reload::IfWritten));
        assert_eq!(route(situation(false, None, &s)), Route::File(Reload::IfWritten));
    }

    #[test]
    fn a_refused_state_is_not_tried_again() {
        let s = state(&[server("a", 1, None)], &[]);
        let plan = diff(&s, &s);
        assert_eq!(route(Situation { refused: true, ..situation(true, Some(&plan), &s) }), Route::Skip);
    }

    #[test]
    fn an_owed_reload_or_a_runtime_failure_reloads_whatever_the_file_does() {
        let old = state(&[server("a", 1, None)], &[]);
        let new = state(&[server("a", 1, None), server("b", 2, None)], &[]);
        let plan = diff(&old, &new);
        assert_eq!(route(Situation { reload_pending: true, ..situation(true, Some(&plan), &new) }), Route::File(Reload::Always));
        assert_eq!(fallback(), Route::File(Reload::Always));
    }
}
