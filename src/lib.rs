//! meterd: a usage-metering daemon.
//!
//! # Layout
//!
//! The request flow is request -> event -> dedupe -> journal -> counters -> flush ->
//! store -> query:
//!
//! - [`app`]: wiring, start-up recovery and shutdown order.
//! - [`config`]: file + environment + flags -> validated [`config::Config`].
//! - [`http`]: hyper server, router (auth, roles, load shield), handlers, error mapping.
//! - [`event`]: parsing and validating native events (exact decimals, per-event errors).
//! - [`ingest`]: the per-request pipeline from parsed events to an acknowledged outcome.
//! - [`dedupe`]: in-flight id claims and the exactly-once rules.
//! - [`journal`]: the seam every writer commits through: a typed [`journal::Batch`],
//!   the [`journal::Journal`] trait (what any implementation must guarantee), and today's
//!   implementation, group commit into the RocksDB WAL ([`journal::WalJournal`]).
//! - [`counters`]: sharded in-memory windows of unflushed usage; [`counters::agg`] what
//!   one event contributes under its lever's aggregation ([`store::agg`] holds the
//!   aggregate values, their encoding and the RocksDB merge operator).
//! - [`flush`]: periodic flush of coalesced deltas into RocksDB, and journal replay.
//! - [`store`]: RocksDB column families, key and record encodings; the typed writes
//!   ([`store::writes`]) and reads ([`store::tables`]) everything outside `store/` and
//!   `journal/` goes through (no column family name appears elsewhere:
//!   `tests/layers.rs` checks).
//! - [`query`]: usage queries over stored rows plus in-memory deltas, the changes feed.
//! - [`corrections`]: adjustments and retractions of stored usage, and their audit log.
//! - [`admin`]: lever, plan, contract and grant writes and listings.
//! - [`ops`]: online backups and the store gauges of `/metrics`.
//! - [`error`]: the domain error ([`error::Error`], a stable [`error::ErrorCode`] and a
//!   detail) that `http::error` maps to responses.
//! - [`quota`]: quota periods (day, week, month, billing period, lifetime) in the
//!   contract's time zone, period usage, grants and the atomic quota decision.
//! - [`revision`]: per-tenant revisions of stored usage rows, the changes feed index.
//! - [`notify`]: the threshold-notification outbox and signed webhook delivery.
//! - [`registry`]: tenants, levers, contracts, API keys and roles.
//! - [`hash`]: the fast seeded hash maps of the hot path.
//! - [`decimal`]: exact fixed-point amounts; [`window`]: window arithmetic and times.
//! - [`telemetry`]: metric names and descriptions, logging set-up.
//! - [`state`]: the shared state handed to handlers.
//! - [`sched`]: the short scheduler slice of the reads thread.
//!
//! How an event travels, the journal seam and the daemon-wide lock order are in
//! `docs/design.md` ("How an event travels", "The journal seam", "Lock order"); every
//! place that holds a lock across a storage write says why there.
//!
//! # Layers
//!
//! Imports go one way, from upper to lower layers (rank in brackets):
//!
//! - [10] `lib.rs`, [`app`] (wiring); `main.rs` is a separate crate above it.
//! - [9] [`http`]: router and handlers (ingest, admin, corrections, balance, queries):
//!   each parses, authorizes, calls one domain function and maps its error.
//! - [8] domain services: [`ingest`], [`query`], [`flush`] (flush and journal replay),
//!   [`corrections`], [`admin`], [`ops`].
//! - [7] [`state`]: the shared handles the services and handlers use.
//! - [6] [`notify`]: the outbox and webhook delivery (handed the store and a webhook
//!   lookup, not the whole state).
//! - [5] [`counters`], [`quota`] (the quota book), [`dedupe`].
//! - [4] [`event`], [`journal`], [`revision`].
//! - [3] [`registry`]: tenants, levers, contracts, grants, API keys.
//! - [2] [`store`]: column families, key and record encodings ([`store::keys`],
//!   [`store::quota_keys`], [`store::records`]), [`store::agg`] (aggregate values and the
//!   merge operator).
//! - [1] [`config`], with the aggregation and role enums it parses.
//! - [0] leaf utilities: [`decimal`], [`hash`], [`window`], [`sched`], [`telemetry`],
//!   [`quota::period`], [`error`] (its `From` impls for store and journal errors sit at
//!   [4]).
//!
//! Modules of one layer may use each other as long as no file-level cycle results. The
//! table is `src/layers.txt` (with an allow-list for known upward edges, empty now);
//! `tests/layers.rs` reads every `crate::` path in `src/**/*.rs` and fails on an upward
//! import that is not allow-listed and on any import cycle between files.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod corrections;
pub mod counters;
pub mod decimal;
pub mod dedupe;
pub mod error;
pub mod event;
pub mod flush;
pub mod hash;
pub mod http;
pub mod ingest;
pub mod journal;
pub mod notify;
pub mod ops;
pub mod query;
pub mod quota;
pub mod registry;
pub mod revision;
pub mod sched;
pub mod state;
pub mod store;
pub mod sync;
pub mod telemetry;
#[cfg(test)]
mod testkit;
pub mod window;
