//! Finding a master through Sentinel.

use std::time::Duration;

use crate::conn::{Auth, Connection, RespError, printable};
use crate::frame::Reply;

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
    let mut problems = Vec::new();
    for s in sentinels {
        match ask(s, name, auth, timeout).await {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => problems.push(format!("{s}: unknown master")),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Err(SentinelError::Unknown { name: name.to_string(), asked: sentinels.join(","), detail: problems.join("; ") })
}

async fn ask(sentinel: &str, name: &str, auth: &Auth, timeout: Duration) -> Result<Option<String>, RespError> {
    let mut c = Connection::connect(sentinel, auth, timeout).await?;
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
