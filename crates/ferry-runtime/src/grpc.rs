//! gRPC links between ferry's processes: addresses, channels and servers, mutual TLS
//! (`[grpc]`), and the one mapping from errors to `tonic::Status`.

use std::time::Duration;

use anyhow::Context;

/// The largest message between ferry's processes, the same on every link (a frame of the
/// source's stream, a batch for the target): a bigger one would be refused by the receiver.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The largest single argument of a source command the reader takes: it travels in one
/// message, with room for the frame around it.
pub const MAX_COMMAND_BYTES: usize = MAX_MESSAGE_BYTES - 1024 * 1024;

/// `host:port` → `http://host:port`, or `https://` when the links are TLS (`[grpc]`).
/// A scheme given with the address follows the config too (`http://` with TLS set cannot work).
pub fn grpc_url(addr: &str) -> String {
    let host = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr);
    if GRPC_TLS.get().is_some_and(Option::is_some) { format!("https://{host}") } else { format!("http://{host}") }
}

/// Mutual TLS between ferry's processes (`[grpc]`): the CA, this process's identity.
pub struct GrpcTls {
    ca: tonic::transport::Certificate,
    identity: tonic::transport::Identity,
    server_name: String,
}

/// Set once per process, from its config, before any gRPC link is made.
static GRPC_TLS: std::sync::OnceLock<Option<GrpcTls>> = std::sync::OnceLock::new();

/// Reads the `[grpc]` TLS files (an unreadable one is a configuration error).
pub fn init_grpc_tls(cfg: &ferry_config::GrpcConfig) -> anyhow::Result<()> {
    let tls = if cfg.tls() {
        let read = |field: &str, path: &str| {
            std::fs::read(path).map_err(|e| {
                ferry_config::ConfigError::field(format!("grpc.{field}"), format!("cannot read {path}: {e}"))
            })
        };
        Some(GrpcTls {
            ca: tonic::transport::Certificate::from_pem(read("tls_ca_file", &cfg.tls_ca_file)?),
            identity: tonic::transport::Identity::from_pem(
                read("tls_cert_file", &cfg.tls_cert_file)?,
                read("tls_key_file", &cfg.tls_key_file)?,
            ),
            server_name: cfg.tls_server_name.clone(),
        })
    } else {
        None
    };
    let _ = GRPC_TLS.set(tls);
    Ok(())
}

/// A channel to another ferry process (`url` from [`grpc_url`]), over mutual TLS when set.
pub async fn grpc_channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad gRPC address {url}"))?
        .connect_timeout(Duration::from_secs(10));
    if let Some(Some(t)) = GRPC_TLS.get() {
        let host = url.rsplit("://").next().unwrap_or(url);
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_matches(['[', ']']);
        let name = if t.server_name.is_empty() { host } else { &t.server_name };
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(t.ca.clone())
            .identity(t.identity.clone())
            .domain_name(name);
        endpoint = endpoint.tls_config(tls).context("gRPC TLS settings")?;
    }
    Ok(endpoint.connect().await?)
}

/// A gRPC server builder, requiring client certificates of the CA when TLS is set.
pub fn grpc_server() -> anyhow::Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    Ok(match GRPC_TLS.get() {
        Some(Some(t)) => builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new().identity(t.identity.clone()).client_ca_root(t.ca.clone()),
            )
            .context("gRPC TLS settings")?,
        _ => builder,
    })
}

/// Maps any error to a gRPC status (one place, so messages stay consistent).
pub fn to_status(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}
