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
