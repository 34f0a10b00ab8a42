//! `diff(old, new)`: what changed between two desired states, and whether HAProxy must reload.

use std::sync::Arc;
use std::collections::BTreeMap;

use crate::desired::{DesiredService, DesiredState, Scope, Sections, Server};
use crate::model::{ServerName, ServiceName};

/// A server whose line changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerChange {
    pub new: Server,
    /// Address, port and weight can change at run time; other options cannot.
    pub options_changed: bool,
}

/// Changes to one service's servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerDiff {
    pub added: Vec<Server>,
    pub removed: Vec<ServerName>,
    pub changed: Vec<ServerChange>,
}

impl ServerDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The orders that turn one desired state into another: removals before additions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New global sections, when they changed.
    pub sections: Option<Sections>,
    pub services_removed: Vec<ServiceName>,
    /// Services that are new or whose shape (frontend, backend lines, order) changed: replaced whole.
    pub services_replaced: Vec<(ServiceName, Arc<DesiredService>)>,
    /// Server changes in services whose shape did not change.
    pub servers: BTreeMap<ServiceName, ServerDiff>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.sections.is_none() && self.services_removed.is_empty() && self.services_replaced.is_empty() && self.servers.is_empty()
    }

    /// Whether HAProxy's structure changed, so that only a reload can apply the plan. Server
    /// membership, addresses and weights alone do not need one.
    pub fn reload_required(&self) -> bool {
        self.sections.is_some()
            || !self.services_removed.is_empty()
            || !self.services_replaced.is_empty()
            || self.servers.values().any(|d| d.changed.iter().any(|c| c.options_changed))
    }

    /// Counts of servers added, removed and changed (for logs).
    pub fn server_counts(&self) -> (usize, usize, usize) {
        self.servers.values().fold((0, 0, 0), |(a, r, c), d| (a + d.added.len(), r + d.removed.len(), c + d.changed.len()))
    }

    /// Apply this plan to `state` (the state it was computed from).
    pub fn apply_to(&self, state: &mut DesiredState) {
        if let Some(s) = &self.sections {
            state.sections = s.clone();
        }
        for name in &self.services_removed {
            state.services.remove(name);
        }
        for (name, svc) in &self.services_replaced {
            state.services.insert(name.clone(), svc.clone());
        }
        for (name, d) in &self.servers {
            let Some(svc) = state.services.get_mut(name) else { continue };
            let svc = Arc::make_mut(svc);
            for r in &d.removed {
                svc.servers.remove(r);
            }
            for s in d.added.iter().chain(d.changed.iter().map(|c| &c.new)) {
                svc.servers.insert(s.name.clone(), s.clone());
            }
        }
    }
}

/// As [`diff`], looking only at the services in `scope` (the others are known to be equal):
/// the cost follows the change, not the fleet.
pub fn diff_scoped(old: &DesiredState, new: &DesiredState, scope: &Scope) -> Plan {
    let Scope::Services(names) = scope else { return diff(old, new) };
    let mut plan = Plan::default();
    for name in names {
        match (old.services.get(name), new.services.get(name)) {
            (Some(_), None) => plan.services_removed.push(name.clone()),
            (None, Some(n)) => plan.services_replaced.push((name.clone(), n.clone())),
            (Some(o), Some(n)) => service_diff(&mut plan, name, o, n),
            (None, None) => {}
        }
    }
    plan
}

fn service_diff(plan: &mut Plan, name: &ServiceName, o: &Arc<DesiredService>, n: &Arc<DesiredService>) {
    if Arc::ptr_eq(o, n) {
        return;
    }
    if o.shape == n.shape {
        let d = diff_servers(&o.servers, &n.servers);
        if !d.is_empty() {
            plan.servers.insert(name.clone(), d);
        }
    } else {
        plan.services_replaced.push((name.clone(), n.clone()));
    }
}

pub fn diff(old: &DesiredState, new: &DesiredState) -> Plan {
    let mut plan = Plan::default();
    if old.sections != new.sections {
        plan.sections = Some(new.sections.clone());
    }
    for name in old.services.keys() {
        if !new.services.contains_key(name) {
            plan.services_removed.push(name.clone());
        }
    }
    for (name, n) in &new.services {
        match old.services.get(name) {
            Some(o) => service_diff(&mut plan, name, o, n),
            None => plan.services_replaced.push((name.clone(), n.clone())),
        }
    }
    plan
}

fn diff_servers(old: &BTreeMap<ServerName, Server>, new: &BTreeMap<ServerName, Server>) -> ServerDiff {
    let mut d = ServerDiff::default();
    for (k, o) in old {
        match new.get(k) {
            None => d.removed.push(k.clone()),
            Some(n) if n != o => d.changed.push(ServerChange { new: n.clone(), options_changed: n.options != o.options }),
            Some(_) => {}
        }
    }
    for (k, n) in new {
        if !old.contains_key(k) {
            d.added.push(n.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{BackendOrder, ServiceShape};
    use crate::model::{BackendName, ConfigLine, Discovered, Host, Port, Weight};
    use crate::store::{Store, StoreOptions, Update};
    use crate::{ServiceSpec, Spec};
    use proptest::prelude::*;

    fn server(name: &str, port: u16, weight: Option<u16>, opt: Option<&str>) -> Server {
        Server {
            name: ServerName::parse(name).unwrap(),
            host: Host::parse("127.0.0.1").unwrap(),
            port: Port::new(port).unwrap(),
            weight: weight.map(|w| Weight::parse(&w.to_string()).unwrap()),
            options: opt.map(|o| ConfigLine::parse(o).unwrap()),
        }
    }

    fn arb_state() -> impl Strategy<Value = DesiredState> {
        let svc = (
            prop::collection::btree_map("[a-e]", (1u16..4, prop::option::of(0u16..3), prop::option::of("check|check inter 1s")), 0..5),
            0u8..3,
            any::<bool>(),
        );
        (prop::collection::btree_map("s[0-3]", svc, 0..4), prop::option::of("maxconn [0-9]")).prop_map(|(svcs, global)| {
            let services = svcs
                .into_iter()
                .map(|(name, (servers, lines, desc))| {
                    let shape = ServiceShape {
                        frontend: None,
                        backend_name: BackendName::parse(&name).unwrap(),
                        backend_lines: (0..lines).map(|i| ConfigLine::parse(&format!("option l{i}")).unwrap()).collect(),
                        order: if desc { BackendOrder::Desc } else { BackendOrder::Asc },
                    };
                    let servers = servers
                        .into_iter()
                        .map(|(n, (p, w, o))| (ServerName::parse(&n).unwrap(), server(&n, p, w, o.as_deref())))
                        .collect();
                    (ServiceName::parse(&name).unwrap(), Arc::new(DesiredService { shape, servers }))
                })
                .collect();
            let sections = Sections { global: global.iter().map(|g| ConfigLine::parse(g).unwrap()).collect(), ..Sections::default() };
            DesiredState { sections, services }
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_target(a in arb_state(), b in arb_state()) {
            let plan = diff(&a, &b);
            let mut x = a.clone();
            plan.apply_to(&mut x);
            prop_assert_eq!(x, b);
        }

        #[test]
        fn diff_with_itself_is_empty(a in arb_state()) {
            prop_assert!(diff(&a, &a).is_empty());
        }

        #[test]
        fn order_within_a_batch_does_not_matter(
            ups in prop::collection::vec(("s[0-2]", "[a-f]", 1u16..5, any::<bool>()), 0..20),
            perm in any::<prop::sample::Index>(),
        ) {
            // One batch touches each (service, server) once; any order gives the same state.
            let mut seen = std::collections::BTreeSet::new();
            let batch: Vec<_> = ups.into_iter().filter(|(s, n, _, _)| seen.insert((s.clone(), n.clone()))).collect();
            let mut shuffled = batch.clone();
            if !shuffled.is_empty() {
                let k = perm.index(shuffled.len());
                shuffled.rotate_left(k);
                shuffled.reverse();
            }
            let run = |batch: &[(String, String, u16, bool)]| {
                let names = ["s0", "s1", "s2"].map(|s| ServiceName::parse(s).unwrap());
                let mut store = Store::new(names.iter().map(|n| (n.clone(), StoreOptions { use_previous_backends: false })));
                for n in &names {
                    store.apply(n, "", Update::Reset(vec![Discovered::new("127.0.0.1", 7).named("c")]));
                }
                for (s, n, p, remove) in batch {
                    let svc = ServiceName::parse(s).unwrap();
                    let u = if *remove { Update::Remove(n.clone()) } else { Update::Upsert(Discovered::new("127.0.0.1", p).named(n)) };
                    store.apply(&svc, "", u);
                }
                let spec = Spec {
                    sections: Sections::default(),
                    services: names.iter().map(|n| (n.clone(), ServiceSpec {
                        frontend: None, backend_name: BackendName::parse(n.as_str()).unwrap(), backend_lines: vec![],
                        server_options: None, default_servers: vec![], keep_default_servers: false,
                        backend_port_override: None, order: BackendOrder::Asc,
                    })).collect(),
                };
                DesiredState::build(&spec, &store)
            };
            prop_assert_eq!(run(&batch), run(&shuffled));
        }

        #[test]
        fn incremental_update_and_scoped_diff_equal_the_full_ones(
            ups in prop::collection::vec(("s[0-3]", "[a-e]", 1u16..4, any::<bool>()), 0..30),
        ) {
            // The daemon updates its desired state service by service and diffs only what
            // changed: the result must be what a full build and a full diff give.
            let names = ["s0", "s1", "s2", "s3"].map(|s| ServiceName::parse(s).unwrap());
            let mut store = Store::new(names.iter().map(|n| (n.clone(), StoreOptions { use_previous_backends: false })));
            let spec = Spec {
                sections: Sections::default(),
                services: names.iter().map(|n| (n.clone(), ServiceSpec {
                    frontend: None, backend_name: BackendName::parse(n.as_str()).unwrap(), backend_lines: vec![],
                    server_options: None, default_servers: vec![], keep_default_servers: false,
                    backend_port_override: None, order: BackendOrder::Asc,
                })).collect(),
            };
            let mut incremental = DesiredState::build(&spec, &store);
            for chunk in ups.chunks(3) {
                let before = incremental.clone();
                let mut scope = Scope::none();
                for (s, n, p, remove) in chunk {
                    let svc = ServiceName::parse(s).unwrap();
                    let u = if *remove { Update::Remove(n.clone()) } else { Update::Upsert(Discovered::new("127.0.0.1", *p).named(n)) };
                    if store.apply(&svc, "", u).changed {
                        scope.add(&svc);
                    }
                }
                incremental.update(&spec, &store, &scope);
                let full = DesiredState::build(&spec, &store);
                prop_assert_eq!(&incremental, &full);
                prop_assert_eq!(diff_scoped(&before, &incremental, &scope), diff(&before, &full));
            }
        }
    }

    #[test]
    fn membership_changes_do_not_need_a_reload_but_shape_changes_do() {
        let mk = |servers: Vec<Server>, lines: usize| {
            let shape = ServiceShape {
                frontend: None,
                backend_name: BackendName::parse("web").unwrap(),
                backend_lines: (0..lines).map(|i| ConfigLine::parse(&format!("option l{i}")).unwrap()).collect(),
                order: BackendOrder::Asc,
            };
            let servers = servers.into_iter().map(|s| (s.name.clone(), s)).collect();
            DesiredState { sections: Sections::default(), services: [(ServiceName::parse("web").unwrap(), Arc::new(DesiredService { shape, servers }))].into() }
        };
        let a = mk(vec![server("a", 1, None, Some("check"))], 0);
        let b = mk(vec![server("a", 1, Some(5), Some("check")), server("b", 2, None, Some("check"))], 0);
        let p = diff(&a, &b);
        assert_eq!(p.server_counts(), (1, 0, 1));
        assert!(!p.reload_required());
        let c = mk(vec![server("a", 1, None, Some("check inter 1s"))], 0);
        assert!(diff(&a, &c).reload_required());
        let d = mk(vec![server("a", 1, None, Some("check"))], 1);
        let p = diff(&a, &d);
        assert!(p.reload_required());
        assert_eq!(p.services_replaced.len(), 1);
    }
}
