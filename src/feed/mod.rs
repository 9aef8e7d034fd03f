//! The feed: notifications and the log become typed events in commit order
//! (`listener`), encoded once (`event`), fanned out (`hub`).

pub mod change;
pub mod event;
pub mod hub;
pub mod listener;
pub mod log;
pub mod pearl;
pub mod subscriber;
