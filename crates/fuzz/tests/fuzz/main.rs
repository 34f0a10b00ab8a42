//! myelin's fuzz targets (see the crate's doc). Each module is one target; each property is
//! "any input gives a clear error, or a result that is safe to use", never a panic.

mod config;
mod docker;
mod registries;
mod file;
mod render;
