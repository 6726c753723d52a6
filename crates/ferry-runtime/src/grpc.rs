//! gRPC links between ferry's processes: addresses, channels and servers, mutual TLS
//! (`[grpc]`), and the one mapping from errors to `tonic::Status`.

use std::time::Duration;

use anyhow::Context;

/// The largest message between ferry's processes, the same on every link (a frame of the
/// source's stream, a batch for the target): a bigger one would be refused by the receiver.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How many bytes of one gRPC stream may be in flight to the process that receives it.
pub const STREAM_WINDOW: u32 = 8 << 20;

/// The largest single argument of a source command the reader takes: it travels in one
/// message, with room for the frame around it.
pub const MAX_COMMAND_BYTES: usize = MAX_MESSAGE_BYTES - 1024 * 1024;

/// Whether `addr` (`host:port`, `[v6]:port`, or a URL) is on this host's loopback.
pub fn is_loopback(addr: &str) -> bool {
    let a = addr.rsplit("://").next().unwrap_or(addr);
    let host = a.rsplit_once(':').map(|(h, _)| h).unwrap_or(a).trim_matches(['[', ']']);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses plaintext links between ferry's processes off loopback: without `[grpc]` TLS,
/// every listener and peer address of the configuration (and `coordinator`, the one this
/// process talks to) must be loopback, unless `[grpc] insecure = true` says otherwise (then
/// a loud warning). Anyone who reaches a plaintext writer could send any command to a side.
pub fn check_plaintext(cfg: &ferry_config::Config, coordinator: &str) -> anyhow::Result<()> {
    if cfg.grpc.tls() {
        return Ok(());
    }
    let addrs = [
        ("coordinator.grpc_addr", cfg.coordinator.grpc_addr.as_str()),
        ("decoder.listen", cfg.decoder.listen.as_str()),
        ("decoder.advertise", cfg.decoder.advertise.as_str()),
        ("writer.listen", cfg.writer.listen.as_str()),
        ("writer.advertise", cfg.writer.advertise.as_str()),
        ("--coordinator", coordinator),
    ];
    let Some((key, addr)) = addrs.into_iter().find(|(_, a)| !a.is_empty() && !is_loopback(a)) else { return Ok(()) };
    if cfg.grpc.insecure {
        tracing::warn!(
            key,
            addr,
            "INSECURE: the links between ferry's processes are plaintext and unauthenticated off loopback ([grpc] insecure = true): anyone who reaches them can write into either side"
        );
        return Ok(());
    }
    Err(ferry_config::ConfigError::field(
        key,
        format!(
            "{addr} is not loopback and the links between ferry's processes are not TLS: set [grpc] tls_ca_file, \
             tls_cert_file and tls_key_file (see the README's security model), or [grpc] insecure = true to accept \
             plaintext"
        ),
    )
    .into())
}

/// The stream of acknowledgements a decoder or writer session sends upstream.
pub type AckStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ferry_proto::Ack, tonic::Status>> + Send>>;

/// The response of a decoder or writer session: the acknowledgements sent on the channel
/// whose receiver is `rx`.
pub fn ack_stream(
    rx: tokio::sync::mpsc::Receiver<Result<ferry_proto::Ack, tonic::Status>>,
) -> tonic::Response<AckStream> {
    tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The deployment this process belongs to (`Config::deployment`), set once at start.
static DEPLOYMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets this process's deployment (the first call wins).
pub fn init_deployment(name: String) {
    let _ = DEPLOYMENT.set(name);
}

/// This process's deployment ("" before [`init_deployment`]).
pub fn deployment() -> String {
    DEPLOYMENT.get().cloned().unwrap_or_default()
}

/// Refuses a peer of another deployment (`theirs` empty: the peer did not say): two runs on
/// one machine, or a stage pointed at the wrong coordinator, never join each other.
pub fn check_deployment(theirs: &str, peer: &str) -> Result<(), tonic::Status> {
    let mine = deployment();
    if theirs.is_empty() || mine.is_empty() || theirs == mine {
        return Ok(());
    }
    Err(tonic::Status::permission_denied(format!(
        "{peer} belongs to deployment {theirs}, this process to {mine}: check the addresses it was given \
         (--coordinator, coordinator.grpc_addr, decoder/writer listen and advertise) or [coordinator] name"
    )))
}

/// Binds a listener of this process; an address that cannot be bound (in use, not this
/// host's) is a configuration error (exit code 2) naming the address and the key to change:
/// starting the process again cannot help.
pub async fn listen(addr: &str, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        ferry_config::ConfigError::field(key, format!("cannot listen on {addr}: {e} (set {key} to a free address)"))
            .into()
    })
}

/// `host:port` → `http://host:port`, or `https://` when the links are TLS (`[grpc]`).
/// A scheme given with the address follows the config too (`http://` with TLS set cannot work).
pub fn grpc_url(addr: &str) -> String {
    let host = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr);
    if GRPC_TLS.get().is_some_and(Option::is_some) { format!("https://{host}") } else { format!("http://{host}") }
}

/// Mutual TLS between ferry's processes (`[grpc]`): the CA, this process's identity, and
/// the certificate names of each role its endpoints admit.
pub struct GrpcTls {
    ca: tonic::transport::Certificate,
    identity: tonic::transport::Identity,
    server_name: String,
    /// `(role, names)` for every role of [`ferry_config::GRPC_ROLES`].
    identities: Vec<(&'static str, Vec<String>)>,
}

/// Set once per process, from its config, before any gRPC link is made.
static GRPC_TLS: std::sync::OnceLock<Option<GrpcTls>> = std::sync::OnceLock::new();

/// Reads the `[grpc]` TLS files (an unreadable one is a configuration error); `{role}` in a
/// path is `service`'s role (`ferry-reader` → `reader`).
pub fn init_grpc_tls(cfg: &ferry_config::GrpcConfig, service: &str) -> anyhow::Result<()> {
    let role = service.strip_prefix("ferry-").unwrap_or(service);
    let tls = if cfg.tls() {
        let read = |field: &str, path: &str| {
            let path = path.replace("{role}", role);
            std::fs::read(&path).map_err(|e| {
                ferry_config::ConfigError::field(format!("grpc.{field}"), format!("cannot read {path}: {e}"))
            })
        };
        let cert = read("tls_cert_file", &cfg.tls_cert_file)?;
        check_own_role(cfg, role, &cert)?;
        Some(GrpcTls {
            ca: tonic::transport::Certificate::from_pem(read("tls_ca_file", &cfg.tls_ca_file)?),
            identity: tonic::transport::Identity::from_pem(cert, read("tls_key_file", &cfg.tls_key_file)?),
            server_name: cfg.tls_server_name.clone(),
            identities: ferry_config::GRPC_ROLES.iter().map(|r| (*r, cfg.names_of(r))).collect(),
        })
    } else {
        None
    };
    let _ = GRPC_TLS.set(tls);
    Ok(())
}

/// A stage's own certificate must name its role (the watcher's: the watcher's or an
/// admin's): else every call it makes would be refused, one at a time, at run time. Checked
/// at start, a configuration error naming the file and the names expected.
fn check_own_role(cfg: &ferry_config::GrpcConfig, role: &str, pem: &[u8]) -> Result<(), ferry_config::ConfigError> {
    use rustls_pki_types::pem::PemObject;
    let roles: &[&str] = match role {
        "reader" | "decoder" | "writer" => &[role],
        "watcher" => &["watcher", "admin"],
        _ => return Ok(()),
    };
    let path = cfg.tls_cert_file.replace("{role}", role);
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem).map_err(|e| {
        ferry_config::ConfigError::field("grpc.tls_cert_file", format!("{path}: no certificate in it ({e})"))
    })?;
    let names: Vec<String> = roles.iter().flat_map(|r| cfg.names_of(r)).collect();
    if names.iter().any(|n| cert_names(&der, n)) {
        return Ok(());
    }
    Err(ferry_config::ConfigError::field(
        "grpc.tls_cert_file",
        format!(
            "{path} names none of {}: the {role}'s certificate must name its role as a DNS name (see [grpc] identities), \
             or its calls are refused",
            names.join(", ")
        ),
    ))
}

/// Calls refused by [`authorize`], by endpoint (for `/metrics`).
static DENIED: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Calls each endpoint refused because the caller's certificate names no role it admits.
pub fn denied_calls() -> Vec<(&'static str, u64)> {
    DENIED.lock().unwrap().iter().map(|(k, v)| (*k, *v)).collect()
}

/// Admits a call to `endpoint` (`Service.Method`) only from a peer whose certificate names
/// one of `roles` (see `[grpc] identities`); otherwise `PERMISSION_DENIED` naming the roles,
/// logged and counted. Without `[grpc]` TLS there is no identity to check: the links are
/// then loopback-only or declared insecure ([`check_plaintext`]).
pub fn authorize<T>(req: &tonic::Request<T>, endpoint: &'static str, roles: &[&str]) -> Result<(), tonic::Status> {
    let Some(Some(tls)) = GRPC_TLS.get() else { return Ok(()) };
    let names: Vec<&str> = tls
        .identities
        .iter()
        .filter(|(r, _)| roles.contains(r))
        .flat_map(|(_, n)| n.iter().map(String::as_str))
        .collect();
    let certs = req.peer_certs();
    let cert = certs.as_ref().and_then(|c| c.first());
    if cert.is_some_and(|der| names.iter().any(|n| cert_names(der, n))) {
        return Ok(());
    }
    *DENIED.lock().unwrap().entry(endpoint).or_default() += 1;
    let expected = names.join(" or ");
    let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::warn!(
        endpoint,
        peer,
        expected,
        "refused a call from a peer whose certificate is not of a role the endpoint admits"
    );
    Err(tonic::Status::permission_denied(format!(
        "{endpoint} admits only {expected}: the caller's certificate names none of them (DNS names; see [grpc] identities)"
    )))
}

/// Whether the end-entity certificate `der` is valid for the DNS name (or IP) `name`.
fn cert_names(der: &rustls_pki_types::CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return false };
    let Ok(name) = rustls_pki_types::ServerName::try_from(name) else { return false };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
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

/// Connects to the next stage of a pipeline. The coordinator assigns every stage at once, so
/// the next one may not listen yet: while its address refuses connections, tries again every
/// [`NOT_READY_RETRY`](crate::NOT_READY_RETRY) for [`NOT_READY_FAST_FOR`](crate::NOT_READY_FAST_FOR),
/// then gives the error (the caller's session fails and is retried with backoff). Stops
/// trying when `cancel` fires.
pub async fn downstream_channel(
    url: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<tonic::transport::Channel> {
    let since = std::time::Instant::now();
    loop {
        match grpc_channel(url).await {
            Err(e)
                if is_connection_refused(&e)
                    && since.elapsed() < crate::NOT_READY_FAST_FOR
                    && crate::sleep_or_cancel(crate::NOT_READY_RETRY, cancel).await => {}
            r => return r,
        }
    }
}

/// Whether connecting failed because nothing listens at the address (yet).
pub fn is_connection_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// A gRPC server builder, requiring client certificates of the CA when TLS is set.
pub fn grpc_server() -> anyhow::Result<tonic::transport::Server> {
    // HTTP/2 flow control: a stream may have this much unread by the receiving process. The
    // default (1 MiB) is one message of a full copy (a frame of the RDB, a batch for the
    // target), so the sender waited for each to be taken before sending the next.
    let builder = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(2 * STREAM_WINDOW);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_off_loopback_is_refused_unless_insecure_is_said() {
        for a in ["127.0.0.1:7702", "localhost:1", "[::1]:5", "http://127.0.0.1:7702"] {
            assert!(is_loopback(a), "{a}");
        }
        for a in ["0.0.0.0:7711", "10.0.0.5:7712", "[::]:1", "https://ferry-writer:7712"] {
            assert!(!is_loopback(a), "{a}");
        }
        let mut cfg = ferry_config::Config::default();
        assert!(check_plaintext(&cfg, "127.0.0.1:7702").is_ok());
        cfg.writer.listen = "0.0.0.0:7712".into();
        let e = check_plaintext(&cfg, "127.0.0.1:7702").unwrap_err();
        assert!(e.chain().any(|c| c.downcast_ref::<ferry_config::ConfigError>().is_some()));
        let msg = format!("{e:#}");
        assert!(msg.contains("writer.listen") && msg.contains("insecure = true") && !msg.contains('\n'), "{msg}");
        cfg.grpc.insecure = true;
        assert!(check_plaintext(&cfg, "127.0.0.1:7702").is_ok());
        cfg.grpc.insecure = false;
        cfg.grpc.tls_ca_file = "/ca.pem".into();
        assert!(check_plaintext(&cfg, "10.0.0.1:7702").is_ok());
    }

    /// A free loopback port nobody listens on (yet).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_downstream_assigned_at_the_same_moment_is_reached_once_it_listens() {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        // What a stage did before: one refused connect failed its session.
        let e = grpc_channel(&url).await.unwrap_err();
        assert!(is_connection_refused(&e), "{e:#}");
        let server = async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::select! {
            r = downstream_channel(&url, &cancel) => { r.expect("reached once it listens"); }
            r = server => panic!("the server ended: {r:?}"),
        }
        // Nothing listens and the stage shuts down: it stops trying at once, with the error.
        cancel.cancel();
        let started = std::time::Instant::now();
        let e = downstream_channel(&format!("http://127.0.0.1:{}", free_port()), &cancel).await.unwrap_err();
        assert!(is_connection_refused(&e) && started.elapsed() < crate::NOT_READY_FAST_FOR, "{e:#}");
    }
}
