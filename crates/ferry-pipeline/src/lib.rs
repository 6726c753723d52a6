//! The logic of ferry's processes; the binaries only parse their arguments and call [`run`] here.
//!
//! Layout:
//! - [`common`]: shared pieces: the stage statistics and the task that reports them to the
//!   coordinator, assignments, logging, shutdown signals, backoff.
//! - [`reader`]: a replica of the source leader; frames the RDB and command stream and
//!   streams it to the decoder; sends `REPLCONF ACK` with the offset the target applied.
//! - [`spool`]: the reader's memory-then-disk queue, so it never stops reading the source.
//! - [`decoder`]: the `Decoder` gRPC service: RDB bytes and commands in, RESP batches for the
//!   target out ([`convert`] turns RDB entries into `RESTORE`s or chunked commands).
//! - [`filter`]: the `[filter]` rules the decoder applies to the full copy and the command
//!   stream (keys, dbs, commands), and db remapping.
//! - [`writer`]: the `Writer` gRPC service: applies batches to the target, pipelined, and
//!   acknowledges the source offsets it made durable.
//! - [`stale`]: after a re-copy, the target's keys the source no longer holds are removed.
//! - [`cluster_writer`]: the writer's routing for a Redis Cluster target (slots, MOVED/ASK,
//!   one checkpoint per master).
//! - [`coordinator`]: assignments, the status API (`/status`, `/metrics`, `/healthz`).
//! - [`role`]: the role-swap state machine (forward, fenced, recovering, switchback), its
//!   persisted record, and the pipeline ids of each epoch.
//! - [`watcher`]: health checks of both sides and the automatic role swaps.
//! - [`promote`]: promotion cut-over through Sentinel (`ferry-watcher promote`).
//! - [`cli`]: the command-line arguments the binaries share.

pub mod cli;
pub mod cluster_writer;
pub mod common;
pub mod convert;
pub mod coordinator;
pub mod decoder;
pub mod files;
pub mod filter;
pub mod metrics;
pub mod migration;
pub mod promote;
pub mod reader;
pub mod role;
pub mod spool;
pub mod stale;
pub mod telemetry;
pub mod watcher;
pub mod writer;
