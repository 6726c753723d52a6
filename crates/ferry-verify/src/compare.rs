//! Comparing one key on both sides: type, value (type-aware, read in pages), expiry.

use bytes::Bytes;
use ferry_resp::{Reply, RespError};

use crate::side::Conns;
use crate::{DiffKind, show};

/// Elements read per page (LRANGE, ZRANGE, SSCAN, HSCAN, XRANGE, XPENDING).
pub(crate) const PAGE: usize = 1000;
/// Sets and hashes with at most this many elements are read whole (SMEMBERS, HGETALL).
pub(crate) const SMALL: i64 = 256;
/// Bytes of a string read with the first, pipelined, read.
pub(crate) const HEAD_BYTES: usize = 16 * 1024;
/// Bytes of a string read per later page.
pub(crate) const STRING_PAGE: usize = 1024 * 1024;

/// What the first, pipelined, round trip learnt about a key on one side.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    /// `TYPE` ("none" when absent), or the error reply.
    pub ty: Result<String, String>,
    /// `PEXPIRETIME` (or `PTTL`): -1 no expiry, -2 absent.
    pub ttl: Result<i64, String>,
    /// The first [`HEAD_BYTES`] of a string.
    pub head: Option<Bytes>,
}

impl Probe {
    fn absent() -> Probe {
        Probe { ty: Ok("none".into()), ttl: Ok(-2), head: None }
    }
}

fn error_text(r: &Reply) -> Option<String> {
    r.as_error().map(|e| String::from_utf8_lossy(e).to_string())
}

/// `TYPE`, the expiry and the head of the value of every key, pipelined per node.
pub(crate) async fn probe(
    side: &mut Conns,
    db: u32,
    keys: &[Bytes],
    ttl_cmd: &'static [u8],
) -> Result<Vec<Probe>, RespError> {
    let last = (HEAD_BYTES - 1).to_string();
    let last = last.as_bytes();
    let replies =
        side.per_key(db, keys, |k| vec![vec![b"TYPE", k], vec![ttl_cmd, k], vec![b"GETRANGE", k, b"0", last]]).await?;
    Ok(replies
        .into_iter()
        .map(|r| match r {
            None => Probe::absent(),
            Some(r) => {
                let ty = match &r[0] {
                    Reply::Simple(t) | Reply::Bulk(Some(t)) => Ok(String::from_utf8_lossy(t).to_string()),
                    other => Err(error_text(other).unwrap_or_else(|| "unexpected reply to TYPE".into())),
                };
                let ttl = match &r[1] {
                    Reply::Integer(t) => Ok(*t),
                    other => Err(error_text(other).unwrap_or_else(|| "unexpected reply to the expiry".into())),
                };
                let head = r[2].as_bytes().cloned();
                Probe { ty, ttl, head }
            }
        })
        .collect())
}

/// Compares one key given both probes; `Ok(None)` when equal. A [`RespError::Server`] means the
/// key could not be read as its type said (it changed meanwhile, or moved): the caller records it.
pub(crate) async fn compare_key(
    src: &mut Conns,
    tgt: &mut Conns,
    db: u32,
    key: &[u8],
    ps: &Probe,
    pt: &Probe,
    ttl_tolerance_ms: u64,
) -> Result<Option<DiffKind>, RespError> {
    let (ts, tt) = match (&ps.ty, &pt.ty) {
        (Err(e), _) => return Ok(Some(DiffKind::Unreadable { detail: format!("source: {}", show(e.as_bytes())) })),
        (_, Err(e)) => return Ok(Some(DiffKind::Unreadable { detail: format!("target: {}", show(e.as_bytes())) })),
        (Ok(a), Ok(b)) => (a.as_str(), b.as_str()),
    };
    match (ts == "none", tt == "none") {
        (true, true) => return Ok(None),
        (false, true) => return Ok(Some(DiffKind::MissingOnTarget)),
        (true, false) => return Ok(Some(DiffKind::OnlyOnTarget)),
        _ => {}
    }
    if ts != tt {
        return Ok(Some(DiffKind::TypeDiffers { source: ts.to_string(), target: tt.to_string() }));
    }
    let mut cx = Cx { src, tgt, db, key, tolerance_ms: ttl_tolerance_ms };
    let value = match ts {
        "string" => cx.string(ps, pt).await?,
        "list" => cx.list().await?,
        "set" => cx.set().await?,
        "zset" => cx.zset().await?,
        "hash" => cx.hash().await?,
        "stream" => cx.stream().await?,
        _ => cx.dump().await?,
    };
    if let Some(detail) = value {
        return Ok(Some(DiffKind::ValueDiffers { ty: ts.to_string(), detail }));
    }
    Ok(compare_ttl(ps, pt, ttl_tolerance_ms))
}

/// Expiry times (or remaining times) within the tolerance; -1 (none) only equals -1.
pub(crate) fn compare_ttl(ps: &Probe, pt: &Probe, tolerance_ms: u64) -> Option<DiffKind> {
    match (&ps.ttl, &pt.ttl) {
        (Err(e), _) => Some(DiffKind::Unreadable { detail: format!("source expiry: {}", show(e.as_bytes())) }),
        (_, Err(e)) => Some(DiffKind::Unreadable { detail: format!("target expiry: {}", show(e.as_bytes())) }),
        (Ok(a), Ok(b)) if *a == -2 || *b == -2 => {
            Some(DiffKind::Unreadable { detail: "deleted while it was compared".into() })
        }
        (Ok(-1), Ok(-1)) => None,
        (Ok(a), Ok(b)) if *a >= 0 && *b >= 0 => {
            let by = a.abs_diff(*b);
            (by > tolerance_ms).then_some(DiffKind::TtlDiffers { by_ms: Some(by), source_expires: true })
        }
        (Ok(a), Ok(_)) => Some(DiffKind::TtlDiffers { by_ms: None, source_expires: *a >= 0 }),
    }
}

/// Both sides of one key.
struct Cx<'a> {
    src: &'a mut Conns,
    tgt: &'a mut Conns,
    db: u32,
    key: &'a [u8],
    /// For the delivery times of pending entries, as for expiry times.
    tolerance_ms: u64,
}

fn array(r: Reply) -> Vec<Reply> {
    match r {
        Reply::Array(Some(items)) => items,
        _ => Vec::new(),
    }
}

fn bytes_list(r: Reply) -> Vec<Bytes> {
    array(r).into_iter().filter_map(|i| i.as_bytes().cloned()).collect()
}

fn int(r: &Reply) -> i64 {
    match r {
        Reply::Integer(i) => *i,
        other => other.as_bytes().and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()).unwrap_or(-1),
    }
}

/// A score as its f64 bit pattern (exact), or the raw text if it does not parse.
fn score_bits(b: &[u8]) -> Result<u64, Vec<u8>> {
    std::str::from_utf8(b).ok().and_then(|s| s.parse::<f64>().ok()).map(f64::to_bits).ok_or_else(|| b.to_vec())
}

impl Cx<'_> {
    /// The same command on both sides, concurrently.
    async fn both<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(Reply, Reply), RespError> {
        let (db, key) = (self.db, self.key);
        let (a, b) = tokio::join!(self.src.call(db, key, args), self.tgt.call(db, key, args));
        Ok((a?, b?))
    }

    async fn lengths(&mut self, cmd: &[u8], what: &str) -> Result<Result<i64, String>, RespError> {
        let (a, b) = self.both(&[cmd, self.key]).await?;
        let (a, b) = (int(&a), int(&b));
        Ok(if a == b { Ok(a) } else { Err(format!("{what} {a} vs {b}")) })
    }

    async fn string(&mut self, ps: &Probe, pt: &Probe) -> Result<Option<String>, RespError> {
        let (Some(ha), Some(hb)) = (&ps.head, &pt.head) else {
            return Ok(Some("unreadable".into()));
        };
        if ha != hb {
            return self.string_lengths().await;
        }
        if ha.len() < HEAD_BYTES {
            return Ok(None);
        }
        let mut from = HEAD_BYTES;
        loop {
            let (f, t) = (from.to_string(), (from + STRING_PAGE - 1).to_string());
            let (a, b) = self.both(&[&b"GETRANGE"[..], self.key, f.as_bytes(), t.as_bytes()]).await?;
            if a != b {
                return self.string_lengths().await;
            }
            let n = a.as_bytes().map(|b| b.len()).unwrap_or(0);
            if n < STRING_PAGE {
                return Ok(None);
            }
            from += STRING_PAGE;
        }
    }

    async fn string_lengths(&mut self) -> Result<Option<String>, RespError> {
        let (a, b) = self.both(&[&b"STRLEN"[..], self.key]).await?;
        Ok(Some(format!("{} vs {} bytes", int(&a), int(&b))))
    }

    async fn list(&mut self) -> Result<Option<String>, RespError> {
        let len = match self.lengths(b"LLEN", "length").await? {
            Ok(l) => l,
            Err(d) => return Ok(Some(d)),
        };
        let mut start = 0i64;
        while start < len {
            let (f, t) = (start.to_string(), (start + PAGE as i64 - 1).to_string());
            let (a, b) = self.both(&[&b"LRANGE"[..], self.key, f.as_bytes(), t.as_bytes()]).await?;
            let (a, b) = (bytes_list(a), bytes_list(b));
            if a != b {
                let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                return Ok(Some(format!("at index {}", start + at as i64)));
            }
            if a.is_empty() {
                break;
            }
            start += PAGE as i64;
        }
        Ok(None)
    }

    async fn set(&mut self) -> Result<Option<String>, RespError> {
        let card = match self.lengths(b"SCARD", "cardinality").await? {
            Ok(c) => c,
            Err(d) => return Ok(Some(d)),
        };
        if card <= SMALL {
            let (a, b) = self.both(&[&b"SMEMBERS"[..], self.key]).await?;
            let (mut a, mut b) = (bytes_list(a), bytes_list(b));
            a.sort();
            b.sort();
            if a != b {
                let m = a.iter().find(|m| b.binary_search(m).is_err()).or_else(|| b.first());
                return Ok(Some(format!("member {}", m.map(|m| show(m)).unwrap_or_default())));
            }
            return Ok(None);
        }
        // Every member of the source on the target, and the same cardinality: the same set.
        let (db, key) = (self.db, self.key);
        let count = PAGE.to_string();
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let r = self.src.call(db, key, &[b"SSCAN", key, &cursor, b"COUNT", count.as_bytes()]).await?;
            let mut parts = array(r);
            if parts.len() != 2 {
                return Ok(Some("unexpected reply to SSCAN".into()));
            }
            let members = bytes_list(parts.pop().expect("two parts"));
            cursor = parts.pop().and_then(|c| c.as_bytes().cloned()).unwrap_or_else(|| Bytes::from_static(b"0"));
            if !members.is_empty() {
                let mut args: Vec<&[u8]> = vec![b"SMISMEMBER", key];
                args.extend(members.iter().map(|m| &m[..]));
                let found = array(self.tgt.call(db, key, &args).await?);
                if let Some(i) = found.iter().position(|f| int(f) != 1) {
                    return Ok(Some(format!("member {} missing on the target", show(&members[i]))));
                }
            }
            if &cursor[..] == b"0" {
                return Ok(None);
            }
        }
    }

    async fn zset(&mut self) -> Result<Option<String>, RespError> {
        let len = match self.lengths(b"ZCARD", "cardinality").await? {
            Ok(l) => l,
            Err(d) => return Ok(Some(d)),
        };
        // ZRANGE by rank: both sides order members the same way when they hold the same set.
        let mut start = 0i64;
        while start < len {
            let (f, t) = (start.to_string(), (start + PAGE as i64 - 1).to_string());
            let (a, b) = self.both(&[&b"ZRANGE"[..], self.key, f.as_bytes(), t.as_bytes(), b"WITHSCORES"]).await?;
            let (a, b) = (bytes_list(a), bytes_list(b));
            if a.len() != b.len() {
                return Ok(Some(format!("near rank {start}")));
            }
            for (i, (x, y)) in a.chunks(2).zip(b.chunks(2)).enumerate() {
                let rank = start + i as i64;
                if x[0] != y[0] {
                    return Ok(Some(format!("at rank {rank} (member {} vs {})", show(&x[0]), show(&y[0]))));
                }
                if x.len() < 2 || y.len() < 2 || score_bits(&x[1]) != score_bits(&y[1]) {
                    return Ok(Some(format!("score of member {}", show(&x[0]))));
                }
            }
            if a.is_empty() {
                break;
            }
            start += PAGE as i64;
        }
        Ok(None)
    }

    async fn hash(&mut self) -> Result<Option<String>, RespError> {
        let len = match self.lengths(b"HLEN", "length").await? {
            Ok(l) => l,
            Err(d) => return Ok(Some(d)),
        };
        if len <= SMALL {
            let (a, b) = self.both(&[&b"HGETALL"[..], self.key]).await?;
            let pairs = |r: Reply| {
                let flat = bytes_list(r);
                let mut p: Vec<(Bytes, Bytes)> = flat.chunks_exact(2).map(|c| (c[0].clone(), c[1].clone())).collect();
                p.sort();
                p
            };
            let (a, b) = (pairs(a), pairs(b));
            if a != b {
                let f = a.iter().zip(&b).find(|(x, y)| x != y).map(|(x, _)| &x.0).or(a.first().map(|x| &x.0));
                return Ok(Some(format!("field {}", f.map(|f| show(f)).unwrap_or_default())));
            }
            return Ok(None);
        }
        // Every field of the source with the same value on the target, and the same length.
        let (db, key) = (self.db, self.key);
        let count = PAGE.to_string();
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let r = self.src.call(db, key, &[b"HSCAN", key, &cursor, b"COUNT", count.as_bytes()]).await?;
            let mut parts = array(r);
            if parts.len() != 2 {
                return Ok(Some("unexpected reply to HSCAN".into()));
            }
            let flat = bytes_list(parts.pop().expect("two parts"));
            cursor = parts.pop().and_then(|c| c.as_bytes().cloned()).unwrap_or_else(|| Bytes::from_static(b"0"));
            let pairs: Vec<(&Bytes, &Bytes)> = flat.chunks_exact(2).map(|c| (&c[0], &c[1])).collect();
            if !pairs.is_empty() {
                let mut args: Vec<&[u8]> = vec![b"HMGET", key];
                args.extend(pairs.iter().map(|(f, _)| &f[..]));
                let values = array(self.tgt.call(db, key, &args).await?);
                for (i, (f, v)) in pairs.iter().enumerate() {
                    if values.get(i).and_then(Reply::as_bytes) != Some(*v) {
                        return Ok(Some(format!("field {}", show(f))));
                    }
                }
            }
            if &cursor[..] == b"0" {
                return Ok(None);
            }
        }
    }

    async fn stream(&mut self) -> Result<Option<String>, RespError> {
        if let Err(d) = self.lengths(b"XLEN", "length").await? {
            return Ok(Some(d));
        }
        let count = PAGE.to_string();
        let mut from = Bytes::from_static(b"-");
        loop {
            let (a, b) = self.both(&[&b"XRANGE"[..], self.key, &from, b"+", b"COUNT", count.as_bytes()]).await?;
            let (a, b) = (array(a), array(b));
            if a != b {
                let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                let id = a.get(at).or(b.get(at)).map(entry_id).unwrap_or_default();
                return Ok(Some(format!("entries differ at {}", show(&id))));
            }
            if a.len() < PAGE {
                break;
            }
            let last = a.last().map(entry_id).unwrap_or_default();
            let mut next = b"(".to_vec();
            next.extend_from_slice(&last);
            from = Bytes::from(next);
        }
        // Metadata: groups, consumers, pending entries (the first PAGE of each), ids and counters.
        let (a, b) = self.both(&[&b"XINFO"[..], b"STREAM", self.key, b"FULL", b"COUNT", count.as_bytes()]).await?;
        let ((a, ta), (b, tb)) = (strip_stream_info(a), strip_stream_info(b));
        if a != b {
            return Ok(Some(format!("metadata differs ({})", first_differing_field(&a, &b))));
        }
        if ta.iter().zip(&tb).any(|(x, y)| x.abs_diff(*y) > self.tolerance_ms) {
            return Ok(Some("delivery times of pending entries differ".into()));
        }
        // Pending lists longer than one page: the rest through XPENDING (id, consumer, deliveries).
        for group in big_pending_groups(&a) {
            if let Some(d) = self.pending(&group).await? {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    async fn pending(&mut self, group: &[u8]) -> Result<Option<String>, RespError> {
        let count = PAGE.to_string();
        let mut from = Bytes::from_static(b"-");
        loop {
            let (a, b) = self.both(&[&b"XPENDING"[..], self.key, group, &from, b"+", count.as_bytes()]).await?;
            let keep = |r: Reply| -> Vec<Vec<Reply>> {
                array(r)
                    .into_iter()
                    .map(|e| {
                        let mut e = array(e);
                        if e.len() > 2 {
                            e.remove(2); // idle time: depends on when it is asked
                        }
                        e
                    })
                    .collect()
            };
            let (a, b) = (keep(a), keep(b));
            if a != b {
                return Ok(Some(format!("pending entries of group {} differ", show(group))));
            }
            if a.len() < PAGE {
                return Ok(None);
            }
            let last = a.last().and_then(|e| e.first()).and_then(Reply::as_bytes).cloned().unwrap_or_default();
            let mut next = b"(".to_vec();
            next.extend_from_slice(&last);
            from = Bytes::from(next);
        }
    }

    async fn dump(&mut self) -> Result<Option<String>, RespError> {
        // An unknown (module) type: the serialized value without the RDB version and checksum.
        let (a, b) = self.both(&[&b"DUMP"[..], self.key]).await?;
        let body = |r: &Reply| r.as_bytes().map(|b| b.slice(..b.len().saturating_sub(10)));
        Ok((body(&a) != body(&b)).then(|| "serialized values differ".into()))
    }
}

fn entry_id(e: &Reply) -> Bytes {
    match e {
        Reply::Array(Some(parts)) => parts.first().and_then(Reply::as_bytes).cloned().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// Fields of XINFO STREAM FULL that depend on the wall clock or on the radix tree's shape.
const VOLATILE: [&[u8]; 4] = [b"seen-time", b"active-time", b"radix-tree-keys", b"radix-tree-nodes"];

fn is_field(r: &Reply, name: &[u8]) -> bool {
    r.as_bytes().is_some_and(|b| &b[..] == name)
}

/// A flat `[name, value, ...]` map without the volatile fields, each value passed through `f`.
fn map_fields(r: Reply, mut f: impl FnMut(&Reply, Reply) -> Reply) -> Reply {
    let Reply::Array(Some(items)) = r else { return r };
    let mut out = Vec::with_capacity(items.len());
    let mut it = items.into_iter();
    while let Some(name) = it.next() {
        let value = it.next();
        if name.as_bytes().is_some_and(|b| VOLATILE.contains(&&b[..])) {
            continue;
        }
        let value = value.map(|v| f(&name, v));
        out.push(name);
        out.extend(value);
    }
    Reply::Array(Some(out))
}

/// Takes the delivery time (at `index`) out of every pending entry, into `times`.
fn take_delivery_times(pending: Reply, index: usize, times: &mut Vec<i64>) -> Reply {
    let Reply::Array(Some(entries)) = pending else { return pending };
    Reply::Array(Some(
        entries
            .into_iter()
            .map(|e| match e {
                Reply::Array(Some(mut parts)) if parts.len() > index => {
                    times.push(int(&parts.remove(index)));
                    Reply::Array(Some(parts))
                }
                other => other,
            })
            .collect(),
    ))
}

/// XINFO STREAM FULL without the entries (compared with XRANGE), the wall-clock and radix-tree
/// fields, and the delivery times of pending entries (returned apart: they are compared within
/// the tolerance, as a copy made by commands rather than RESTORE cannot keep them exactly).
pub(crate) fn strip_stream_info(r: Reply) -> (Reply, Vec<i64>) {
    let mut times = Vec::new();
    let Reply::Array(Some(items)) = r else { return (r, times) };
    let mut top = Vec::with_capacity(items.len());
    let mut it = items.into_iter();
    while let Some(name) = it.next() {
        let value = it.next();
        if is_field(&name, b"entries") {
            continue;
        }
        top.push(name);
        top.extend(value);
    }
    let info = map_fields(Reply::Array(Some(top)), |name, v| {
        if !is_field(name, b"groups") {
            return v;
        }
        let Reply::Array(Some(groups)) = v else { return v };
        let groups = groups.into_iter().map(|g| {
            map_fields(g, |name, v| {
                if is_field(name, b"pending") {
                    // [id, consumer, delivery-time, delivery-count]
                    take_delivery_times(v, 2, &mut times)
                } else if is_field(name, b"consumers") {
                    let Reply::Array(Some(consumers)) = v else { return v };
                    Reply::Array(Some(
                        consumers
                            .into_iter()
                            .map(|c| {
                                map_fields(c, |name, v| {
                                    // [id, delivery-time, delivery-count]
                                    if is_field(name, b"pending") { take_delivery_times(v, 1, &mut times) } else { v }
                                })
                            })
                            .collect(),
                    ))
                } else {
                    v
                }
            })
        });
        Reply::Array(Some(groups.collect()))
    });
    (info, times)
}

/// The name of the first top-level field of two XINFO replies that differs.
fn first_differing_field(a: &Reply, b: &Reply) -> String {
    let (Reply::Array(Some(a)), Reply::Array(Some(b))) = (a, b) else { return "shape".into() };
    for (x, y) in a.chunks(2).zip(b.chunks(2)) {
        if x != y {
            return x[0].as_bytes().map(|n| String::from_utf8_lossy(n).to_string()).unwrap_or_default();
        }
    }
    "fields".into()
}

/// Groups whose pending list has more entries than XINFO FULL showed.
fn big_pending_groups(info: &Reply) -> Vec<Bytes> {
    let field = |items: &[Reply], name: &[u8]| -> Option<Reply> {
        items.chunks(2).find(|c| c[0].as_bytes().is_some_and(|b| &b[..] == name)).and_then(|c| c.get(1).cloned())
    };
    let Reply::Array(Some(top)) = info else { return Vec::new() };
    let Some(Reply::Array(Some(groups))) = field(top, b"groups") else { return Vec::new() };
    groups
        .iter()
        .filter_map(|g| {
            let Reply::Array(Some(g)) = g else { return None };
            let pel = field(g, b"pel-count").map(|r| int(&r)).unwrap_or(0);
            if pel as usize > PAGE { field(g, b"name").and_then(|n| n.as_bytes().cloned()) } else { None }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_compare_exactly() {
        assert_eq!(score_bits(b"inf"), Ok(f64::INFINITY.to_bits()));
        assert_eq!(score_bits(b"-inf"), Ok(f64::NEG_INFINITY.to_bits()));
        assert_ne!(score_bits(b"0"), score_bits(b"-0"));
        assert_ne!(score_bits(b"0.1"), score_bits(b"0.10000000000000002"));
        assert_eq!(score_bits(b"0.1"), score_bits(b"0.10000000000000000"));
    }

    #[test]
    fn ttl_tolerance() {
        let p = |ttl| Probe { ty: Ok("string".into()), ttl: Ok(ttl), head: None };
        assert_eq!(compare_ttl(&p(-1), &p(-1), 0), None);
        assert_eq!(compare_ttl(&p(1000), &p(2500), 2000), None);
        assert_eq!(
            compare_ttl(&p(1000), &p(9000), 2000),
            Some(DiffKind::TtlDiffers { by_ms: Some(8000), source_expires: true })
        );
        assert_eq!(compare_ttl(&p(-1), &p(5), 2000), Some(DiffKind::TtlDiffers { by_ms: None, source_expires: false }));
    }

    #[test]
    fn stream_info_loses_volatile_fields_and_entries() {
        let b = |s: &str| Reply::Bulk(Some(Bytes::from(s.to_string())));
        let pel =
            |t| Reply::Array(Some(vec![Reply::Array(Some(vec![b("1-1"), Reply::Integer(t), Reply::Integer(1)]))]));
        let consumer =
            Reply::Array(Some(vec![b("name"), b("alice"), b("seen-time"), Reply::Integer(5), b("pending"), pel(1234)]));
        let info = Reply::Array(Some(vec![
            b("length"),
            Reply::Integer(3),
            b("radix-tree-keys"),
            Reply::Integer(1),
            b("entries"),
            Reply::Array(Some(vec![b("x")])),
            b("groups"),
            Reply::Array(Some(vec![Reply::Array(Some(vec![b("consumers"), Reply::Array(Some(vec![consumer]))]))])),
        ]));
        let (info, times) = strip_stream_info(info);
        assert_eq!(times, vec![1234]);
        let s = format!("{info:?}");
        assert!(s.contains("length") && s.contains("alice") && s.contains("1-1"), "{s}");
        assert!(!s.contains("1234"), "{s}");
        assert!(!s.contains("seen-time") && !s.contains("radix") && !s.contains("\"entries\""), "{s}");
    }
}
