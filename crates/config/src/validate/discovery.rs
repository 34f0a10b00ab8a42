//! `services.<name>.discovery`: what each kind's own check finds, at its key.

use super::context::Ctx;
use crate::position::KeyPath;
use crate::schema::Discovery;

/// Report the problems the kind's [`myelin_source::SourceConfig::check`] finds in its settings.
pub(super) fn check(cx: &mut Ctx, path: &KeyPath, discovery: &Discovery) {
    for problem in discovery.source().check() {
        cx.error(&path.dotted(&problem.key), problem.message);
    }
}

/// `consul_services`: the template of the services made from tagged Consul services.
pub(super) fn consul_services(cx: &mut Ctx, config: &crate::schema::Config) {
    let Some(t) = &config.consul_services else { return };
    let at = || KeyPath::root().key("consul_services");
    if t.tag.trim().is_empty() {
        cx.error(&at().key("tag"), "must not be empty");
    }
    if t.port_tag.is_empty() {
        cx.error(&at().key("port_tag"), "must not be empty");
    }
    if t.discovery.service.is_some() {
        cx.error(&at().key("discovery").key("service"), "each service's own name is used: leave `service` out");
    }
    if t.haproxy.0.port.is_some() {
        cx.error(&at().key("haproxy").key("port"), "the port comes from each service's port tag: leave `port` out");
    }
    for problem in myelin_source::SourceConfig::check(&t.discovery) {
        cx.error(&at().key("discovery").dotted(&problem.key), problem.message);
    }
}
