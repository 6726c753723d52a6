//! `ferry.toml`: the one configuration file every ferry process reads.
//!
//! Every field has a default that works on one machine. Unknown keys are errors
//! that name the key and its line. A string value `${NAME}` is read from the
//! environment variable `NAME`, and `FERRY_SOURCE_PASSWORD` /
//! `FERRY_TARGET_PASSWORD` override the passwords, so secrets need not be in
//! the file.

use std::path::Path;

use serde::Deserialize;

/// Errors loading the configuration; Display is one line naming what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: line {line}: {message}")]
    Parse { path: String, line: usize, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid { path: String, field: String, message: String },
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
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentType {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

impl DeploymentType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentType::Standalone => "standalone",
            DeploymentType::Cluster => "cluster",
            DeploymentType::Sentinel => "sentinel",
        }
    }
}

/// A Redis deployment: the source or the target.
///
/// `standalone`: `address`. `sentinel`: the master `master_name` as the `sentinels` report
/// it (re-resolved after every failure, so a failover is followed).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default, rename = "type")]
    pub kind: DeploymentType,
    /// `host:port` of the server (standalone). Default: 127.0.0.1:6379 for the source,
    /// 127.0.0.1:6380 for the target.
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
}

impl RedisConfig {
    /// A one-line description for logs and the status (never a secret).
    pub fn describe(&self) -> String {
        match self.kind {
            DeploymentType::Sentinel => format!("sentinel {} via {}", self.master_name, self.sentinels.join(",")),
            k => format!("{} {}", k.as_str(), self.address),
        }
    }
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
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig { status_addr: default_status_addr(), grpc_addr: default_coordinator_grpc() }
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
    /// Frames buffered in memory between the socket and the decoder stream.
    #[serde(default = "default_reader_buffer")]
    pub buffer_frames: usize,
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
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            listening_port: 0,
            proto_max_bulk_len: default_max_bulk(),
            buffer_frames: default_reader_buffer(),
            buffer_bytes: default_memory_buffer(),
            spool_dir: String::new(),
            spool_max_bytes: default_spool_max(),
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
    /// Values whose RDB encoding is at most this many bytes are sent as one `RESTORE`.
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
    /// Most commands sent to the target without their replies.
    #[serde(default = "default_pipeline")]
    pub pipeline_count_limit: usize,
    #[serde(default)]
    pub existing_key: ExistingKey,
    /// Most data commands applied per second (0: no limit).
    #[serde(default)]
    pub max_ops_per_sec: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            listen: default_writer_listen(),
            pipeline_count_limit: default_pipeline(),
            existing_key: ExistingKey::Rewrite,
            max_ops_per_sec: 0,
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
fn default_reader_buffer() -> usize {
    256
}
fn default_restore_limit() -> u64 {
    64 * 1024 * 1024
}
fn default_chunk_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_pipeline() -> usize {
    1024
}
fn default_log_level() -> String {
    "info".into()
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name.clone(), source })?;
        Config::parse(&text, &name)
    }

    /// Parses the text of a config file; `name` is used in error messages.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
            let message = e.message().replace('\n', " ").trim().to_string();
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
            }
        }
        for (field, addr) in [
            ("source.address", &self.source.address),
            ("target.address", &self.target.address),
            ("coordinator.status_addr", &self.coordinator.status_addr),
            ("coordinator.grpc_addr", &self.coordinator.grpc_addr),
            ("decoder.listen", &self.decoder.listen),
            ("writer.listen", &self.writer.listen),
        ] {
            check_host_port(addr).map_err(|m| invalid(field, m))?;
        }
        if self.writer.pipeline_count_limit == 0 {
            return Err(invalid("writer.pipeline_count_limit", "must be at least 1".into()));
        }
        if self.reader.buffer_frames == 0 {
            return Err(invalid("reader.buffer_frames", "must be at least 1".into()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.source.address, "127.0.0.1:6379");
        assert_eq!(c.writer.pipeline_count_limit, 1024);
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
