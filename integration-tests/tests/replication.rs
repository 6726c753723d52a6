//! The replica side of replication (ferry-resp) against a real redis-server.

use std::time::Duration;

use ferry_resp::replication::{PsyncReply, ReplEvent, ReplicaOptions, handshake};
use ferry_resp::{Auth, Connection};
use integration_tests::{RedisServer, wait_until_async};

async fn replicate(server: &RedisServer) {
    replicate_with(server, &ReplicaOptions::default()).await
}

async fn replicate_with(server: &RedisServer, opts: &ReplicaOptions) {
    let mut c = server.connect().await.unwrap();
    for i in 0..1000 {
        c.call(&["SET", &format!("k{i}"), &"v".repeat(i % 100)]).await.unwrap();
    }
    let conn = Connection::connect(
        &server.addr(),
        &Auth { username: None, password: server.password.clone() },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (mut stream, mut acker, reply) = handshake(conn, None, opts).await.unwrap();
    let PsyncReply::FullResync { offset: start, .. } = reply else { panic!("expected FULLRESYNC, got {reply:?}") };
    let mut rdb = Vec::new();
    let mut size = None;
    loop {
        match stream.next_event().await.unwrap() {
            ReplEvent::RdbStart { size: s } => size = s,
            ReplEvent::RdbChunk(b) => rdb.extend_from_slice(&b),
            ReplEvent::RdbEnd => break,
            ReplEvent::Commands { .. } => panic!("commands before the RDB end"),
        }
    }
    if let Some(s) = size {
        assert_eq!(s as usize, rdb.len());
    }
    assert!(rdb.starts_with(b"REDIS00"), "not an RDB: {:?}", &rdb[..rdb.len().min(16)]);
    acker.ack(start).await.unwrap();
    // Writes after the sync arrive as whole commands whose end offset matches the master's.
    for i in 0..100 {
        c.call(&["INCR", &format!("counter{}", i % 3)]).await.unwrap();
    }
    let target = server.repl_offset().await.unwrap();
    let mut seen = 0;
    let mut end = start;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while end < target {
        assert!(std::time::Instant::now() < deadline, "stream stalled at {end} of {target}");
        // Like a real replica, ACK every so often: after a diskless transfer the master
        // starts the command stream on the first ACK it gets once it has put us online.
        let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), stream.next_event()).await else {
            acker.ack(end).await.unwrap();
            continue;
        };
        match ev.unwrap() {
            ReplEvent::Commands { data, lens, end_offset, .. } => {
                assert_eq!(lens.iter().map(|l| *l as usize).sum::<usize>(), data.len());
                seen += lens.len();
                end = end_offset;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(end, target);
    assert!(seen >= 100, "saw {seen} commands");
    acker.ack(end).await.unwrap();
    // The master records our ACK.
    wait_until_async("the master to record our ACK", Duration::from_secs(10), || async move {
        let Ok(mut c) = server.connect().await else { return false };
        let Ok(info) = c.call(&["INFO", "replication"]).await else { return false };
        info.as_bytes().is_some_and(|b| String::from_utf8_lossy(b).contains(&format!("offset={end}")))
    })
    .await;
    let info = c.call(&["INFO", "replication"]).await.unwrap();
    let text = String::from_utf8_lossy(info.as_bytes().unwrap()).to_string();
    assert!(text.contains(&format!("offset={end}")), "{text}");
}

#[tokio::test]
async fn disk_rdb_then_command_stream() {
    let s = RedisServer::start(&["--repl-diskless-sync", "no"]);
    replicate(&s).await;
}

#[tokio::test]
async fn diskless_rdb_then_command_stream() {
    let s = RedisServer::start(&["--repl-diskless-sync", "yes"]);
    replicate(&s).await;
}

/// `REPLCONF version` (what a Valkey 9.1+ primary needs) is refused by Redis
/// (`Unrecognized REPLCONF option`): the handshake goes on without it.
#[tokio::test]
async fn a_refused_replica_version_is_no_error() {
    let s = RedisServer::start(&[]);
    replicate_with(&s, &ReplicaOptions { version: Some("9.0.0".into()), ..Default::default() }).await;
}

#[tokio::test]
async fn psync_continue_after_reconnect() {
    let s = RedisServer::start(&[]);
    let mut c = s.connect().await.unwrap();
    c.call(&["SET", "a", "1"]).await.unwrap();
    let conn = s.connect().await.unwrap();
    let (mut stream, mut acker, reply) = handshake(conn, None, &ReplicaOptions::default()).await.unwrap();
    let PsyncReply::FullResync { replid, offset } = reply else { panic!() };
    while !matches!(stream.next_event().await.unwrap(), ReplEvent::RdbEnd) {}
    acker.ack(offset).await.unwrap();
    drop((stream, acker));
    c.call(&["SET", "b", "2"]).await.unwrap();
    let conn = s.connect().await.unwrap();
    let (mut stream, _acker, reply) =
        handshake(conn, Some((&replid, offset + 1)), &ReplicaOptions::default()).await.unwrap();
    assert!(matches!(reply, PsyncReply::Continue { .. }), "{reply:?}");
    let target = s.repl_offset().await.unwrap();
    let mut got = Vec::new();
    let mut end = offset;
    while end < target {
        if let ReplEvent::Commands { data, end_offset, .. } = stream.next_event().await.unwrap() {
            got.extend_from_slice(&data);
            end = end_offset;
        }
    }
    assert_eq!(end, target);
    assert!(String::from_utf8_lossy(&got).contains("$1\r\nb\r\n$1\r\n2\r\n"));
}
