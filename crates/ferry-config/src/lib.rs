//! `ferry.toml`: the one configuration file every ferry process reads.
//!
//! Every field has a default that works on one machine. Unknown keys are errors
//! that name the key and its line. A string value `${NAME}` is read from the
//! environment variable `NAME`, and `FERRY_SOURCE_PASSWORD` /
//! `FERRY_TARGET_PASSWORD` override the passwords, so secrets need not be in
//! the file.
//!
//! [`Config::load`] also reads a RedisShake v3 `sync.toml` or v4 `shake.toml` in place of
//! `ferry.toml` (see [`redisshake`]), and then applies `FERRY_COORDINATOR_STATUS_ADDR`,
//! `FERRY_COORDINATOR_GRPC_ADDR`, `FERRY_DECODER_LISTEN` and `FERRY_WRITER_LISTEN` when set
//! (for either format), since a RedisShake file cannot place ferry's own listeners.

use std::path::Path;

use serde::Deserialize;

pub mod redisshake;

/// Errors loading the configuration; Display is one line naming what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: line {line}: {message}")]
    Parse { path: String, line: usize, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid { path: String, field: String, message: String },
    /// A setting found wrong only when the process uses it (a file it names cannot be read,
    /// an endpoint that does not parse).
    #[error("config: {field}: {message}")]
    Field { field: String, message: String },
}

impl ConfigError {
    /// A [`ConfigError::Field`].
    pub fn field(field: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Field { field: field.into(), message: message.to_string() }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    #[serde(default)]
    pub reader: ReaderConfig,
    #[serde(default)]
    pub decoder: DecoderConfig,
    #[serde(default)]
    pub writer: WriterConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub watcher: WatcherConfig,
    #[serde(default)]
    pub grpc: GrpcConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: OpenTelemetry export.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint for spans (`http://collector:4317`); default: the environment's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; neither: no export.
    #[serde(default)]
    pub otlp_endpoint: String,
    /// How often each process pushes its metrics to the same endpoint.
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval_ms: u64,
}

fn default_metrics_interval() -> u64 {
    10_000
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: String::new(), metrics_interval_ms: default_metrics_interval() }
    }
}

/// `[grpc]`: the links between ferry's own processes. With the three files set, every link
/// is mutual TLS: each process presents `tls_cert_file` (as a server and as a client),
/// accepts only peers whose certificate chains to `tls_ca_file`, and serves each endpoint
/// only to the roles that may call it, named by a DNS name of the peer's certificate
/// (`identities`). `{role}` in a file path is this process's role (`reader`, `decoder`,
/// `writer`, `coordinator`, `watcher`), so one ferry.toml can name each process's own files.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    #[serde(default)]
    pub tls_ca_file: String,
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    /// The name the peers' certificates must carry; default: the host of the address
    /// connected to (an IP is checked as an IP SAN).
    #[serde(default)]
    pub tls_server_name: String,
    /// Accept plaintext links between ferry's processes on addresses other than loopback
    /// (without it, a process refuses to start that way). Logged loudly, shown in `/status`.
    #[serde(default)]
    pub insecure: bool,
    /// The certificate names (DNS SANs) of each role, e.g. `reader = ["ferry-reader"]`:
    /// a peer is a role when its certificate is valid for one of them. A role not listed is
    /// named `ferry-<role>`. Roles: reader, decoder, writer, coordinator, watcher, admin
    /// (an operator's tools: `SetRole` like the watcher).
    #[serde(default)]
    pub identities: std::collections::BTreeMap<String, Vec<String>>,
}

/// The roles ferry's processes (and an operator) take on the gRPC links.
pub const GRPC_ROLES: [&str; 6] = ["reader", "decoder", "writer", "coordinator", "watcher", "admin"];

impl GrpcConfig {
    pub fn tls(&self) -> bool {
        !self.tls_ca_file.is_empty()
    }

    /// The certificate names that identify `role` (one of [`GRPC_ROLES`]).
    pub fn names_of(&self, role: &str) -> Vec<String> {
        self.identities.get(role).cloned().unwrap_or_else(|| vec![format!("ferry-{role}")])
    }
}

/// `[watcher]`: when the role-swap state machine moves on its own (see the README's
/// "Role swaps"). "Source" and "target" are the configured sides: A and B of seed 000.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherConfig {
    /// How often the sides are health-checked.
    #[serde(default = "default_check_interval_ms")]
    pub check_interval_ms: u64,
    /// The source unreachable (or a cluster source not `cluster_state:ok`) this long: fence.
    #[serde(default = "default_ten")]
    pub lost_after_secs: u64,
    /// The fenced source healthy again this long: start the reverse pipelines (recovery).
    #[serde(default = "default_ten")]
    pub back_after_secs: u64,
    /// Recovery counts as caught up when every reverse pipeline has had lag 0 this long.
    #[serde(default = "default_caught_up_secs")]
    pub caught_up_secs: u64,
    /// Switch back on its own once caught up (default: wait for `ferry-watcher switchback`).
    #[serde(default)]
    pub auto_switchback: bool,
    /// Empty the source (FLUSHALL, every master) before the reverse full copy, so keys
    /// deleted on the target while the source was away do not come back.
    #[serde(default = "default_true")]
    pub recovery_empty_target: bool,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig {
            check_interval_ms: default_check_interval_ms(),
            lost_after_secs: default_ten(),
            back_after_secs: default_ten(),
            caught_up_secs: default_caught_up_secs(),
            auto_switchback: false,
            recovery_empty_target: true,
        }
    }
}

fn default_check_interval_ms() -> u64 {
    1000
}
fn default_ten() -> u64 {
    10
}
fn default_caught_up_secs() -> u64 {
    5
}
fn default_true() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentType {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
    /// A file (source only): an RDB file, an AOF file, or a multi-part AOF (`path`).
    File,
}

impl DeploymentType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentType::Standalone => "standalone",
            DeploymentType::Cluster => "cluster",
            DeploymentType::Sentinel => "sentinel",
            DeploymentType::File => "file",
        }
    }
}

/// A Redis deployment: the source or the target.
///
/// `standalone`: `address`. `sentinel`: the master `master_name` as the `sentinels` report
/// it (re-resolved after every failure, so a failover is followed).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default, rename = "type")]
    pub kind: DeploymentType,
    /// `host:port` of the server (standalone), or of any node of a cluster; a cluster may be
    /// given by several nodes, comma-separated (`"10.0.0.1:6379,10.0.0.2:6379"`), asked in
    /// turn when one is down. Default: 127.0.0.1:6379 for the source, 127.0.0.1:6380 for the
    /// target.
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// `host:port` of each sentinel (type sentinel).
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under (type sentinel).
    #[serde(default)]
    pub master_name: String,
    /// Credentials of the sentinels themselves, when they have any.
    #[serde(default)]
    pub sentinel_username: String,
    #[serde(default)]
    pub sentinel_password: String,
    /// Read `password` from this file at load (one trailing newline trimmed); not with `password`.
    #[serde(default)]
    pub password_file: String,
    /// TLS to the data nodes (the server, the master, every cluster node).
    #[serde(default)]
    pub tls: bool,
    /// PEM CA certificate(s) the servers' certificates must chain to; required with TLS unless
    /// `tls_insecure_skip_verify` (the system roots are not used).
    #[serde(default)]
    pub tls_ca_file: String,
    /// PEM client certificate and its key, for servers with `tls-auth-clients yes` (both or neither).
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    /// Name the servers' certificates must carry; default: the host of each address connected to.
    #[serde(default)]
    pub tls_server_name: String,
    /// Accept any server certificate (a loud warning is logged). Never in production.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// TLS to the sentinels (type sentinel), with the same files; default: `tls`.
    #[serde(default)]
    pub sentinel_tls: Option<bool>,
    /// Type file: an RDB file, an AOF file (with or without an RDB preamble), or a Redis 7
    /// multi-part AOF (its directory, `appenddirname`, or its manifest).
    #[serde(default)]
    pub path: String,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password.
        let redact = |p: &String| if p.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("RedisConfig")
            .field("kind", &self.kind)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &redact(&self.sentinel_password))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_server_name", &self.tls_server_name)
            .field("tls_insecure_skip_verify", &self.tls_insecure_skip_verify)
            .field("path", &self.path)
            .field("sentinel_tls", &self.sentinel_tls)
            .finish()
    }
}

impl RedisConfig {
    /// A one-line description for logs and the status (never a secret).
    pub fn describe(&self) -> String {
        match self.kind {
            DeploymentType::Sentinel => format!("sentinel {} via {}", self.master_name, self.sentinels.join(",")),
            DeploymentType::File => format!("file {}", self.path),
            k => format!("{} {}", k.as_str(), self.address),
        }
    }

    /// Whether the sentinels are reached over TLS (`sentinel_tls`, default `tls`).
    pub fn sentinels_use_tls(&self) -> bool {
        self.sentinel_tls.unwrap_or(self.tls)
    }

    /// Reads `password_file` into `password` (`side`: "source" or "target", for errors).
    fn read_password_file(&mut self, side: &str) -> Result<(), (String, String)> {
        if self.password_file.is_empty() {
            return Ok(());
        }
        let field = format!("{side}.password_file");
        if !self.password.is_empty() {
            return Err((field, format!("set {side}.password or {side}.password_file, not both")));
        }
        let path = &self.password_file;
        let text = std::fs::read_to_string(path).map_err(|e| (field.clone(), format!("cannot read {path}: {e}")))?;
        let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if text.is_empty() {
            return Err((field, format!("{path} is empty")));
        }
        self.password = text.to_string();
        Ok(())
    }

    /// Checks the TLS settings and that their files exist and hold PEM of the right kind.
    fn check_tls(&self, side: &str) -> Result<(), (String, String)> {
        let field = |f: &str| format!("{side}.{f}");
        if !self.tls && !self.sentinels_use_tls() {
            return Ok(());
        }
        if self.tls_ca_file.is_empty() && !self.tls_insecure_skip_verify {
            return Err((
                field("tls_ca_file"),
                "required with TLS (the system roots are not used); or tls_insecure_skip_verify = true".into(),
            ));
        }
        match (self.tls_cert_file.is_empty(), self.tls_key_file.is_empty()) {
            (true, false) => {
                return Err((field("tls_cert_file"), "needed with tls_key_file (mTLS: both or neither)".into()));
            }
            (false, true) => {
                return Err((field("tls_key_file"), "needed with tls_cert_file (mTLS: both or neither)".into()));
            }
            _ => {}
        }
        for (f, path, labels, what) in [
            ("tls_ca_file", &self.tls_ca_file, &["CERTIFICATE"][..], "certificate"),
            ("tls_cert_file", &self.tls_cert_file, &["CERTIFICATE"][..], "certificate"),
            (
                "tls_key_file",
                &self.tls_key_file,
                &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"][..],
                "private key",
            ),
        ] {
            if !path.is_empty() {
                check_pem(path, labels, what).map_err(|m| (field(f), m))?;
            }
        }
        let name = &self.tls_server_name;
        if name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err((field("tls_server_name"), format!("{name:?} is not a host name or IP address")));
        }
        Ok(())
    }
}

/// Checks that `path` holds at least one PEM section labelled one of `labels` whose body is
/// base64 DER (a SEQUENCE). Messages name the file, never its content.
fn check_pem(path: &str, labels: &[&str], what: &str) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut rest: &str = &text;
    let mut found = false;
    while let Some(i) = rest.find("-----BEGIN ") {
        let after = &rest[i + "-----BEGIN ".len()..];
        let Some(j) = after.find("-----") else {
            return Err(format!("{path}: not a valid PEM file"));
        };
        let (label, body) = (&after[..j], &after[j + 5..]);
        let end = format!("-----END {label}-----");
        let Some(k) = body.find(&end) else {
            return Err(format!("{path}: a PEM section has no END line"));
        };
        if labels.contains(&label) {
            let b64: String = body[..k].chars().filter(|c| !c.is_whitespace()).collect();
            let ok = b64.len().is_multiple_of(4)
                && b64.starts_with('M')
                && b64.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
            if !ok {
                let hint = if what == "private key" { " (encrypted keys are not supported)" } else { "" };
                return Err(format!("{path}: a PEM {what} is not valid base64 DER{hint}"));
            }
            found = true;
        }
        rest = &body[k + end.len()..];
    }
    if found { Ok(()) } else { Err(format!("{path}: no PEM {what} in the file")) }
}

pub type SourceConfig = RedisConfig;
pub type TargetConfig = RedisConfig;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// HTTP: `/status`, `/metrics`, `/healthz`.
    #[serde(default = "default_status_addr")]
    pub status_addr: String,
    /// gRPC: assignments and status reports from the stages.
    #[serde(default = "default_coordinator_grpc")]
    pub grpc_addr: String,
    /// Where the role (forward, fenced, recovering, switchback) is kept across restarts.
    /// Required by `ferry-watcher run`; empty: the coordinator always starts forward.
    #[serde(default)]
    pub state_file: String,
    /// The name of this deployment, carried by every hello and report so that processes of
    /// two deployments never join each other; default: derived from the two sides.
    #[serde(default)]
    pub name: String,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            status_addr: default_status_addr(),
            grpc_addr: default_coordinator_grpc(),
            state_file: String::new(),
            name: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// `REPLCONF listening-port` sent to the source. 0: none (nobody can connect to a reader).
    #[serde(default)]
    pub listening_port: u16,
    /// Largest bulk string accepted in the replication stream.
    #[serde(default = "default_max_bulk")]
    pub proto_max_bulk_len: u64,
    /// Bytes of the replication stream held in memory before the reader spools to disk (it
    /// never stops reading the socket: the source would disconnect a slow replica).
    #[serde(default = "default_memory_buffer")]
    pub buffer_bytes: u64,
    /// Where to spool; default: the system temp dir.
    #[serde(default)]
    pub spool_dir: String,
    /// Largest spool; when full the session fails with an error saying so.
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    /// How a live source is read: `psync` (as a replica: a full copy, then every write) or
    /// `scan` (`SCAN`, `DUMP`, `PTTL`: a point-in-time view, key by key, for servers that
    /// refuse `PSYNC`; later writes are not followed).
    #[serde(default)]
    pub method: ReadMethod,
    /// Keys asked per `SCAN` (method scan).
    #[serde(default = "default_scan_count")]
    pub scan_count: u32,
    /// This process's `/metrics` and `/healthz` ("" for none).
    #[serde(default = "default_reader_metrics")]
    pub metrics_addr: String,
}

fn default_reader_metrics() -> String {
    "127.0.0.1:7721".into()
}

fn default_decoder_metrics() -> String {
    "127.0.0.1:7722".into()
}

fn default_writer_metrics() -> String {
    "127.0.0.1:7723".into()
}

/// How a live source is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadMethod {
    #[default]
    Psync,
    Scan,
}

fn default_scan_count() -> u32 {
    1000
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            listening_port: 0,
            proto_max_bulk_len: default_max_bulk(),
            buffer_bytes: default_memory_buffer(),
            spool_dir: String::new(),
            spool_max_bytes: default_spool_max(),
            method: ReadMethod::Psync,
            scan_count: default_scan_count(),
            metrics_addr: default_reader_metrics(),
        }
    }
}

fn default_memory_buffer() -> u64 {
    32 * 1024 * 1024
}

fn default_spool_max() -> u64 {
    8 * 1024 * 1024 * 1024
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// gRPC listen address of the decoder.
    #[serde(default = "default_decoder_listen")]
    pub listen: String,
    /// The address the readers reach the decoder at, when not `listen` (it listens on
    /// `0.0.0.0:7711` behind a Kubernetes Service, say). Default: `listen`.
    #[serde(default)]
    pub advertise: String,
    /// This process's `/metrics` and `/healthz` ("" for none).
    #[serde(default = "default_decoder_metrics")]
    pub metrics_addr: String,
    /// Values whose RDB encoding is at most this many bytes are sent as one `RESTORE`
    /// (the decoder holds such a value about twice while it sends it: keep it small
    /// against the 128 MiB a decoder may use).
    #[serde(default = "default_restore_limit")]
    pub restore_max_bytes: u64,
    /// Larger values are sent as commands in chunks of about this many bytes.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u64,
    /// Accept RDB versions newer than this ferry knows.
    #[serde(default)]
    pub allow_newer_rdb: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            listen: default_decoder_listen(),
            advertise: String::new(),
            metrics_addr: default_decoder_metrics(),
            restore_max_bytes: default_restore_limit(),
            chunk_bytes: default_chunk_bytes(),
            allow_newer_rdb: false,
        }
    }
}

/// What to do with a key of the full copy that already exists on the target.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExistingKey {
    /// Replace it with the source's value.
    #[default]
    Rewrite,
    /// Keep the target's value, count the key as skipped.
    Skip,
    /// Stop the pipeline with an error naming the key.
    Panic,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterConfig {
    /// gRPC listen address of the writer.
    #[serde(default = "default_writer_listen")]
    pub listen: String,
    /// The address the decoders reach the writer at, when not `listen`. Default: `listen`.
    #[serde(default)]
    pub advertise: String,
    /// This process's `/metrics` and `/healthz` ("" for none).
    #[serde(default = "default_writer_metrics")]
    pub metrics_addr: String,
    /// Most commands sent to the target without their replies.
    #[serde(default = "default_pipeline")]
    pub pipeline_count_limit: usize,
    #[serde(default)]
    pub existing_key: ExistingKey,
    /// Most bytes of commands sent to the target without their replies (Redis closes a
    /// client whose query buffer passes `client-query-buffer-limit`, 1 GB by default). A
    /// single batch bigger than this is still sent, alone.
    #[serde(default = "default_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Most data commands applied per second (0: no limit).
    #[serde(default)]
    pub max_ops_per_sec: u64,
    /// Most bytes of commands sent to the target per second (0: no limit).
    #[serde(default)]
    pub max_bytes_per_sec: u64,
    /// Empty the target (FLUSHALL, every master of a cluster) before each full copy, so
    /// keys that exist only on the target do not survive it. Off by default; logged loudly.
    #[serde(default)]
    pub empty_target_before_full_copy: bool,
    /// After a full copy that replaces an earlier copy of the same pipeline (a resync the
    /// source could not serve partially), delete the target's keys of the pipeline's
    /// keyspace that the new snapshot does not hold (deleted on the source meanwhile). A
    /// first copy never deletes anything.
    #[serde(default = "default_true")]
    pub remove_stale_keys: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            listen: default_writer_listen(),
            advertise: String::new(),
            metrics_addr: default_writer_metrics(),
            pipeline_count_limit: default_pipeline(),
            existing_key: ExistingKey::Rewrite,
            max_inflight_bytes: default_inflight_bytes(),
            max_ops_per_sec: 0,
            max_bytes_per_sec: 0,
            empty_target_before_full_copy: false,
            remove_stale_keys: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: default_log_level(), format: LogFormat::Text }
    }
}

/// `[filter]`: which keys, dbs and commands reach the target, and where dbs land.
///
/// Every list is empty by default and then nothing is filtered. A key passes if no block
/// rule matches it and either no allow rule is set or one matches it; the same for dbs
/// (source dbs, before `db_map`) and commands. Regexes are unanchored (`^`/`$` anchor them)
/// and are compiled (and checked) by the decoder when it starts.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Exact key names.
    pub allow_keys: Vec<String>,
    pub allow_key_prefix: Vec<String>,
    pub allow_key_suffix: Vec<String>,
    pub allow_key_regex: Vec<String>,
    pub block_keys: Vec<String>,
    pub block_key_prefix: Vec<String>,
    pub block_key_suffix: Vec<String>,
    pub block_key_regex: Vec<String>,
    /// Source dbs; empty = all.
    pub allow_db: Vec<u64>,
    pub block_db: Vec<u64>,
    /// Command names (any case), e.g. `["SET", "DEL"]`; empty = all.
    pub allow_command: Vec<String>,
    pub block_command: Vec<String>,
    /// Command groups (Redis ACL categories): `string`, `list`, `set`, `sorted_set`, `hash`,
    /// `stream`, `generic`, `scripting`, `pubsub`, `server`, `transactions`, `geo`,
    /// `hyperloglog`, `bitmap`.
    pub block_command_group: Vec<String>,
    /// Source db (a TOML key, `"1"`) → target db; dbs not listed keep their number.
    pub db_map: std::collections::BTreeMap<String, u64>,
}

fn default_source_address() -> String {
    "127.0.0.1:6379".into()
}
fn default_target_address() -> String {
    "127.0.0.1:6380".into()
}
fn default_status_addr() -> String {
    "127.0.0.1:7701".into()
}
fn default_coordinator_grpc() -> String {
    "127.0.0.1:7702".into()
}
fn default_decoder_listen() -> String {
    "127.0.0.1:7711".into()
}
fn default_writer_listen() -> String {
    "127.0.0.1:7712".into()
}
fn default_max_bulk() -> u64 {
    512 * 1024 * 1024
}
fn default_restore_limit() -> u64 {
    16 * 1024 * 1024
}
fn default_chunk_bytes() -> u64 {
    1024 * 1024
}
/// Several of the decoder's batches (up to 1024 commands each) in flight: the target never
/// waits for the next batch while the writer reads the replies of the last one.
fn default_pipeline() -> usize {
    32768
}
fn default_inflight_bytes() -> u64 {
    256 << 20
}
fn default_log_level() -> String {
    "info".into()
}

impl Config {
    /// The config of a reverse pipeline of a role swap: the two sides swapped, the
    /// existing-key policy `rewrite`, the source emptied first when
    /// `watcher.recovery_empty_target`, and no filter (a recovery copies everything back).
    pub fn reversed(&self) -> Config {
        let mut c = self.clone();
        std::mem::swap(&mut c.source, &mut c.target);
        c.writer.existing_key = ExistingKey::Rewrite;
        c.writer.empty_target_before_full_copy = self.watcher.recovery_empty_target;
        c.filter = FilterConfig::default();
        c
    }

    /// The deployment these processes form: `[coordinator] name`, or a name derived from the
    /// two sides (the same for every process that reads this configuration).
    pub fn deployment(&self) -> String {
        if !self.coordinator.name.is_empty() {
            return self.coordinator.name.clone();
        }
        // FNV-1a: stable across builds, unlike the standard library's hasher.
        let text = format!("{} -> {}", self.source.describe(), self.target.describe());
        let h = text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        format!("ferry-{h:016x}")
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name.clone(), source })?;
        let mut cfg = match redisshake::detect(&text) {
            Some(_) => redisshake::load(&text, &name)?,
            None => Config::parse(&text, &name)?,
        };
        redisshake::apply_env_overrides(&mut cfg, &name)?;
        Ok(cfg)
    }

    /// Parses the text of a config file; `name` is used in error messages.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let text = &expand_env(text, name)?;
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
            let message = redact_values(&e.message().replace('\n', " ")).trim().to_string();
            ConfigError::Parse { path: name.to_string(), line, message }
        })?;
        cfg.resolve_env(name)?;
        cfg.validate(name)?;
        Ok(cfg)
    }

    fn resolve_env(&mut self, name: &str) -> Result<(), ConfigError> {
        if self.source.address.is_empty() {
            self.source.address = default_source_address();
        }
        if self.target.address.is_empty() {
            self.target.address = default_target_address();
        }
        let fields: [(&str, &mut String); 10] = [
            ("source.address", &mut self.source.address),
            ("source.username", &mut self.source.username),
            ("source.password", &mut self.source.password),
            ("source.sentinel_username", &mut self.source.sentinel_username),
            ("source.sentinel_password", &mut self.source.sentinel_password),
            ("target.address", &mut self.target.address),
            ("target.username", &mut self.target.username),
            ("target.password", &mut self.target.password),
            ("target.sentinel_username", &mut self.target.sentinel_username),
            ("target.sentinel_password", &mut self.target.sentinel_password),
        ];
        for (field, value) in fields {
            if let Some(var) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
                *value = std::env::var(var).map_err(|_| ConfigError::Invalid {
                    path: name.to_string(),
                    field: field.to_string(),
                    message: format!("environment variable {var} is not set"),
                })?;
            }
        }
        for (side, r) in [("source", &mut self.source), ("target", &mut self.target)] {
            r.read_password_file(side).map_err(|(field, message)| ConfigError::Invalid {
                path: name.to_string(),
                field,
                message,
            })?;
        }
        if let Ok(p) = std::env::var("FERRY_SOURCE_PASSWORD") {
            self.source.password = p;
        }
        if let Ok(p) = std::env::var("FERRY_TARGET_PASSWORD") {
            self.target.password = p;
        }
        Ok(())
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: name.to_string(),
            field: field.to_string(),
            message,
        };
        for (side, r) in [("source", &self.source), ("target", &self.target)] {
            match r.kind {
                DeploymentType::Standalone => {}
                DeploymentType::Sentinel => {
                    if r.sentinels.is_empty() {
                        return Err(invalid(
                            &format!("{side}.sentinels"),
                            "type \"sentinel\" needs at least one sentinel address".into(),
                        ));
                    }
                    if r.master_name.is_empty() {
                        return Err(invalid(
                            &format!("{side}.master_name"),
                            "type \"sentinel\" needs the master's name".into(),
                        ));
                    }
                    for s in &r.sentinels {
                        check_host_port(s).map_err(|m| invalid(&format!("{side}.sentinels"), m))?;
                    }
                }
                DeploymentType::Cluster => {}
                DeploymentType::File if side == "target" => {
                    return Err(invalid("target.type", "a file can only be a source".into()));
                }
                DeploymentType::File => {
                    if r.path.is_empty() {
                        return Err(invalid(
                            "source.path",
                            "type \"file\" needs the path of an RDB file, an AOF file or an AOF directory".into(),
                        ));
                    }
                    if self.reader.method == ReadMethod::Scan {
                        return Err(invalid("reader.method", "\"scan\" reads a live server, not a file".into()));
                    }
                }
            }
            if r.kind != DeploymentType::File && !r.path.is_empty() {
                return Err(invalid(&format!("{side}.path"), "only type \"file\" reads a path".into()));
            }
            r.check_tls(side).map_err(|(field, message)| invalid(&field, message))?;
        }
        for (field, r) in [("source.address", &self.source), ("target.address", &self.target)] {
            // A cluster may be given by several of its nodes, comma-separated (asked in turn).
            if r.kind == DeploymentType::Cluster {
                for addr in r.address.split(',').map(str::trim) {
                    check_host_port(addr).map_err(|m| invalid(field, m))?;
                }
            } else if r.kind == DeploymentType::File {
                // No server to reach.
            } else {
                check_host_port(&r.address).map_err(|m| invalid(field, m))?;
            }
        }
        for (field, addr) in [
            ("coordinator.status_addr", &self.coordinator.status_addr),
            ("coordinator.grpc_addr", &self.coordinator.grpc_addr),
            ("decoder.listen", &self.decoder.listen),
            ("writer.listen", &self.writer.listen),
        ] {
            check_host_port(addr).map_err(|m| invalid(field, m))?;
        }
        for (field, addr) in [
            ("decoder.advertise", &self.decoder.advertise),
            ("writer.advertise", &self.writer.advertise),
            ("reader.metrics_addr", &self.reader.metrics_addr),
            ("decoder.metrics_addr", &self.decoder.metrics_addr),
            ("writer.metrics_addr", &self.writer.metrics_addr),
        ] {
            if !addr.is_empty() {
                check_host_port(addr).map_err(|m| invalid(field, m))?;
            }
        }
        if self.writer.pipeline_count_limit == 0 {
            return Err(invalid("writer.pipeline_count_limit", "must be at least 1".into()));
        }
        let g = &self.grpc;
        let set = [&g.tls_ca_file, &g.tls_cert_file, &g.tls_key_file].iter().filter(|f| !f.is_empty()).count();
        if set != 0 && set != 3 {
            return Err(invalid(
                "grpc.tls_ca_file",
                "mutual TLS between ferry's processes needs tls_ca_file, tls_cert_file and tls_key_file".into(),
            ));
        }
        for (role, names) in &g.identities {
            let field = format!("grpc.identities.{role}");
            if !GRPC_ROLES.contains(&role.as_str()) {
                return Err(invalid(&field, format!("unknown role {role:?} (roles: {})", GRPC_ROLES.join(", "))));
            }
            if names.is_empty() {
                return Err(invalid(&field, "names no certificate name".into()));
            }
            // Names as certificates are checked against them: no wildcards.
            let bad_name =
                |n: &&String| n.is_empty() || n.chars().any(|c| !(c.is_ascii_alphanumeric() || "-.:".contains(c)));
            if let Some(bad) = names.iter().find(bad_name) {
                return Err(invalid(&field, format!("{bad:?} is not a DNS name or IP address")));
            }
        }
        if self.reader.scan_count == 0 {
            return Err(invalid("reader.scan_count", "must be at least 1".into()));
        }
        if self.decoder.chunk_bytes == 0 {
            return Err(invalid("decoder.chunk_bytes", "must be at least 1".into()));
        }
        Ok(())
    }
}

fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("\"{addr}\" is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("\"{addr}\" has no host"));
    }
    port.parse::<u16>().map_err(|_| format!("\"{addr}\" has an invalid port"))?;
    Ok(())
}

/// Replaces every string value written `"${NAME}"` (the whole value, in any section, array or
/// inline table) with the environment variable `NAME`, as a TOML string, so that any secret
/// or address can come from the environment; an unset variable is an error naming its line.
/// Lines are kept, so later errors still name the right line.
fn expand_env(text: &str, name: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        loop {
            // Not inside a comment: a `#` before the value ends what is read.
            let Some(at) = rest.find("\"${").filter(|at| !rest[..*at].contains('#')) else {
                out.push_str(rest);
                break;
            };
            let after = &rest[at + 3..];
            let end = after.find('}').filter(|e| after[e + 1..].starts_with('"'));
            let var = end
                .map(|e| &after[..e])
                .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            let (Some(end), Some(var)) = (end, var) else {
                out.push_str(&rest[..at + 3]);
                rest = after;
                continue;
            };
            let value = std::env::var(var).map_err(|_| ConfigError::Parse {
                path: name.to_string(),
                line: n + 1,
                message: format!("environment variable {var} is not set"),
            })?;
            out.push_str(&rest[..at]);
            out.push('"');
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            rest = &after[end + 2..];
        }
    }
    Ok(out)
}

/// A parse error's message without the value it quotes (`invalid type: integer \`12345\``):
/// a password written unquoted must not reach a log.
fn redact_values(message: &str) -> String {
    let mut out = message.to_string();
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(at) = out.find(prefix) {
            let rest = &out[at + prefix.len()..];
            // `<kind> <quoted literal>, expected ...`: keep the kind, drop the literal.
            if let Some(space) = rest.find(' ')
                && let Some(comma) = rest.find(", expected")
                && space < comma
            {
                out = format!("{}{}{}", &out[..at + prefix.len()], &rest[..space], &rest[comma..]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_anywhere_and_no_value_in_errors() {
        // SAFETY: this test is the only one touching these variables.
        unsafe {
            std::env::set_var("FERRY_TEST_ENV_ADDR", "10.1.2.3:6379");
            std::env::set_var("FERRY_TEST_ENV_SENTINEL", "10.0.0.9:26379");
            std::env::set_var("FERRY_TEST_ENV_QUOTE", "a\"b\\c");
        }
        let c = Config::parse(
            "[source]\ntype = \"sentinel\"\nmaster_name = \"${FERRY_TEST_ENV_QUOTE}\"\nsentinels = [\"${FERRY_TEST_ENV_SENTINEL}\"]\n\
             [target]\naddress = \"${FERRY_TEST_ENV_ADDR}\" # \"${NOT_EXPANDED_IN_A_COMMENT}\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.target.address, "10.1.2.3:6379");
        assert_eq!(c.source.sentinels, vec!["10.0.0.9:26379".to_string()]);
        assert_eq!(c.source.master_name, "a\"b\\c");
        let e = Config::parse("[target]\n\naddress = \"${FERRY_TEST_ENV_UNSET}\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("FERRY_TEST_ENV_UNSET"), "{e}");
        let e = Config::parse("[source]\npassword = 918273645\n", "f").unwrap_err().to_string();
        assert!(!e.contains("918273645") && e.contains("line 2") && e.contains("expected"), "{e}");
    }

    #[test]
    fn defaults_work() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.source.address, "127.0.0.1:6379");
        assert_eq!(c.writer.pipeline_count_limit, 32768);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = Config::parse("[source]\naddress = \"a:1\"\nadress = \"x\"\n", "ferry.toml").unwrap_err().to_string();
        assert!(e.contains("adress") && e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn wrong_type_and_bad_address() {
        let e = Config::parse("[writer]\npipeline_count_limit = \"x\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::parse("[target]\naddress = \"nohost\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("target.address"), "{e}");
    }

    #[test]
    fn secrets_from_env() {
        // SAFETY: this test is the only one touching this variable.
        unsafe { std::env::set_var("FERRY_TEST_SECRET_X", "pw") };
        let c = Config::parse("[source]\npassword = \"${FERRY_TEST_SECRET_X}\"\n", "f").unwrap();
        assert_eq!(c.source.password, "pw");
        let e = Config::parse("[source]\npassword = \"${FERRY_TEST_UNSET_Y}\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("FERRY_TEST_UNSET_Y"));
    }
}

#[cfg(test)]
mod sentinel_tests {
    use super::*;

    #[test]
    fn sentinel_needs_sentinels_and_a_name() {
        let e = Config::parse("[target]\ntype = \"sentinel\"\nmaster_name = \"m\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("target.sentinels"), "{e}");
        let e = Config::parse("[source]\ntype = \"sentinel\"\nsentinels = [\"127.0.0.1:26379\"]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.master_name"), "{e}");
        let c = Config::parse(
            "[source]\ntype = \"sentinel\"\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"m\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.source.describe(), "sentinel m via 127.0.0.1:26379");
        assert_eq!(c.target.address, "127.0.0.1:6380");
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    /// A temp dir with a fake (well-formed) CA, client certificate and key, and a password file.
    fn files(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-config-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIBfake+/==\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.join("ca.pem"), cert).unwrap();
        std::fs::write(dir.join("client.pem"), cert).unwrap();
        std::fs::write(
            dir.join("client.key"),
            "-----BEGIN PRIVATE KEY-----\nMIGHsecretkey===\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.join("bad.key"), "-----BEGIN PRIVATE KEY-----\nsecret!!\n-----END PRIVATE KEY-----\n")
            .unwrap();
        std::fs::write(dir.join("pw"), "hunter2\n").unwrap();
        dir
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "ferry.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn grpc_identities_name_known_roles() {
        let c = parse("[grpc.identities]\nreader = [\"reader.prod.internal\", \"ferry-reader\"]\n").unwrap();
        assert_eq!(c.grpc.names_of("reader"), ["reader.prod.internal", "ferry-reader"]);
        assert_eq!(c.grpc.names_of("admin"), ["ferry-admin"]);
        let e = parse("[grpc.identities]\nreaders = [\"x\"]\n").unwrap_err();
        assert!(e.contains("grpc.identities.readers") && e.contains("unknown role") && !e.contains('\n'), "{e}");
        let e = parse("[grpc.identities]\nwatcher = []\n").unwrap_err();
        assert!(e.contains("grpc.identities.watcher"), "{e}");
        let e = parse("[grpc.identities]\nadmin = [\"a b\"]\n").unwrap_err();
        assert!(e.contains("not a DNS name"), "{e}");
        let e = parse("[grpc.identities]\nadmin = [\"*.ops.internal\"]\n").unwrap_err();
        assert!(e.contains("not a DNS name"), "{e}");
    }

    #[test]
    fn tls_needs_a_ca_or_insecure() {
        let e = parse("[source]\ntls = true\n").unwrap_err();
        assert!(e.contains("source.tls_ca_file") && !e.contains('\n'), "{e}");
        let c = parse("[target]\ntls = true\ntls_insecure_skip_verify = true\n").unwrap();
        assert!(c.target.tls && c.target.sentinels_use_tls() && !c.source.tls);
        // Files are not looked at while TLS is off.
        parse("[source]\ntls_ca_file = \"/nonexistent/ca.pem\"\n").unwrap();
    }

    #[test]
    fn tls_files_must_exist_and_parse() {
        let d = files("parse");
        let p = |f: &str| d.join(f).display().to_string();
        let ok = format!(
            "[source]\ntls = true\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_server_name = \"redis.internal\"\n",
            p("ca.pem"),
            p("client.pem"),
            p("client.key")
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.source.tls_server_name, "redis.internal");

        let e = parse("[target]\ntls = true\ntls_ca_file = \"/nonexistent/ca.pem\"\n").unwrap_err();
        assert!(e.contains("target.tls_ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");
        // A key where a certificate belongs, and a certificate where the key belongs.
        let e = parse(&format!("[source]\ntls = true\ntls_ca_file = \"{}\"\n", p("client.key"))).unwrap_err();
        assert!(e.contains("source.tls_ca_file") && e.contains("no PEM certificate"), "{e}");
        let e = parse(&ok.replace("client.key", "client.pem")).unwrap_err();
        assert!(e.contains("source.tls_key_file") && e.contains("no PEM private key"), "{e}");
        let e = parse(&ok.replace("client.key", "bad.key")).unwrap_err();
        assert!(e.contains("source.tls_key_file") && e.contains("bad.key") && !e.contains("secret"), "{e}");
        // Both or neither.
        let e = parse(&format!(
            "[source]\ntls = true\ntls_ca_file = \"{}\"\ntls_key_file = \"{}\"\n",
            p("ca.pem"),
            p("client.key")
        ))
        .unwrap_err();
        assert!(e.contains("source.tls_cert_file"), "{e}");
        let e = parse(&format!(
            "[source]\ntls = true\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\n",
            p("ca.pem"),
            p("client.pem")
        ))
        .unwrap_err();
        assert!(e.contains("source.tls_key_file"), "{e}");
        let e = parse(&format!("[source]\ntls = true\ntls_ca_file = \"{}\"\ntls_server_name = \"a b\"\n", p("ca.pem")))
            .unwrap_err();
        assert!(e.contains("source.tls_server_name"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn sentinel_tls_defaults_to_tls() {
        let d = files("sentinel");
        let ca = d.join("ca.pem").display().to_string();
        let base = "type = \"sentinel\"\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"m\"\n";
        let c = parse(&format!("[source]\n{base}tls = true\ntls_ca_file = \"{ca}\"\n")).unwrap();
        assert!(c.source.sentinels_use_tls());
        let c = parse(&format!("[source]\n{base}tls = true\ntls_ca_file = \"{ca}\"\nsentinel_tls = false\n")).unwrap();
        assert!(c.source.tls && !c.source.sentinels_use_tls());
        // TLS to the sentinels only still needs a CA.
        let e = parse(&format!("[source]\n{base}sentinel_tls = true\n")).unwrap_err();
        assert!(e.contains("source.tls_ca_file"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn password_file() {
        let d = files("pw");
        let pw = d.join("pw").display().to_string();
        let c = parse(&format!("[target]\npassword_file = \"{pw}\"\n")).unwrap();
        assert_eq!(c.target.password, "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = parse(&format!("[target]\npassword = \"x\"\npassword_file = \"{pw}\"\n")).unwrap_err();
        assert!(e.contains("target.password_file") && !e.contains("hunter2"), "{e}");
        let e = parse("[source]\npassword_file = \"/nonexistent/pw\"\n").unwrap_err();
        assert!(e.contains("source.password_file") && e.contains("/nonexistent/pw"), "{e}");
        std::fs::write(d.join("empty"), "\n").unwrap();
        let e = parse(&format!("[source]\npassword_file = \"{}\"\n", d.join("empty").display())).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }
}
