//! An async Redis client connection: connect, authenticate, send commands and read replies.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::encode::encode_command;
use crate::frame::{DEFAULT_MAX_BULK_LEN, FrameError, Reply, parse_reply, scan_reply};
use crate::tls::TlsSettings;

/// The reading half of a plaintext or TLS stream.
type ReadHalf = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The writing half of a plaintext or TLS stream (flushed after every write: TLS buffers).
type WriteHalf = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// Credentials for `AUTH`: a password alone (`requirepass`) or an ACL user and password.
#[derive(Clone, Default)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Errors talking to a Redis server. Display is one line and never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("timed out connecting to {addr} after {secs}s")]
    ConnectTimeout { addr: String, secs: u64 },
    #[error("authentication to {addr} failed: {reply}")]
    Auth { addr: String, reply: String },
    #[error("connection to {addr} closed by the server")]
    Closed { addr: String },
    #[error("i/o error with {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("{addr}: {source}")]
    Frame { addr: String, source: FrameError },
    #[error("{addr} replied to {command} with an error: {reply}")]
    Server { addr: String, command: String, reply: String },
    #[error("{addr}: unexpected reply to {command}: {reply}")]
    Unexpected { addr: String, command: String, reply: String },
    #[error("{addr}: timed out waiting for a reply to {command}")]
    Timeout { addr: String, command: String },
    /// TLS set-up or handshake failed (bad CA, certificate, name or key file).
    #[error("TLS with {addr} failed: {message}")]
    Tls { addr: String, message: String },
}

/// An I/O error on a connection; rustls errors (certificate, alert) become [`RespError::Tls`].
fn io_error(addr: &str, source: std::io::Error) -> RespError {
    match source.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(e) => RespError::Tls { addr: addr.to_string(), message: tls_message(e) },
        None => RespError::Io { addr: addr.to_string(), source },
    }
}

fn tls_message(e: &rustls::Error) -> String {
    let hint = match e {
        rustls::Error::InvalidCertificate(_) => " (check tls_ca_file and tls_server_name)",
        rustls::Error::AlertReceived(_) => " (the server refused: check tls_cert_file / tls_key_file)",
        rustls::Error::InvalidMessage(_) => " (is the port a TLS port?)",
        _ => "",
    };
    format!("{e}{hint}").replace(['\r', '\n'], " ")
}

impl RespError {
    /// True for errors that are worth retrying later (network trouble), false for configuration errors.
    pub fn is_auth(&self) -> bool {
        matches!(self, RespError::Auth { .. })
    }
}

/// Renders reply bytes for a log line: lossy UTF-8, bounded.
pub fn printable(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(200)]);
    s.replace(['\r', '\n'], " ")
}

/// A Redis connection with a read buffer.
pub struct Connection {
    addr: String,
    rd: ReplyReader,
    wr: WriteHalf,
}

/// The reading half of a connection: parses replies from a buffer.
pub struct ReplyReader {
    addr: String,
    rd: ReadHalf,
    buf: BytesMut,
    max_bulk: usize,
}

/// The writing half of a connection.
pub struct RequestWriter {
    addr: String,
    wr: WriteHalf,
}

impl Connection {
    /// Connects to `addr` (`host:port`) in plaintext and authenticates when `auth` has a password.
    pub async fn connect(addr: &str, auth: &Auth, timeout: Duration) -> Result<Self, RespError> {
        Self::connect_with(addr, auth, None, timeout).await
    }

    /// Connects to `addr`, over TLS when `tls` is given, and authenticates when `auth` has a
    /// password. `timeout` bounds the TCP connect and the TLS handshake together.
    pub async fn connect_with(
        addr: &str,
        auth: &Auth,
        tls: Option<&TlsSettings>,
        timeout: Duration,
    ) -> Result<Self, RespError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || RespError::ConnectTimeout { addr: addr.to_string(), secs: timeout.as_secs() };
        // Files first: a bad CA or key file is a configuration error, not a network one.
        let tls = match tls {
            None => None,
            Some(t) => {
                let setup = t
                    .client_config()
                    .and_then(|c| Ok((c, t.server_name_for(addr)?)))
                    .map_err(|e| RespError::Tls { addr: addr.to_string(), message: e.to_string() })?;
                Some(setup)
            }
        };
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(source)) => return Err(RespError::Connect { addr: addr.to_string(), source }),
            Ok(Ok(s)) => s,
        };
        stream.set_nodelay(true).ok();
        let (rd, wr): (ReadHalf, WriteHalf) = match tls {
            None => {
                let (rd, wr) = stream.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config);
                let s = match tokio::time::timeout_at(deadline, connector.connect(name, stream)).await {
                    Err(_) => {
                        let message =
                            format!("handshake timed out after {}s (is the port a TLS port?)", timeout.as_secs());
                        return Err(RespError::Tls { addr: addr.to_string(), message });
                    }
                    Ok(Err(source)) => {
                        return Err(match io_error(addr, source) {
                            RespError::Io { source, .. } => {
                                RespError::Tls { addr: addr.to_string(), message: format!("handshake: {source}") }
                            }
                            e => e,
                        });
                    }
                    Ok(Ok(s)) => s,
                };
                let (rd, wr) = tokio::io::split(s);
                (Box::new(rd), Box::new(wr))
            }
        };
        let mut conn = Connection {
            addr: addr.to_string(),
            rd: ReplyReader {
                addr: addr.to_string(),
                rd,
                buf: BytesMut::with_capacity(64 * 1024),
                max_bulk: DEFAULT_MAX_BULK_LEN,
            },
            wr,
        };
        if let Some(password) = auth.password.as_deref().filter(|p| !p.is_empty()) {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = auth.username.as_deref().filter(|u| !u.is_empty()) {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            conn.send(&args).await?;
            match tokio::time::timeout(timeout, conn.read_reply()).await {
                Err(_) => return Err(RespError::Timeout { addr: addr.to_string(), command: "AUTH".into() }),
                Ok(r) => {
                    if let Reply::Error(e) = r? {
                        return Err(RespError::Auth { addr: addr.to_string(), reply: printable(&e) });
                    }
                }
            }
        }
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one command without waiting for its reply.
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RespError> {
        let bytes = encode_command(args);
        self.send_raw(&bytes).await
    }

    /// Sends bytes that are already RESP.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), RespError> {
        write_flush(&mut self.wr, bytes).await.map_err(|source| io_error(&self.addr, source))
    }

    /// Reads the next reply.
    pub async fn read_reply(&mut self) -> Result<Reply, RespError> {
        self.rd.read_reply().await
    }

    /// Sends a command and returns its reply; an error reply becomes [`RespError::Server`].
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, RespError> {
        self.send(args).await?;
        let reply = self.read_reply().await?;
        if let Reply::Error(e) = &reply {
            return Err(RespError::Server {
                addr: self.addr.clone(),
                command: printable(args.first().map(|a| a.as_ref()).unwrap_or(b"")),
                reply: printable(e),
            });
        }
        Ok(reply)
    }

    /// Like [`Connection::call`] with a time limit.
    pub async fn call_timeout<A: AsRef<[u8]>>(&mut self, args: &[A], timeout: Duration) -> Result<Reply, RespError> {
        let name = printable(args.first().map(|a| a.as_ref()).unwrap_or(b""));
        match tokio::time::timeout(timeout, self.call(args)).await {
            Ok(r) => r,
            Err(_) => Err(RespError::Timeout { addr: self.addr.clone(), command: name }),
        }
    }

    /// The read buffer and socket, for protocols that read raw bytes (replication).
    pub fn reader_mut(&mut self) -> &mut ReplyReader {
        &mut self.rd
    }

    /// Splits into halves that can be used from two tasks (pipelining).
    pub fn into_split(self) -> (ReplyReader, RequestWriter) {
        (self.rd, RequestWriter { addr: self.addr, wr: self.wr })
    }
}

impl RequestWriter {
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), RespError> {
        write_flush(&mut self.wr, bytes).await.map_err(|source| io_error(&self.addr, source))
    }
}

/// Writes and flushes: a TLS stream may keep written bytes in its buffer until flushed.
async fn write_flush(wr: &mut WriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

impl ReplyReader {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Reads more bytes from the socket into the buffer; an error when the server closed it.
    pub async fn fill(&mut self) -> Result<usize, RespError> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        let n = self.rd.read_buf(&mut self.buf).await.map_err(|source| io_error(&self.addr, source))?;
        if n == 0 {
            return Err(RespError::Closed { addr: self.addr.clone() });
        }
        Ok(n)
    }

    /// The bytes read but not consumed yet.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads the next reply.
    pub async fn read_reply(&mut self) -> Result<Reply, RespError> {
        loop {
            // The reply of nearly every write, a million times in a full copy: no frame split
            // off the buffer, no allocation.
            if self.buf.starts_with(b"+OK\r\n") {
                bytes::Buf::advance(&mut self.buf, 5);
                return Ok(Reply::Simple(Bytes::from_static(b"OK")));
            }
            match scan_reply(&self.buf, self.max_bulk) {
                Ok(Some(len)) => {
                    let frame = self.buf.split_to(len).freeze();
                    return match parse_reply(&frame, self.max_bulk) {
                        Ok(Some((reply, _))) => Ok(reply),
                        Ok(None) => Err(RespError::Frame { addr: self.addr.clone(), source: FrameError::BadInteger }),
                        Err(source) => Err(RespError::Frame { addr: self.addr.clone(), source }),
                    };
                }
                Ok(None) => {}
                Err(source) => return Err(RespError::Frame { addr: self.addr.clone(), source }),
            }
            self.fill().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_debug_hides_password() {
        let a = Auth { username: Some("u".into()), password: Some("s3cret".into()) };
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
