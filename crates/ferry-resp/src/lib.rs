//! RESP (REdis Serialization Protocol) for ferry, with no knowledge of gRPC.
//!
//! Layout:
//! - [`frame`]: the reply value ([`Reply`]), a bounded parser that never allocates
//!   by an untrusted length, and the scanner that finds whole commands in a
//!   replication stream without allocating.
//! - [`encode`]: commands to RESP bytes.
//! - [`conn`]: an async client connection (connect, AUTH, pipelined send/receive).
//! - [`replication`]: the replica side of `PSYNC`: handshake, RDB transfer
//!   (disk `$<len>` and diskless `$EOF:<mark>`), then the command stream framed
//!   into whole commands with their end offsets.
//! - [`sentinel`]: resolving a master through Sentinel.
//! - [`cluster`]: key slots and the slot map of a Redis Cluster.
//! - [`commands`]: the commands a server knows and where their keys are (its `COMMAND` reply).
//! - [`tls`]: TLS settings (CA, client certificate for mTLS, server name) for [`conn`].

pub mod cluster;
pub mod commands;
pub mod conn;
pub mod encode;
pub mod frame;
pub mod replication;
pub mod sentinel;
pub mod tls;

pub use conn::{Auth, Connection, RespError};
pub use encode::{encode_command, encode_command_into, put_header};
pub use frame::{
    DEFAULT_MAX_BULK_LEN, FrameError, Reply, command_arg, command_name, parse_command, parse_reply, scan_command,
    scan_reply,
};
pub use tls::TlsSettings;
