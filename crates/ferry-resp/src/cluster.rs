//! Redis Cluster basics: key slots (CRC16 with hash tags), the slot map from
//! `CLUSTER SLOTS`, and a hash tag for every slot (to place ferry's own keys).

use crate::frame::Reply;

/// Number of hash slots.
pub const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM), as Redis Cluster uses.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot of a key: the CRC16 of its hash tag (`{...}`, first non-empty one) or of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&c| c == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS as u16
}

/// A short string for every slot whose `{tag}` hashes to that slot (computed once).
pub fn slot_tags() -> &'static [String] {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    TAGS.get_or_init(compute_slot_tags)
}

fn compute_slot_tags() -> Vec<String> {
    let mut tags: Vec<Option<String>> = vec![None; SLOTS];
    let mut left = SLOTS;
    let mut n: u64 = 0;
    while left > 0 {
        let t = n.to_string();
        let s = key_slot(t.as_bytes()) as usize;
        if tags[s].is_none() {
            tags[s] = Some(t);
            left -= 1;
        }
        n += 1;
    }
    tags.into_iter().map(|t| t.unwrap_or_default()).collect()
}

/// Which master serves each slot (`host:port`), from a `CLUSTER SLOTS` reply.
#[derive(Clone, Debug)]
pub struct SlotMap {
    owner: Vec<Option<u16>>,
    pub masters: Vec<String>,
}

impl SlotMap {
    /// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`.
    pub fn from_cluster_slots(reply: &Reply) -> Option<SlotMap> {
        let Reply::Array(Some(ranges)) = reply else { return None };
        let mut owner = vec![None; SLOTS];
        let mut masters: Vec<String> = Vec::new();
        for r in ranges {
            let Reply::Array(Some(parts)) = r else { return None };
            let (Some(Reply::Integer(start)), Some(Reply::Integer(end)), Some(Reply::Array(Some(m)))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            let host = m.first()?.as_bytes().map(|b| String::from_utf8_lossy(b).to_string())?;
            let Some(Reply::Integer(port)) = m.get(1) else { return None };
            let addr = format!("{host}:{port}");
            let idx = match masters.iter().position(|a| *a == addr) {
                Some(i) => i,
                None => {
                    masters.push(addr);
                    masters.len() - 1
                }
            };
            // A range outside 0..16384 is not something Redis sends: refuse the reply.
            let in_range = |s: i64| (0..SLOTS as i64).contains(&s);
            if !in_range(*start) || !in_range(*end) || start > end {
                return None;
            }
            owner[*start as usize..=*end as usize].fill(Some(idx as u16));
        }
        Some(SlotMap { owner, masters })
    }

    /// Every node a `CLUSTER SLOTS` reply names, masters and replicas (`host:port`): the
    /// places to ask for the slot map when the configured node is gone.
    pub fn nodes_of_cluster_slots(reply: &Reply) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Reply::Array(Some(ranges)) = reply else { return out };
        for r in ranges {
            let Reply::Array(Some(parts)) = r else { continue };
            for node in parts.iter().skip(2) {
                let Reply::Array(Some(n)) = node else { continue };
                let (Some(host), Some(Reply::Integer(port))) = (n.first().and_then(|h| h.as_bytes()), n.get(1)) else {
                    continue;
                };
                let addr = format!("{}:{port}", String::from_utf8_lossy(host));
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
        out
    }

    /// The index (in `masters`) of the master serving `slot`, if any.
    pub fn node_of(&self, slot: u16) -> Option<usize> {
        self.owner.get(slot as usize).copied().flatten().map(|i| i as usize)
    }

    /// Whether every slot is served.
    pub fn complete(&self) -> bool {
        self.owner.iter().all(Option::is_some)
    }

    /// A slot served by master `node` (for ferry's own per-node keys).
    pub fn a_slot_of(&self, node: usize) -> Option<u16> {
        self.owner.iter().position(|o| *o == Some(node as u16)).map(|s| s as u16)
    }

    /// The index of master `addr`, when it serves at least one slot.
    pub fn master_index(&self, addr: &str) -> Option<usize> {
        self.masters.iter().position(|m| m == addr).filter(|&n| self.a_slot_of(n).is_some())
    }
}

/// The slots the node answering `CLUSTER NODES` is migrating away, each with the address
/// (`host:port`) of the node importing it: its `myself` line lists them as
/// `[slot->-nodeid]`, and the importer's line gives the address.
pub fn migrating_slots(cluster_nodes: &str) -> Vec<(u16, String)> {
    let addr_of = |id: &str| {
        cluster_nodes.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == id).then(|| f.next()).flatten().map(|a| a.split(['@', ',']).next().unwrap_or(a).to_string())
        })
    };
    let Some(myself) =
        cluster_nodes.lines().find(|l| l.split_whitespace().nth(2).is_some_and(|f| f.contains("myself")))
    else {
        return Vec::new();
    };
    myself
        .split_whitespace()
        .skip(8)
        .filter_map(|t| {
            let (slot, id) = t.strip_prefix('[')?.strip_suffix(']')?.split_once("->-")?;
            Some((slot.parse().ok()?, addr_of(id)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"{}x"), crc16(b"{}x") % 16384);
    }

    #[test]
    fn slot_ranges_outside_the_slot_space_are_refused() {
        let reply = |start: i64, end: i64| {
            Reply::Array(Some(vec![Reply::Array(Some(vec![
                Reply::Integer(start),
                Reply::Integer(end),
                Reply::Array(Some(vec![Reply::Simple("h".into()), Reply::Integer(1)])),
            ]))]))
        };
        // Found by the resp_frame fuzz target: an end of -1 used to index the whole address space.
        assert!(SlotMap::from_cluster_slots(&reply(0, -1)).is_none());
        assert!(SlotMap::from_cluster_slots(&reply(-5, 10)).is_none());
        assert!(SlotMap::from_cluster_slots(&reply(10, 16384)).is_none());
        assert!(SlotMap::from_cluster_slots(&reply(10, 5)).is_none());
        let m = SlotMap::from_cluster_slots(&reply(0, 16383)).unwrap();
        assert!(m.complete());
    }

    #[test]
    fn migrating_slots_come_from_the_myself_line() {
        let nodes = "\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-100 [5->-bbb] [7-<-ccc]
bbb 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 101-200
ccc 127.0.0.1:7002@17002 master - 0 0 3 connected
";
        assert_eq!(migrating_slots(nodes), vec![(5, "127.0.0.1:7001".to_string())]);
        assert!(migrating_slots("garbage").is_empty());
        assert!(migrating_slots("aaa 1:2@3 myself,master - 0 0 1 connected [5->-zzz]").is_empty());
    }

    #[test]
    fn every_slot_has_a_tag() {
        let tags = slot_tags();
        assert_eq!(tags.len(), SLOTS);
        for (slot, t) in tags.iter().enumerate().step_by(997) {
            assert_eq!(key_slot(format!("x{{{t}}}y").as_bytes()) as usize, slot);
        }
    }
}
