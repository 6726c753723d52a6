//! Write load whose every acknowledged write can be counted on the other side (INCR and
//! RPUSH witnesses), to reveal a lost or doubled write.

use std::time::Duration;

use ferry_resp::{Auth, Connection, Reply};

/// Writes INCR (db 0) and RPUSH (db `list_db`) witnesses to a standalone source from a
/// thread until `stop` is set; returns how many writes were acknowledged.
pub fn source_witnesses(
    addr: String,
    list_db: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let auth = ferry_resp::Auth::default();
            let mut c = ferry_resp::Connection::connect(&addr, &auth, Duration::from_secs(5)).await.unwrap();
            // Lists in another db: the stream switches dbs all the time, so a resume that lost
            // track of the selected db would put writes in the wrong one.
            let mut c5 = ferry_resp::Connection::connect(&addr, &auth, Duration::from_secs(5)).await.unwrap();
            c5.call(&["SELECT", &list_db.to_string()]).await.unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Runs of 20 writes per db, so most resume points fall inside a run, where the
                // stream has no SELECT.
                if (n / 20).is_multiple_of(2) {
                    c.call(&["INCR", &format!("witness:counter:{}", n % 5)]).await.unwrap();
                } else {
                    c5.call(&["RPUSH", &format!("witness:list:{}", n % 3), &n.to_string()]).await.unwrap();
                }
                n += 1;
                // Deliberate: a short pause every 50 writes paces the load, so it runs at a
                // steady rate beside ferry instead of taking the whole machine.
                if n.is_multiple_of(50) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            n
        })
    })
}

/// INCR/RPUSH witnesses against whatever the sentinels say the master is; a write that
/// fails during a failover is retried, so every acknowledged write happened once.
pub fn sentinel_witnesses(
    group_sentinels: Vec<String>,
    name: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let mut n = 0u64;
            let mut conn: Option<Connection> = None;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if conn.is_none() {
                    let addr = ferry_resp::sentinel::resolve_master(
                        &group_sentinels,
                        &name,
                        &Auth::default(),
                        Duration::from_secs(1),
                    )
                    .await;
                    if let Ok(addr) = addr {
                        conn = Connection::connect(&addr, &Auth::default(), Duration::from_secs(1)).await.ok();
                    }
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = conn.as_mut().unwrap();
                // One MULTI per witness write so a failure leaves no half of it applied.
                let key = format!("witness:{}", n % 7);
                let ok = async {
                    c.call(&["MULTI"]).await?;
                    c.call(&["INCR", &format!("{key}:count")]).await?;
                    c.call(&["RPUSH", &format!("{key}:list"), &n.to_string()]).await?;
                    match c.call(&["EXEC"]).await? {
                        Reply::Array(Some(r)) if r.iter().all(|x| x.first_error().is_none()) => anyhow::Ok(true),
                        _ => anyhow::Ok(false),
                    }
                }
                .await;
                match ok {
                    Ok(true) => n += 1,
                    _ => {
                        // READONLY or a dropped connection: the write did not happen; find the master again.
                        conn = None;
                    }
                }
                // Deliberate: pacing, as above.
                if n.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            n
        })
    })
}
