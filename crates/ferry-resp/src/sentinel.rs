//! Finding a master through Sentinel.

use std::time::Duration;

use crate::conn::{Auth, Connection, RespError, printable};
use crate::frame::Reply;
use crate::tls::TlsSettings;

/// Errors resolving a master; Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("no sentinel knows a master named {name:?} (asked {asked}): {detail}")]
    Unknown { name: String, asked: String, detail: String },
}

/// Asks the sentinels in turn for the address of master `name`
/// (`SENTINEL GET-MASTER-ADDR-BY-NAME`). The first sentinel that answers with an address wins.
pub async fn resolve_master(
    sentinels: &[String],
    name: &str,
    auth: &Auth,
    timeout: Duration,
) -> Result<String, SentinelError> {
    resolve_master_with(sentinels, name, auth, None, timeout).await
}

/// [`resolve_master`], over TLS when `tls` is given.
pub async fn resolve_master_with(
    sentinels: &[String],
    name: &str,
    auth: &Auth,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> Result<String, SentinelError> {
    let mut problems = Vec::new();
    for s in sentinels {
        match ask(s, name, auth, tls, timeout).await {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => problems.push(format!("{s}: unknown master")),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Err(SentinelError::Unknown { name: name.to_string(), asked: sentinels.join(","), detail: problems.join("; ") })
}

async fn ask(
    sentinel: &str,
    name: &str,
    auth: &Auth,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> Result<Option<String>, RespError> {
    let mut c = Connection::connect_with(sentinel, auth, tls, timeout).await?;
    let reply = c.call_timeout(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name], timeout).await?;
    match reply {
        Reply::Array(Some(items)) if items.len() == 2 => {
            let host = items[0].as_bytes().map(|b| printable(b)).unwrap_or_default();
            let port = items[1].as_bytes().map(|b| printable(b)).unwrap_or_default();
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            Ok(Some(format!("{host}:{port}")))
        }
        _ => Ok(None),
    }
}

/// A subscription to a sentinel's event channels (`+switch-master`, `+odown`, ...).
pub struct Events {
    conn: Connection,
}

impl Events {
    /// Connects to `sentinel` and subscribes to `channels`.
    pub async fn subscribe(
        sentinel: &str,
        channels: &[&str],
        auth: &Auth,
        tls: Option<&TlsSettings>,
        timeout: Duration,
    ) -> Result<Events, RespError> {
        let mut conn = Connection::connect_with(sentinel, auth, tls, timeout).await?;
        let mut args = vec!["SUBSCRIBE"];
        args.extend_from_slice(channels);
        conn.send(&args).await?;
        for _ in channels {
            // One confirmation per channel: ["subscribe", channel, count].
            if let Some(e) = conn.read_reply().await?.first_error() {
                return Err(RespError::Server {
                    addr: sentinel.to_string(),
                    command: "SUBSCRIBE".into(),
                    reply: printable(e),
                });
            }
        }
        Ok(Events { conn })
    }

    /// The next event: its channel and its message
    /// (`+switch-master <name> <old ip> <old port> <new ip> <new port>`: channel
    /// `+switch-master`, message from `<name>` on).
    pub async fn next(&mut self) -> Result<(String, String), RespError> {
        loop {
            if let Reply::Array(Some(items)) = self.conn.read_reply().await?
                && items.len() == 3
                && items[0].as_bytes().is_some_and(|b| &b[..] == b"message")
            {
                let text = |r: &Reply| r.as_bytes().map(|b| printable(b)).unwrap_or_default();
                return Ok((text(&items[1]), text(&items[2])));
            }
        }
    }
}

/// Whether a sentinel event message is about master `name` (the name is one of its words:
/// `+switch-master mymaster ...`, `+promoted-slave slave ip:port ip port @ mymaster ip port`).
pub fn event_names_master(message: &str, name: &str) -> bool {
    message.split_whitespace().any(|w| w == name)
}
