//! Request handlers, one file per API area.

pub mod admin;
pub mod balance;
pub mod changes;
pub mod cloudevents;
pub mod corrections;
pub mod events;
pub mod grants;
pub mod ops;
pub mod usage;
