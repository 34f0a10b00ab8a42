//! myelin's configuration: the keys of Airbnb Synapse's `synapse.json.conf` (so existing configs
//! keep working), read from YAML or JSON, with `${VAR}` interpolation, clear errors that name the
//! file, line, column and key path, and validation into the [`myelin_core::Spec`] HAProxy needs.
#![forbid(unsafe_code)]

mod announce;
mod discovery;
mod error;
mod interpolate;
mod load;
mod placement;
mod position;
mod schema;
mod tagged;
mod validate;

pub use announce::{AnnounceConfig, AnnounceTo, CheckConfig, CheckType};
pub use error::{ConfigError, Notice};
pub use load::{load, load_str, load_with};
pub use tagged::{tagged_services, ConsulServicesConfig, TemplateHaproxy};
pub use schema::*;
pub use validate::{Announce, Command, HaproxySettings, Loaded, ServiceRuntime};

#[cfg(test)]
mod tests;
