//! What every ferry process runs on, whatever its stage: the command line and exit codes
//! ([`cli`]), gRPC links and their mutual TLS ([`grpc`]), logging and OpenTelemetry
//! ([`logging`], [`telemetry`]), each process's `/metrics` ([`metrics`], [`prom`]), the
//! counters a stage reports to the coordinator and its sessions ([`stats`]), asking the
//! coordinator for work ([`client`]), shutdown and backoff ([`lifecycle`]), pacing
//! ([`rate`]), and the shared vocabulary ([`model`]: [`Role`], [`Phase`]).
//!
//! It knows nothing of any one stage: the reader, decoder, writer, coordinator and watcher
//! crates build on it and never on each other.

pub mod cli;
pub mod client;
pub mod grpc;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod prom;
pub mod rate;
pub mod stats;
pub mod telemetry;

pub use client::{NOT_READY_FAST_FOR, NOT_READY_RETRY, PlanError, assignment, plan, plan_once};
pub use grpc::{grpc_channel, grpc_server, grpc_url, to_status};
pub use lifecycle::{Backoff, cancel_on_signal, instance_name, sleep_or_cancel};
pub use model::{FullCopyNeeded, Phase, Role};
pub use rate::RateLimiter;
pub use stats::{Sessions, Stats, report_loop};
