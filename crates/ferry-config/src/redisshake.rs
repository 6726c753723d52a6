//! RedisShake configuration files read as `ferry.toml`.
//!
//! Two formats are understood:
//!
//! - **v3** (`sync.toml`): a top-level `type = "sync"`, `[source]`, `[target]`, `[advanced]`.
//! - **v4** (`shake.toml`): `[sync_reader]` (or `[scan_reader]`, `[rdb_reader]`,
//!   `[aof_reader]`), `[redis_writer]`, `[filter]`, `[advanced]`, `[module]`.
//!
//! A file is taken for a RedisShake file when it has a top-level `type` key, one of the v4
//! reader/writer sections, or an `[advanced]` section (none of which `ferry.toml` has);
//! anything else is parsed as `ferry.toml`. Every RedisShake option is mapped onto its ferry
//! meaning. An option ferry cannot honour, or that means nothing here, gives one warning
//! (logged with `tracing::warn!` and returned in [`Converted::warnings`]); an option set to
//! what ferry does anyway gives none. Unknown keys give a warning too (RedisShake ignores
//! them), never an error. Options whose silent omission would copy the wrong data
//! (`sync_rdb = false`, an `[rdb_reader]`, ...) are
//! errors that say why. ferry settings a RedisShake file cannot carry keep ferry's defaults;
//! see [`apply_env_overrides`] for placing the coordinator and the stages.

use std::path::Path;

use toml::{Table, Value};

use crate::{Config, ConfigError, DeploymentType, ExistingKey, RedisConfig};

/// Which RedisShake format a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// v3 `sync.toml`: `type = "sync"`, `[source]`, `[target]`, `[advanced]`.
    V3,
    /// v4 `shake.toml`: `[sync_reader]`, `[redis_writer]`, `[filter]`, `[advanced]`, ...
    V4,
}

impl Format {
    pub fn describe(self) -> &'static str {
        match self {
            Format::V3 => "a RedisShake v3 sync.toml",
            Format::V4 => "a RedisShake v4 shake.toml",
        }
    }
}

/// A RedisShake file converted to a ferry [`Config`].
#[derive(Clone, Debug)]
pub struct Converted {
    pub format: Format,
    pub config: Config,
    /// One line per option that was ignored or could only be honoured in part.
    pub warnings: Vec<String>,
}

const V4_SECTIONS: [&str; 5] = ["sync_reader", "scan_reader", "rdb_reader", "aof_reader", "redis_writer"];

/// The RedisShake format of `text`, or `None` for a `ferry.toml` (or text that is not TOML,
/// which the `ferry.toml` parser then reports with its line).
pub fn detect(text: &str) -> Option<Format> {
    let table: Table = text.parse().ok()?;
    if table.contains_key("type") {
        return Some(Format::V3);
    }
    if V4_SECTIONS.iter().any(|s| table.contains_key(*s)) {
        return Some(Format::V4);
    }
    if table.contains_key("advanced") {
        // v3 defaults `type` to "sync", so a v3 file may leave it out.
        let v3 = table.contains_key("source") || table.contains_key("target");
        return Some(if v3 { Format::V3 } else { Format::V4 });
    }
    None
}

/// Converts a RedisShake file (either format) to a ferry config, resolving `${NAME}` values
/// and the password variables and validating as for `ferry.toml`. Logs nothing: see [`load`].
pub fn convert(text: &str, name: &str) -> Result<Converted, ConfigError> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
        ConfigError::Parse { path: name.to_string(), line, message: e.message().replace('\n', " ").trim().to_string() }
    })?;
    let format = detect(text).unwrap_or(Format::V4);
    let mut cx = Cx { name, cfg: Config::default(), warnings: Vec::new() };
    match format {
        Format::V3 => cx.v3(&table)?,
        Format::V4 => cx.v4(&table)?,
    }
    let Cx { mut cfg, warnings, .. } = cx;
    cfg.resolve_env(name)?;
    cfg.validate(name)?;
    Ok(Converted { format, config: cfg, warnings })
}

/// [`convert`], with every warning logged (`tracing::warn!`; on stderr when no subscriber is
/// installed yet, as when a binary loads its config before it sets up logging).
pub fn load(text: &str, name: &str) -> Result<Config, ConfigError> {
    let c = convert(text, name)?;
    let logging = tracing::dispatcher::has_been_set();
    for w in &c.warnings {
        tracing::warn!(file = name, "{}: {w}", c.format.describe());
        if !logging {
            eprintln!("warning: {name}, {}: {w}", c.format.describe());
        }
    }
    Ok(c.config)
}

/// The environment variables that place ferry's own listeners, applied by
/// [`Config::load`](crate::Config::load) after parsing either format (a RedisShake file has
/// no `[coordinator]`, `[decoder]` or `[writer]` section): variable → field.
pub const ENV_OVERRIDES: [(&str, &str); 4] = [
    ("FERRY_COORDINATOR_STATUS_ADDR", "coordinator.status_addr"),
    ("FERRY_COORDINATOR_GRPC_ADDR", "coordinator.grpc_addr"),
    ("FERRY_DECODER_LISTEN", "decoder.listen"),
    ("FERRY_WRITER_LISTEN", "writer.listen"),
];

/// Applies [`ENV_OVERRIDES`] from the process environment (a variable that is unset or empty
/// changes nothing) and validates the result.
pub fn apply_env_overrides(cfg: &mut Config, name: &str) -> Result<(), ConfigError> {
    apply_overrides_with(cfg, name, |var| std::env::var(var).ok())
}

/// [`apply_env_overrides`] with the variables looked up by `get`.
pub fn apply_overrides_with(
    cfg: &mut Config,
    name: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let mut changed = false;
    for (var, _) in ENV_OVERRIDES {
        let Some(v) = get(var).filter(|v| !v.trim().is_empty()) else { continue };
        let v = v.trim().to_string();
        match var {
            "FERRY_COORDINATOR_STATUS_ADDR" => cfg.coordinator.status_addr = v,
            "FERRY_COORDINATOR_GRPC_ADDR" => cfg.coordinator.grpc_addr = v,
            "FERRY_DECODER_LISTEN" => cfg.decoder.listen = v,
            _ => cfg.writer.listen = v,
        }
        changed = true;
    }
    if changed {
        cfg.validate(&format!("{name} (with FERRY_* address overrides)"))?;
    }
    Ok(())
}

/// `ferry-coordinator config --explain FILE`: the config every process would use (either
/// format, environment overrides applied) as `ferry.toml` text with secrets replaced by
/// `"<redacted>"`, followed by the warnings as `# warning:` comment lines.
pub fn explain(path: &Path) -> Result<String, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name.clone(), source })?;
    let (mut cfg, warnings, from) = match detect(&text) {
        Some(_) => {
            let c = convert(&text, &name)?;
            (c.config, c.warnings, c.format.describe())
        }
        None => (Config::parse(&text, &name)?, Vec::new(), "a ferry.toml"),
    };
    apply_env_overrides(&mut cfg, &name)?;
    let mut out = format!("# ferry configuration from {name}, {from}\n\n");
    out.push_str(&to_redacted_toml(&cfg));
    if warnings.is_empty() {
        out.push_str("\n# no warnings\n");
    } else {
        out.push_str(&format!("\n# {} warning(s):\n", warnings.len()));
        for w in &warnings {
            out.push_str(&format!("# warning: {w}\n"));
        }
    }
    Ok(out)
}

/// `cfg` as `ferry.toml` text that parses back to the same config, every non-empty secret
/// replaced by `"<redacted>"`. Empty sentinel fields and empty filter rules are left out.
pub fn to_redacted_toml(cfg: &Config) -> String {
    fn s(v: &str) -> String {
        Value::String(v.to_string()).to_string()
    }
    fn secret(v: &str) -> String {
        if v.is_empty() { s("") } else { s("<redacted>") }
    }
    fn strs(v: &[String]) -> String {
        Value::Array(v.iter().map(|x| Value::String(x.clone())).collect()).to_string()
    }
    fn nums(v: &[u64]) -> String {
        format!("[{}]", v.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
    }
    let mut out = String::new();
    let mut section = |title: &str, lines: Vec<(&str, String)>| {
        out.push_str(&format!("[{title}]\n"));
        for (k, v) in lines {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push('\n');
    };
    for (title, r) in [("source", &cfg.source), ("target", &cfg.target)] {
        let mut lines = vec![("type", s(r.kind.as_str())), ("address", s(&r.address)), ("username", s(&r.username))];
        if r.password_file.is_empty() {
            lines.push(("password", secret(&r.password)));
        } else {
            lines.push(("password_file", s(&r.password_file)));
        }
        lines.push(("tls", r.tls.to_string()));
        for (k, v) in [
            ("tls_ca_file", &r.tls_ca_file),
            ("tls_cert_file", &r.tls_cert_file),
            ("tls_key_file", &r.tls_key_file),
            ("tls_server_name", &r.tls_server_name),
        ] {
            if !v.is_empty() {
                lines.push((k, s(v)));
            }
        }
        if r.tls_insecure_skip_verify {
            lines.push(("tls_insecure_skip_verify", "true".into()));
        }
        if let Some(t) = r.sentinel_tls {
            lines.push(("sentinel_tls", t.to_string()));
        }
        if r.kind == DeploymentType::Sentinel || !r.sentinels.is_empty() {
            lines.push(("sentinels", strs(&r.sentinels)));
            lines.push(("master_name", s(&r.master_name)));
            lines.push(("sentinel_username", s(&r.sentinel_username)));
            lines.push(("sentinel_password", secret(&r.sentinel_password)));
        }
        section(title, lines);
    }
    let c = &cfg.coordinator;
    section("coordinator", vec![("status_addr", s(&c.status_addr)), ("grpc_addr", s(&c.grpc_addr))]);
    let r = &cfg.reader;
    section(
        "reader",
        vec![
            ("listening_port", r.listening_port.to_string()),
            ("proto_max_bulk_len", r.proto_max_bulk_len.to_string()),
            ("buffer_bytes", r.buffer_bytes.to_string()),
            ("spool_dir", s(&r.spool_dir)),
            ("spool_max_bytes", r.spool_max_bytes.to_string()),
        ],
    );
    let d = &cfg.decoder;
    section(
        "decoder",
        vec![
            ("listen", s(&d.listen)),
            ("restore_max_bytes", d.restore_max_bytes.to_string()),
            ("chunk_bytes", d.chunk_bytes.to_string()),
            ("allow_newer_rdb", d.allow_newer_rdb.to_string()),
        ],
    );
    let w = &cfg.writer;
    let existing = match w.existing_key {
        ExistingKey::Rewrite => "rewrite",
        ExistingKey::Skip => "skip",
        ExistingKey::Panic => "panic",
    };
    section(
        "writer",
        vec![
            ("listen", s(&w.listen)),
            ("pipeline_count_limit", w.pipeline_count_limit.to_string()),
            ("existing_key", s(existing)),
            ("max_inflight_bytes", w.max_inflight_bytes.to_string()),
            ("max_ops_per_sec", w.max_ops_per_sec.to_string()),
            ("max_bytes_per_sec", w.max_bytes_per_sec.to_string()),
        ],
    );
    let format = match cfg.log.format {
        crate::LogFormat::Text => "text",
        crate::LogFormat::Json => "json",
    };
    section("log", vec![("level", s(&cfg.log.level)), ("format", s(format))]);
    let f = &cfg.filter;
    let mut lines = Vec::new();
    for (k, v) in [
        ("allow_keys", &f.allow_keys),
        ("allow_key_prefix", &f.allow_key_prefix),
        ("allow_key_suffix", &f.allow_key_suffix),
        ("allow_key_regex", &f.allow_key_regex),
        ("block_keys", &f.block_keys),
        ("block_key_prefix", &f.block_key_prefix),
        ("block_key_suffix", &f.block_key_suffix),
        ("block_key_regex", &f.block_key_regex),
    ] {
        if !v.is_empty() {
            lines.push((k, strs(v)));
        }
    }
    for (k, v) in [("allow_db", &f.allow_db), ("block_db", &f.block_db)] {
        if !v.is_empty() {
            lines.push((k, nums(v)));
        }
    }
    for (k, v) in [
        ("allow_command", &f.allow_command),
        ("block_command", &f.block_command),
        ("block_command_group", &f.block_command_group),
    ] {
        if !v.is_empty() {
            lines.push((k, strs(v)));
        }
    }
    if !f.db_map.is_empty() {
        let pairs: Vec<String> = f.db_map.iter().map(|(k, v)| format!("{} = {v}", s(k))).collect();
        lines.push(("db_map", format!("{{ {} }}", pairs.join(", "))));
    }
    section("filter", lines);
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// The command groups ferry's filter knows (`filter.block_command_group`).
const FERRY_GROUPS: [&str; 14] = [
    "string",
    "list",
    "set",
    "sorted_set",
    "hash",
    "stream",
    "generic",
    "scripting",
    "pubsub",
    "server",
    "transactions",
    "geo",
    "hyperloglog",
    "bitmap",
];

/// `[filter]` lists that mean the same in ferry (same names, same semantics).
const FILTER_LISTS: [&str; 10] = [
    "allow_keys",
    "allow_key_prefix",
    "allow_key_suffix",
    "allow_key_regex",
    "block_keys",
    "block_key_prefix",
    "block_key_suffix",
    "block_key_regex",
    "allow_command",
    "block_command",
];

#[derive(Clone, Copy)]
enum Side {
    Source,
    Target,
}

/// The conversion in progress: the config built so far and the warnings.
struct Cx<'a> {
    name: &'a str,
    cfg: Config,
    warnings: Vec<String>,
}

impl Cx<'_> {
    fn warn(&mut self, field: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!("{field}: {message}"));
    }

    fn invalid(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.name.to_string(), field: field.to_string(), message: message.into() }
    }

    fn section<'t>(&self, table: &'t Table, key: &str) -> Result<Option<&'t Table>, ConfigError> {
        match table.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(_) => Err(self.invalid(key, "must be a section ([...])")),
        }
    }

    fn string(&self, field: &str, v: &Value) -> Result<String, ConfigError> {
        v.as_str().map(str::to_string).ok_or_else(|| self.invalid(field, "must be a string"))
    }

    fn bool(&self, field: &str, v: &Value) -> Result<bool, ConfigError> {
        v.as_bool().ok_or_else(|| self.invalid(field, "must be true or false"))
    }

    fn uint(&self, field: &str, v: &Value) -> Result<u64, ConfigError> {
        match v.as_integer() {
            Some(i) if i >= 0 => Ok(i as u64),
            _ => Err(self.invalid(field, "must be a non-negative integer")),
        }
    }

    fn strings(&self, field: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
        let items = v.as_array().ok_or_else(|| self.invalid(field, "must be a list of strings"))?;
        items.iter().map(|i| self.string(field, i)).collect()
    }

    fn uints(&self, field: &str, v: &Value) -> Result<Vec<u64>, ConfigError> {
        let items = v.as_array().ok_or_else(|| self.invalid(field, "must be a list of integers"))?;
        items.iter().map(|i| self.uint(field, i)).collect()
    }

    fn unknown(&mut self, field: &str) {
        self.warn(field, "unknown option (RedisShake ignores it too); ignored");
    }

    /// `tls`: RedisShake connects with TLS and does not verify the server's certificate; so
    /// does ferry with `tls = true` and `tls_insecure_skip_verify = true` (with a warning: a
    /// `tls_ca_file` in a ferry.toml is the safe setting).
    fn tls(&mut self, field: &str, v: &Value, side: Side) -> Result<(), ConfigError> {
        if self.bool(field, v)? {
            let r = match side {
                Side::Source => &mut self.cfg.source,
                Side::Target => &mut self.cfg.target,
            };
            r.tls = true;
            r.tls_insecure_skip_verify = true;
            self.warn(
                field,
                "true: like RedisShake, ferry will not verify the server's certificate                  (tls_insecure_skip_verify = true); write a ferry.toml with tls_ca_file to verify it",
            );
        }
        Ok(())
    }

    /// `version`: RedisShake v3 wants the server's version; ferry learns it from the server.
    fn version(&mut self, field: &str) {
        self.warn(field, "no meaning for ferry (it reads the RDB version from the replication stream); ignored");
    }

    fn v3(&mut self, top: &Table) -> Result<(), ConfigError> {
        for (key, v) in top {
            match key.as_str() {
                "type" => match v.as_str() {
                    Some("sync") => {}
                    Some(t @ ("restore" | "scan")) => {
                        return Err(self.invalid(
                            "type",
                            format!(
                                "\"{t}\": ferry only syncs a live source as a replica (PSYNC), which is \
                                 type = \"sync\""
                            ),
                        ));
                    }
                    _ => return Err(self.invalid("type", "must be \"sync\" (RedisShake v3: sync, restore or scan)")),
                },
                "source" => {
                    let t = self.section(top, "source")?.unwrap();
                    self.v3_source(t)?;
                }
                "target" => {
                    let t = self.section(top, "target")?.unwrap();
                    self.v3_target(t)?;
                }
                "advanced" => {
                    let t = self.section(top, "advanced")?.unwrap();
                    self.advanced(t)?;
                }
                "filter" => {
                    let t = self.section(top, "filter")?.unwrap();
                    self.filter(t)?;
                }
                other => self.unknown(other),
            }
        }
        Ok(())
    }

    fn v3_source(&mut self, t: &Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let field = format!("source.{key}");
            match key.as_str() {
                "address" => self.cfg.source.address = self.string(&field, v)?,
                "username" => self.cfg.source.username = self.string(&field, v)?,
                "password" => self.cfg.source.password = self.string(&field, v)?,
                "tls" => self.tls(&field, v, Side::Source)?,
                "version" => self.version(&field),
                "elasticache_psync" => {
                    if !self.string(&field, v)?.is_empty() {
                        self.warn(
                            &field,
                            "ferry sends the standard PSYNC; ElastiCache's renamed psync command is not \
                             supported (the source will refuse replication); ignored",
                        );
                    }
                }
                "rdb_file_path" => {
                    self.warn(&field, "restore mode only; ferry syncs from the live source; ignored");
                }
                _ => self.unknown(&field),
            }
        }
        Ok(())
    }

    fn v3_target(&mut self, t: &Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let field = format!("target.{key}");
            match key.as_str() {
                "type" => {
                    self.cfg.target.kind = match self.string(&field, v)?.as_str() {
                        "standalone" => DeploymentType::Standalone,
                        "cluster" => DeploymentType::Cluster,
                        other => {
                            return Err(self.invalid(&field, format!("\"{other}\": must be standalone or cluster")));
                        }
                    }
                }
                "address" => self.cfg.target.address = self.string(&field, v)?,
                "username" => self.cfg.target.username = self.string(&field, v)?,
                "password" => self.cfg.target.password = self.string(&field, v)?,
                "tls" => self.tls(&field, v, Side::Target)?,
                "version" => self.version(&field),
                _ => self.unknown(&field),
            }
        }
        Ok(())
    }

    fn v4(&mut self, top: &Table) -> Result<(), ConfigError> {
        let readers: Vec<&str> = ["sync_reader", "scan_reader", "rdb_reader", "aof_reader"]
            .into_iter()
            .filter(|r| top.contains_key(*r))
            .collect();
        match readers.as_slice() {
            [] => return Err(self.invalid("sync_reader", "no reader section: ferry needs [sync_reader] (the source)")),
            [_] => {}
            many => return Err(self.invalid(many[1], format!("more than one reader section: {}", many.join(", ")))),
        }
        for (key, v) in top {
            match key.as_str() {
                "sync_reader" => {
                    let t = self.section(top, key)?.unwrap();
                    self.sync_reader(t)?;
                }
                "scan_reader" => {
                    let t = self.section(top, key)?.unwrap();
                    self.scan_reader(t)?;
                }
                "rdb_reader" | "aof_reader" => {
                    return Err(self.invalid(
                        key,
                        format!(
                            "[{key}] restores a file; ferry copies a live source as a replica (PSYNC) and \
                             cannot read a file into the target"
                        ),
                    ));
                }
                "redis_writer" => {
                    let t = self.section(top, key)?.unwrap();
                    self.redis_writer(t)?;
                }
                "filter" => {
                    let t = self.section(top, key)?.unwrap();
                    self.filter(t)?;
                }
                "advanced" => {
                    let t = self.section(top, key)?.unwrap();
                    self.advanced(t)?;
                }
                "module" => {
                    let t = self.section(top, key)?.unwrap();
                    for k in t.keys() {
                        let field = format!("module.{k}");
                        if k == "target_mbbloom_version" {
                            self.warn(
                                &field,
                                "no equivalent: ferry copies module values as RESTORE payloads, unchanged; ignored",
                            );
                        } else {
                            self.unknown(&field);
                        }
                    }
                }
                "function" | "transform" => {
                    if !self.string(key, v)?.trim().is_empty() {
                        self.function_warning(key);
                    }
                }
                other => self.unknown(other),
            }
        }
        if !top.contains_key("redis_writer") {
            self.warn("redis_writer", "missing; the target is ferry's default (standalone 127.0.0.1:6380)");
        }
        Ok(())
    }

    fn function_warning(&mut self, field: &str) {
        self.warn(
            field,
            "ferry has no Lua functions: every command that passes [filter] reaches the target unchanged; ignored",
        );
    }

    /// `cluster`, `address`, `username`, `password`, `tls` of a reader: the source.
    fn source_common(&mut self, field: &str, key: &str, v: &Value) -> Result<bool, ConfigError> {
        match key {
            "cluster" => {
                if self.bool(field, v)? {
                    self.cfg.source.kind = DeploymentType::Cluster;
                }
            }
            "address" => self.cfg.source.address = self.string(field, v)?,
            "username" => self.cfg.source.username = self.string(field, v)?,
            "password" => self.cfg.source.password = self.string(field, v)?,
            "tls" => self.tls(field, v, Side::Source)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn sync_reader(&mut self, t: &Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let field = format!("sync_reader.{key}");
            if self.source_common(&field, key, v)? {
                continue;
            }
            match key.as_str() {
                "sync_rdb" => {
                    if !self.bool(&field, v)? {
                        return Err(self.invalid(
                            &field,
                            "sync_rdb = false: ferry always starts with a full copy (and rewrites the \
                             target's keys by writer.existing_key); it cannot skip it",
                        ));
                    }
                }
                "sync_aof" => {
                    if !self.bool(&field, v)? {
                        self.warn(
                            &field,
                            "false: ferry does not stop after the full copy, it keeps applying the \
                             source's writes; stop it when the copy is done (phase \"incremental\" in /status)",
                        );
                    }
                }
                "prefer_replica" => {
                    if self.bool(&field, v)? {
                        self.warn(
                            &field,
                            "true: ferry replicates from the leader (one pipeline per master) so that it \
                             can follow failovers; ignored",
                        );
                    }
                }
                // ferry announces diskless capability always; the source's repl-diskless-sync decides.
                "try_diskless" => {
                    self.bool(&field, v)?;
                }
                _ => self.unknown(&field),
            }
        }
        Ok(())
    }

    fn scan_reader(&mut self, t: &Table) -> Result<(), ConfigError> {
        self.warn(
            "scan_reader",
            "ferry copies with PSYNC as a replica, not with SCAN + DUMP: the source must allow replication \
             (SYNC/PSYNC); the connection options are used for that",
        );
        for (key, v) in t {
            let field = format!("scan_reader.{key}");
            if self.source_common(&field, key, v)? {
                continue;
            }
            match key.as_str() {
                "dbs" => {
                    let dbs = self.uints(&field, v)?;
                    if !dbs.is_empty() {
                        self.cfg.filter.allow_db.extend(dbs);
                    }
                }
                "scan" => {
                    if !self.bool(&field, v)? {
                        return Err(self
                            .invalid(&field, "scan = false: ferry always starts with a full copy; it cannot skip it"));
                    }
                }
                "ksn" => {
                    if !self.bool(&field, v)? {
                        self.warn(
                            &field,
                            "false: ferry does not stop after the full copy, it keeps applying the \
                             source's writes (from the replication stream, not keyspace notifications)",
                        );
                    }
                }
                "count" => self.warn(&field, "no equivalent (ferry does not SCAN); ignored"),
                _ => self.unknown(&field),
            }
        }
        Ok(())
    }

    fn redis_writer(&mut self, t: &Table) -> Result<(), ConfigError> {
        let mut sentinel = false;
        let mut master = String::new();
        let mut address = None;
        for (key, v) in t {
            let field = format!("redis_writer.{key}");
            match key.as_str() {
                "cluster" => {
                    if self.bool(&field, v)? {
                        self.cfg.target.kind = DeploymentType::Cluster;
                    }
                }
                "sentinel" => sentinel = self.bool(&field, v)?,
                "master" => master = self.string(&field, v)?,
                "address" => address = Some(self.string(&field, v)?),
                "username" => self.cfg.target.username = self.string(&field, v)?,
                "password" => self.cfg.target.password = self.string(&field, v)?,
                "tls" => self.tls(&field, v, Side::Target)?,
                "off_reply" => {
                    if self.bool(&field, v)? {
                        self.warn(
                            &field,
                            "true: ferry reads every reply, since it acknowledges the source offset only \
                             once the target applied it (and counts every error); ignored",
                        );
                    }
                }
                "buff_send" => {
                    self.bool(&field, v)?;
                    self.warn(
                        &field,
                        "no equivalent: ferry pipelines up to advanced.pipeline_count_limit commands; ignored",
                    );
                }
                _ => self.unknown(&field),
            }
        }
        if sentinel {
            if self.cfg.target.kind == DeploymentType::Cluster {
                return Err(self.invalid("redis_writer.sentinel", "cluster and sentinel cannot both be true"));
            }
            let target: &mut RedisConfig = &mut self.cfg.target;
            target.kind = DeploymentType::Sentinel;
            target.master_name = master;
            target.sentinels = address.into_iter().collect();
        } else {
            if !master.is_empty() {
                self.warn("redis_writer.master", "only used with sentinel = true; ignored");
            }
            if let Some(a) = address {
                self.cfg.target.address = a;
            }
        }
        Ok(())
    }

    fn filter(&mut self, t: &Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let field = format!("filter.{key}");
            if FILTER_LISTS.contains(&key.as_str()) {
                let items = self.strings(&field, v)?;
                let f = &mut self.cfg.filter;
                let list = match key.as_str() {
                    "allow_keys" => &mut f.allow_keys,
                    "allow_key_prefix" => &mut f.allow_key_prefix,
                    "allow_key_suffix" => &mut f.allow_key_suffix,
                    "allow_key_regex" => &mut f.allow_key_regex,
                    "block_keys" => &mut f.block_keys,
                    "block_key_prefix" => &mut f.block_key_prefix,
                    "block_key_suffix" => &mut f.block_key_suffix,
                    "block_key_regex" => &mut f.block_key_regex,
                    "allow_command" => &mut f.allow_command,
                    _ => &mut f.block_command,
                };
                list.extend(items);
                continue;
            }
            match key.as_str() {
                "allow_db" => {
                    let dbs = self.uints(&field, v)?;
                    self.cfg.filter.allow_db.extend(dbs);
                }
                "block_db" => {
                    let dbs = self.uints(&field, v)?;
                    self.cfg.filter.block_db.extend(dbs);
                }
                "block_command_group" => {
                    for g in self.strings(&field, v)? {
                        let lower = g.trim().to_ascii_lowercase();
                        if FERRY_GROUPS.contains(&lower.as_str()) {
                            self.cfg.filter.block_command_group.push(lower);
                        } else if matches!(lower.as_str(), "cluster" | "connection" | "sentinel") {
                            self.warn(
                                &field,
                                format!("{g}: these commands never appear in the replication stream; dropped"),
                            );
                        } else {
                            self.warn(&field, format!("{g}: a command group ferry does not know; not blocked"));
                        }
                    }
                }
                "allow_command_group" => {
                    if !self.strings(&field, v)?.is_empty() {
                        self.warn(
                            &field,
                            "no equivalent: list the commands in allow_command, or block the other groups \
                             with block_command_group; ignored, so commands of every group reach the target",
                        );
                    }
                }
                "function" => {
                    if !self.string(&field, v)?.trim().is_empty() {
                        self.function_warning(&field);
                    }
                }
                _ => self.unknown(&field),
            }
        }
        Ok(())
    }

    fn advanced(&mut self, t: &Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let field = format!("advanced.{key}");
            match key.as_str() {
                "dir" => {
                    self.string(&field, v)?;
                    self.warn(
                        &field,
                        "no equivalent: ferry streams the RDB without storing it (the command stream \
                         spools to reader.spool_dir, default the system temp dir); ignored",
                    );
                }
                "ncpu" => {
                    self.uint(&field, v)?;
                    self.warn(&field, "no equivalent: every ferry process uses all cores; ignored");
                }
                "pprof_port" => {
                    self.uint(&field, v)?;
                    self.warn(&field, "no equivalent: ferry has no pprof endpoint; ignored");
                }
                "metrics_port" | "status_port" => {
                    let port = self.uint(&field, v)?;
                    if port == 0 {
                        self.warn(
                            &field,
                            "0 disables it in RedisShake; ferry always serves /status, /metrics and /healthz, \
                             on coordinator.status_addr (default 127.0.0.1:7701)",
                        );
                    } else if port > u16::MAX as u64 {
                        return Err(self.invalid(&field, format!("{port} is not a port")));
                    } else {
                        // Loopback only: the status API is not meant to be exposed.
                        self.cfg.coordinator.status_addr = format!("127.0.0.1:{port}");
                    }
                }
                "log_level" => {
                    let level = self.string(&field, v)?.trim().to_ascii_lowercase();
                    if !matches!(level.as_str(), "debug" | "info" | "warn" | "error") {
                        return Err(self.invalid(&field, format!("\"{level}\": must be debug, info, warn or error")));
                    }
                    self.cfg.log.level = level;
                }
                "log_file" => {
                    self.string(&field, v)?;
                    self.warn(&field, "ferry logs to stderr (redirect it to a file); ignored");
                }
                "log_interval" => {
                    self.uint(&field, v)?;
                    self.warn(
                        &field,
                        "no equivalent: progress is in /status and /metrics on coordinator.status_addr; ignored",
                    );
                }
                k if k.starts_with("log_") => {
                    self.warn(&field, "ferry logs to stderr and does not rotate logs; ignored");
                }
                "rdb_restore_command_behavior" => {
                    self.cfg.writer.existing_key = match self.string(&field, v)?.trim() {
                        "rewrite" => ExistingKey::Rewrite,
                        "skip" | "ignore" => ExistingKey::Skip,
                        "panic" => ExistingKey::Panic,
                        other => {
                            return Err(self.invalid(&field, format!("\"{other}\": must be panic, rewrite or skip")));
                        }
                    }
                }
                "pipeline_count_limit" => {
                    let n = self.uint(&field, v)?;
                    self.cfg.writer.pipeline_count_limit = usize::try_from(n).unwrap_or(usize::MAX);
                }
                "target_redis_client_max_querybuf_len" => {
                    let n = self.uint(&field, v)?;
                    if n == 0 {
                        return Err(self.invalid(&field, "must be at least 1"));
                    }
                    self.cfg.writer.max_inflight_bytes = n;
                }
                "target_redis_proto_max_bulk_len" => {
                    // RedisShake sends values whose DUMP is larger than this as commands instead
                    // of one RESTORE: that is decoder.restore_max_bytes. Chunks must fit too.
                    let n = self.uint(&field, v)?;
                    if n == 0 {
                        return Err(self.invalid(&field, "must be at least 1"));
                    }
                    // Never above ferry's own default, which keeps the decoder's memory bounded.
                    self.cfg.decoder.restore_max_bytes = self.cfg.decoder.restore_max_bytes.min(n);
                    self.cfg.decoder.chunk_bytes = self.cfg.decoder.chunk_bytes.min(n);
                }
                "aws_psync" => {
                    if !self.string(&field, v)?.is_empty() {
                        self.warn(
                            &field,
                            "ferry sends the standard PSYNC; ElastiCache's renamed psync command is not \
                             supported (the source will refuse replication); ignored",
                        );
                    }
                }
                "empty_db_before_sync" => {
                    self.cfg.writer.empty_target_before_full_copy = self.bool(&field, v)?;
                }
                _ => self.unknown(&field),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The appendix of seed 000, verbatim (RedisShake v3 `sync.toml`).
    const SEED_SYNC_TOML: &str = r#"type = "sync"
 
[source]
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
address = "10.233.109.145:6379"
username = "" # keep empty if not using ACL
password = "3wPxzWffdn" # keep empty if no authentication is required
tls = false
elasticache_psync = "" # using when source is ElastiCache. ref: https://github.com/alibaba/RedisShake/issues/373
 
[target]
type = "cluster" # "standalone" or "cluster"
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
# When the target is a cluster, write the address of one of the nodes.
# RedisShake will obtain other nodes through the __cluster nodes__  command.
address = "10.233.103.2:6379"
username = "" # keep empty if not using ACL
password = "Aa123456" # keep empty if no authentication is required
tls = false
 
[advanced]
dir = "data"
 
# runtime.GOMAXPROCS, 0 means use runtime.NumCPU() cpu cores
ncpu = 4
 
# pprof port, 0 means disable
pprof_port = 0
 
# metric port, 0 means disable
metrics_port = 0
 
# log
log_file = "redis-shake.log"
log_level = "info" # debug, info or warn
log_interval = 5 # in seconds
 
# redis-shake gets key and value from rdb file, and uses RESTORE command to
# create the key in target redis. Redis RESTORE will return a "Target key name
# is busy" error when key already exists. You can use this configmap
# to change the default behavior of restore:
# panic:   redis-shake will stop when meet "Target key name is busy" error.
# rewrite: redis-shake will replace the key with new value.
# ignore:  redis-shake will skip restore the key when meet "Target key name is busy" error.
rdb_restore_command_behavior = "rewrite" # panic, rewrite or skip
 
# pipeline
pipeline_count_limit = 1024
 
# Client query buffers accumulate new commands. They are limited to a fixed
# amount by default. This amount is normally 1gb.
target_redis_client_max_querybuf_len = 1024_000_000
 
# In the Redis protocol, bulk requests, that are, elements representing single
# strings, are normally limited to 512 mb.
target_redis_proto_max_bulk_len = 512_000_000
"#;

    /// A RedisShake v4 `shake.toml` with every option set away from its default.
    const SHAKE_TOML: &str = r#"
[sync_reader]
cluster = true
address = "10.0.0.1:6379"
username = "shake"
password = "s3cret"
tls = false
sync_rdb = true
sync_aof = false
prefer_replica = true
try_diskless = true

[redis_writer]
cluster = false
sentinel = false
master = ""
address = "10.0.0.2:6380"
username = "writer"
password = "t4rget"
tls = false
off_reply = true

[filter]
allow_keys = ["user:1001"]
allow_key_prefix = ["user:", "product:"]
allow_key_suffix = [":active"]
allow_key_regex = [":\\d{11}:"]
block_keys = ["temp:1001"]
block_key_prefix = ["temp:"]
block_key_suffix = [":tmp"]
block_key_regex = [":test:\\d{11}:"]
allow_db = [0, 1, 2]
block_db = [3]
allow_command = ["SET", "DEL"]
block_command = ["FLUSHDB"]
allow_command_group = ["STRING"]
block_command_group = ["SCRIPTING", "PUBSUB", "CONNECTION", "TAIRHASH"]
function = "print(KEYS)"

[advanced]
dir = "data"
ncpu = 0
pprof_port = 0
status_port = 8080
log_file = "shake.log"
log_level = "warn"
log_interval = 5
rdb_restore_command_behavior = "skip"
pipeline_count_limit = 512
target_redis_client_max_querybuf_len = 1073741824
target_redis_proto_max_bulk_len = 1048576
aws_psync = ""
empty_db_before_sync = false
no_such_option = 1

[module]
target_mbbloom_version = 20603
"#;

    fn has(warnings: &[String], field: &str) -> bool {
        warnings.iter().any(|w| w.starts_with(&format!("{field}: ")))
    }

    #[test]
    fn detection() {
        assert_eq!(detect(SEED_SYNC_TOML), Some(Format::V3));
        assert_eq!(detect(SHAKE_TOML), Some(Format::V4));
        assert_eq!(detect("[redis_writer]\naddress = \"a:1\"\n"), Some(Format::V4));
        assert_eq!(detect("[source]\naddress = \"a:1\"\n[advanced]\nncpu = 1\n"), Some(Format::V3));
        assert_eq!(detect("[source]\naddress = \"a:1\"\n[filter]\nallow_db = [1]\n"), None);
        assert_eq!(detect(""), None);
        assert_eq!(detect("not toml ["), None);
    }

    #[test]
    fn v3_seed_sync_toml_maps_every_option() {
        let c = convert(SEED_SYNC_TOML, "sync.toml").unwrap();
        assert_eq!(c.format, Format::V3);
        let cfg = &c.config;
        assert_eq!(cfg.source.kind, DeploymentType::Standalone);
        assert_eq!(cfg.source.address, "10.233.109.145:6379");
        assert_eq!(cfg.source.username, "");
        assert_eq!(cfg.source.password, "3wPxzWffdn");
        assert_eq!(cfg.target.kind, DeploymentType::Cluster);
        assert_eq!(cfg.target.address, "10.233.103.2:6379");
        assert_eq!(cfg.target.password, "Aa123456");
        assert_eq!(cfg.writer.existing_key, ExistingKey::Rewrite);
        assert_eq!(cfg.writer.pipeline_count_limit, 1024);
        assert_eq!(cfg.decoder.restore_max_bytes, 16 * 1024 * 1024);
        assert_eq!(cfg.decoder.chunk_bytes, 1024 * 1024);
        assert_eq!(cfg.log.level, "info");
        // ferry-only settings keep their defaults.
        assert_eq!(cfg.coordinator.status_addr, "127.0.0.1:7701");
        assert_eq!(cfg.coordinator.grpc_addr, "127.0.0.1:7702");
        assert_eq!(cfg.decoder.listen, "127.0.0.1:7711");
        assert_eq!(cfg.writer.listen, "127.0.0.1:7712");
        let w = &c.warnings;
        for field in [
            "source.version",
            "target.version",
            "advanced.dir",
            "advanced.ncpu",
            "advanced.pprof_port",
            "advanced.metrics_port",
            "advanced.log_file",
            "advanced.log_interval",
        ] {
            assert!(has(w, field), "no warning for {field}: {w:#?}");
        }
        // One warning each, and none for options ferry honours.
        assert_eq!(w.len(), 8, "{w:#?}");
        assert_eq!(cfg.writer.max_inflight_bytes, 1_024_000_000);
        for field in [
            "source.tls",
            "source.elasticache_psync",
            "advanced.log_level",
            "advanced.pipeline_count_limit",
            "advanced.target_redis_client_max_querybuf_len",
        ] {
            assert!(!has(w, field), "unexpected warning for {field}");
        }
    }

    #[test]
    fn v3_options() {
        let c = convert(
            "type = \"sync\"\n[source]\naddress = \"s:1\"\nelasticache_psync = \"x\"\nbogus = 1\n\
             [target]\naddress = \"t:2\"\n[advanced]\nmetrics_port = 9100\nrdb_restore_command_behavior = \"ignore\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.config.target.kind, DeploymentType::Standalone);
        assert_eq!(c.config.coordinator.status_addr, "127.0.0.1:9100");
        assert_eq!(c.config.writer.existing_key, ExistingKey::Skip);
        assert!(has(&c.warnings, "source.elasticache_psync"));
        assert!(has(&c.warnings, "source.bogus"));
        assert_eq!(c.warnings.len(), 2, "{:#?}", c.warnings);

        let e = convert("type = \"restore\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("type") && e.contains("restore"), "{e}");
        let e = convert("type = \"sync\"\n[target]\ntype = \"sentinel\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("target.type"), "{e}");
        let c = convert("type = \"sync\"\n[source]\ntls = true\n[target]\ntls = false\n", "f").unwrap();
        assert!(c.config.source.tls && c.config.source.tls_insecure_skip_verify);
        assert!(!c.config.target.tls);
        assert!(has(&c.warnings, "source.tls") && c.warnings.len() == 1, "{:#?}", c.warnings);
        let e = convert("type = \"sync\"\n[advanced]\nrdb_restore_command_behavior = \"merge\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("advanced.rdb_restore_command_behavior"), "{e}");
        let e = convert("type = \"sync\"\n[advanced]\npipeline_count_limit = 0\n", "f").unwrap_err().to_string();
        assert!(e.contains("writer.pipeline_count_limit"), "{e}");
        let e = convert("type = \"sync\"\n[source]\naddress = \"nohost\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("source.address"), "{e}");
    }

    #[test]
    fn v4_shake_toml_maps_every_option() {
        let c = convert(SHAKE_TOML, "shake.toml").unwrap();
        assert_eq!(c.format, Format::V4);
        let cfg = &c.config;
        assert_eq!(cfg.source.kind, DeploymentType::Cluster);
        assert_eq!(cfg.source.address, "10.0.0.1:6379");
        assert_eq!(cfg.source.username, "shake");
        assert_eq!(cfg.source.password, "s3cret");
        assert_eq!(cfg.target.kind, DeploymentType::Standalone);
        assert_eq!(cfg.target.address, "10.0.0.2:6380");
        assert_eq!(cfg.target.username, "writer");
        assert_eq!(cfg.target.password, "t4rget");
        let f = &cfg.filter;
        assert_eq!(f.allow_keys, ["user:1001"]);
        assert_eq!(f.allow_key_prefix, ["user:", "product:"]);
        assert_eq!(f.allow_key_suffix, [":active"]);
        assert_eq!(f.allow_key_regex, [":\\d{11}:"]);
        assert_eq!(f.block_keys, ["temp:1001"]);
        assert_eq!(f.block_key_prefix, ["temp:"]);
        assert_eq!(f.block_key_suffix, [":tmp"]);
        assert_eq!(f.block_key_regex, [":test:\\d{11}:"]);
        assert_eq!(f.allow_db, [0, 1, 2]);
        assert_eq!(f.block_db, [3]);
        assert_eq!(f.allow_command, ["SET", "DEL"]);
        assert_eq!(f.block_command, ["FLUSHDB"]);
        assert_eq!(f.block_command_group, ["scripting", "pubsub"]);
        assert_eq!(cfg.coordinator.status_addr, "127.0.0.1:8080");
        assert_eq!(cfg.log.level, "warn");
        assert_eq!(cfg.writer.existing_key, ExistingKey::Skip);
        assert_eq!(cfg.writer.pipeline_count_limit, 512);
        assert_eq!(cfg.decoder.restore_max_bytes, 1_048_576);
        assert_eq!(cfg.decoder.chunk_bytes, 1_048_576);
        let w = &c.warnings;
        for field in [
            "sync_reader.sync_aof",
            "sync_reader.prefer_replica",
            "redis_writer.off_reply",
            "filter.allow_command_group",
            "filter.block_command_group", // CONNECTION
            "filter.function",
            "advanced.dir",
            "advanced.ncpu",
            "advanced.pprof_port",
            "advanced.log_file",
            "advanced.log_interval",
            "advanced.no_such_option",
            "module.target_mbbloom_version",
        ] {
            assert!(has(w, field), "no warning for {field}: {w:#?}");
        }
        // block_command_group warns twice: CONNECTION and TAIRHASH.
        assert_eq!(w.len(), 14, "{w:#?}");
        for field in ["sync_reader.try_diskless", "sync_reader.tls", "advanced.status_port", "advanced.aws_psync"] {
            assert!(!has(w, field), "unexpected warning for {field}");
        }
    }

    #[test]
    fn v4_targets_and_readers() {
        let c = convert("[sync_reader]\naddress = \"s:1\"\n[redis_writer]\ncluster = true\naddress = \"t:1\"\n", "f")
            .unwrap();
        assert_eq!(c.config.source.kind, DeploymentType::Standalone);
        assert_eq!(c.config.target.kind, DeploymentType::Cluster);
        assert!(c.warnings.is_empty(), "{:#?}", c.warnings);

        let c = convert(
            "[sync_reader]\naddress = \"s:1\"\n[redis_writer]\nsentinel = true\nmaster = \"mymaster\"\naddress = \"10.1.1.1:26379\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.config.target.kind, DeploymentType::Sentinel);
        assert_eq!(c.config.target.master_name, "mymaster");
        assert_eq!(c.config.target.sentinels, ["10.1.1.1:26379"]);

        let c = convert(
            "[scan_reader]\naddress = \"s:1\"\ndbs = [1, 5]\ncount = 10\n[redis_writer]\naddress = \"t:1\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.config.source.address, "s:1");
        assert_eq!(c.config.filter.allow_db, [1, 5]);
        assert!(has(&c.warnings, "scan_reader") && has(&c.warnings, "scan_reader.count"), "{:#?}", c.warnings);

        let e = convert("[rdb_reader]\nfilepath = \"/tmp/dump.rdb\"\n[redis_writer]\n", "f").unwrap_err().to_string();
        assert!(e.contains("rdb_reader"), "{e}");
        let e = convert("[aof_reader]\nfilepath = \"/tmp/x.aof\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("aof_reader"), "{e}");
        let e = convert("[sync_reader]\n[scan_reader]\n", "f").unwrap_err().to_string();
        assert!(e.contains("more than one reader"), "{e}");
        let e = convert("[redis_writer]\naddress = \"t:1\"\n", "f").unwrap_err().to_string();
        assert!(e.contains("no reader"), "{e}");
        let e = convert("[sync_reader]\nsync_rdb = false\n", "f").unwrap_err().to_string();
        assert!(e.contains("sync_reader.sync_rdb"), "{e}");
        let c = convert("[sync_reader]\ntls = true\n[redis_writer]\ntls = true\n", "f").unwrap();
        assert!(c.config.source.tls && c.config.target.tls && c.config.target.tls_insecure_skip_verify);
        assert!(has(&c.warnings, "sync_reader.tls") && has(&c.warnings, "redis_writer.tls"), "{:#?}", c.warnings);
        let text = to_redacted_toml(&c.config);
        assert!(text.contains("tls = true\ntls_insecure_skip_verify = true"), "{text}");
        Config::parse(&text, "explained").unwrap();
        let e = convert("[sync_reader]\naddress = 5\n", "f").unwrap_err().to_string();
        assert!(e.contains("sync_reader.address") && e.contains("string"), "{e}");
        // Unknown sections and keys only warn.
        let c = convert("[sync_reader]\nfoo = 1\n[redis_writer]\n[whatever]\nx = 1\n", "f").unwrap();
        assert!(has(&c.warnings, "sync_reader.foo") && has(&c.warnings, "whatever"), "{:#?}", c.warnings);
    }

    #[test]
    fn empty_db_before_sync_empties_the_target() {
        for text in [
            "[sync_reader]\n[redis_writer]\n[advanced]\nempty_db_before_sync = true\n",
            "type = \"sync\"\n[advanced]\nempty_db_before_sync = true\n",
        ] {
            let c = convert(text, "shake.toml").unwrap();
            assert!(c.config.writer.empty_target_before_full_copy);
        }
        let c = convert("[sync_reader]\n[redis_writer]\n[advanced]\nempty_db_before_sync = false\n", "f").unwrap();
        assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    }

    #[test]
    fn secrets_from_env_apply_to_redisshake_files() {
        // SAFETY: this test is the only one touching this variable.
        unsafe { std::env::set_var("FERRY_TEST_SHAKE_SECRET", "pw") };
        let c = convert("[sync_reader]\npassword = \"${FERRY_TEST_SHAKE_SECRET}\"\n", "f").unwrap();
        assert_eq!(c.config.source.password, "pw");
    }

    #[test]
    fn env_overrides() {
        let mut cfg = Config::default();
        let vars = [
            ("FERRY_COORDINATOR_STATUS_ADDR", "127.0.0.1:1"),
            ("FERRY_COORDINATOR_GRPC_ADDR", "127.0.0.1:2"),
            ("FERRY_DECODER_LISTEN", "127.0.0.1:3"),
            ("FERRY_WRITER_LISTEN", " 127.0.0.1:4 "),
        ];
        let get = |v: &str| vars.iter().find(|(k, _)| *k == v).map(|(_, x)| x.to_string());
        cfg.source.address = "127.0.0.1:6379".into();
        cfg.target.address = "127.0.0.1:6380".into();
        apply_overrides_with(&mut cfg, "f", get).unwrap();
        assert_eq!(cfg.coordinator.status_addr, "127.0.0.1:1");
        assert_eq!(cfg.coordinator.grpc_addr, "127.0.0.1:2");
        assert_eq!(cfg.decoder.listen, "127.0.0.1:3");
        assert_eq!(cfg.writer.listen, "127.0.0.1:4");
        let e = apply_overrides_with(&mut cfg, "f", |v| (v == "FERRY_DECODER_LISTEN").then(|| "nope".to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("decoder.listen") && e.contains("FERRY_"), "{e}");
        // Unset or empty: nothing changes.
        apply_overrides_with(&mut cfg, "f", |_| Some(String::new())).unwrap();
        assert_eq!(cfg.writer.listen, "127.0.0.1:4");
    }

    #[test]
    fn explained_toml_is_redacted_and_parses_back() {
        let c = convert(SHAKE_TOML, "shake.toml").unwrap();
        let text = to_redacted_toml(&c.config);
        assert!(!text.contains("s3cret") && !text.contains("t4rget"), "{text}");
        assert_eq!(text.matches("\"<redacted>\"").count(), 2, "{text}");
        let back = Config::parse(&text, "explained").unwrap();
        assert_eq!(to_redacted_toml(&back), text);
        assert_eq!(back.filter.allow_key_regex, [":\\d{11}:"]);
        assert_eq!(back.coordinator.status_addr, "127.0.0.1:8080");
        // A plain ferry.toml round-trips too, db_map and sentinels included.
        let cfg = Config::parse(
            "[source]\ntype = \"sentinel\"\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"m\"\n\
             sentinel_password = \"x\"\n[filter]\ndb_map = { \"1\" = 2 }\n",
            "f",
        )
        .unwrap();
        let text = to_redacted_toml(&cfg);
        assert!(!text.contains("\"x\""), "{text}");
        assert_eq!(to_redacted_toml(&Config::parse(&text, "f").unwrap()), text);
    }

    #[test]
    fn explain_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("ferry-redisshake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sync.toml");
        std::fs::write(&path, SEED_SYNC_TOML).unwrap();
        let out = explain(&path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(out.contains(", a RedisShake v3 sync.toml\n"), "{out}");
        assert!(out.contains("[target]\ntype = \"cluster\"\naddress = \"10.233.103.2:6379\""), "{out}");
        assert!(!out.contains("3wPxzWffdn") && !out.contains("Aa123456"), "{out}");
        assert!(out.contains("# warning: advanced.ncpu: "), "{out}");
        assert!(out.contains("# 8 warning(s):"), "{out}");
    }
}
