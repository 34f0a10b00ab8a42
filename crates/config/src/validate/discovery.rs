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
