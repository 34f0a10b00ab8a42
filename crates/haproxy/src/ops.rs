//! Turning a plan into runtime API operations.

use myelin_core::{BackendName, DesiredState, Plan, Server, ServerName};

/// One change to make through the runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new server: `add server`, then ready (and health checks on when it has `check`).
    Add { backend: BackendName, server: Server },
    /// Address, port or weight changed.
    Update { backend: BackendName, server: Server },
    /// Gone: no new connections; deleted once idle or after the drain timeout.
    Drain { backend: BackendName, name: ServerName },
}

impl Op {
    pub fn backend(&self) -> &BackendName {
        match self {
            Op::Add { backend, .. } | Op::Update { backend, .. } | Op::Drain { backend, .. } => backend,
        }
    }
}

/// The runtime operations that carry out `plan` (computed towards `desired`), or `None` when the
/// plan needs a reload. Removals come first.
pub fn runtime_ops(plan: &Plan, desired: &DesiredState) -> Option<Vec<Op>> {
    if plan.reload_required() {
        return None;
    }
    let mut ops = Vec::new();
    for (svc, d) in &plan.servers {
        let backend = desired.services.get(svc)?.shape.backend_name.clone();
        ops.extend(d.removed.iter().map(|name| Op::Drain { backend: backend.clone(), name: name.clone() }));
    }
    for (svc, d) in &plan.servers {
        let backend = desired.services.get(svc)?.shape.backend_name.clone();
        ops.extend(d.changed.iter().map(|c| Op::Update { backend: backend.clone(), server: c.new.clone() }));
        ops.extend(d.added.iter().map(|s| Op::Add { backend: backend.clone(), server: s.clone() }));
    }
    Some(ops)
}

pub(crate) fn weight_of(s: &Server) -> u16 {
    s.weight.map_or(1, |w| w.get())
}
