//! The supervisor that runs discovery sources (see `myelin-source` for the contract).
//!
//! One [`supervise`] task per service and partition opens the partition's source, forwards what
//! it says to the store's owner (a partition whose set is fixed needs no task: [`fixed`] is
//! what it says), and reopens it with capped exponential backoff and jitter when
//! its stream ends. Whatever comes before the first `Reset` of an opening is dropped, so after
//! every reconnect the store sees a complete set first. Every event carries the generation of
//! the watcher that sent it, so the daemon can drop what a replaced watcher sent late.
#![forbid(unsafe_code)]

mod supervisor;

pub use supervisor::{backoff, first_sync, fixed, supervise, Event, EventKind};
