//! The model at the centre of myelin, with no I/O.
//!
//! Discovery sources emit [`Update`]s of untrusted [`Discovered`] records; the [`Store`] validates
//! them into [`Backend`]s; [`DesiredState::build`] turns a [`Spec`] (what the config asks for) and
//! the store into the exact state HAProxy should run; [`diff`] says what changed between two
//! desired states and whether that needs a reload.
#![forbid(unsafe_code)]

mod desired;
mod diff;
mod model;
mod store;

pub use desired::{
    BackendOrder, BindAddress, DesiredService, DesiredState, FrontendSpec, RoutedBackend, RoutedList, Scope, Sections, Server, ServiceShape,
    ServiceSpec, Spec,
};
pub use diff::{diff, diff_scoped, Plan, ServerChange, ServerDiff};
pub use model::{
    Backend, BackendName, ConfigLine, Discovered, Host, Ident, InvalidValue, Interner, Port, ServerName,
    ServiceName, Weight,
};
pub use store::{Applied, Rejection, Store, StoreOptions, Update};
