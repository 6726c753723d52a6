//! The commands a server knows and where their keys are, from its own `COMMAND` reply: the
//! key specs of Redis 7+ and Valkey (`begin_search` + `find_keys`, which also describe
//! `numkeys` forms), and the older first/last/step triple. Nothing here is a list kept by
//! hand: a command a newer server added (`HSETEX`, `DELIFEQ`, `MSETEX`, ...) is described by
//! the server that knows it.
//!
//! A table travels between ferry's processes as [`CommandTable::encode`]: one RESP array per
//! command, `[name, first, last, step, movable, spec...]`.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::frame::Reply;

/// Where a key spec's keys begin.
#[derive(Clone, Debug, PartialEq)]
enum Begin {
    /// At this argument.
    Index(i64),
    /// After the first argument equal to `keyword` (case-insensitive), searched from
    /// `startfrom` (negative: backwards from the end).
    Keyword {
        keyword: Vec<u8>,
        startfrom: i64,
    },
    Unknown,
}

/// How many keys follow the beginning.
#[derive(Clone, Debug, PartialEq)]
enum Find {
    /// Up to `lastkey` (relative to the beginning; negative: from the end), every `keystep`;
    /// with `limit`, `lastkey` < 0 counts within 1/limit of the rest.
    Range {
        lastkey: i64,
        keystep: i64,
        limit: i64,
    },
    /// The argument at `keynumidx` (relative) says how many; the first is at `firstkey`.
    Keynum {
        keynumidx: i64,
        firstkey: i64,
        keystep: i64,
    },
    Unknown,
}

#[derive(Clone, Debug, PartialEq)]
struct Spec {
    begin: Begin,
    find: Find,
}

#[derive(Clone, Debug, PartialEq)]
struct Command {
    first: i64,
    last: i64,
    step: i64,
    movable: bool,
    specs: Vec<Spec>,
    /// It has subcommands (`container|sub` entries).
    container: bool,
}

impl Command {
    /// The one key's position when the command always has exactly one, there.
    fn single_key(&self) -> Option<usize> {
        if self.container || self.movable {
            return None;
        }
        match &self.specs[..] {
            [Spec { begin: Begin::Index(i), find: Find::Range { lastkey: 0, .. } }] if *i > 0 => {
                usize::try_from(*i).ok()
            }
            [] if self.first > 0 && self.first == self.last => usize::try_from(self.first).ok(),
            _ => None,
        }
    }
}

/// `name` in lower case in `buf`, without allocating (names longer than `buf` are no
/// command's).
fn lower<'b>(name: &[u8], buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_lowercase();
    }
    Some(out)
}

/// Every command (and subcommand, as `container|sub`) a server knows, by lower-case name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandTable {
    commands: HashMap<Vec<u8>, Command>,
}

/// The keys of one command, as a [`CommandTable`] finds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// The positions of its keys in the arguments (`args[0]` is the name).
    At(Vec<usize>),
    /// The server knows the command but its description cannot say (keys found by parsing
    /// the arguments: ask the server, `COMMAND GETKEYS`).
    Unknowable,
    /// The server does not know the command.
    UnknownCommand,
}

fn text(r: &Reply) -> Option<&[u8]> {
    r.as_bytes().map(|b| &b[..])
}

/// A flat `[name, value, name, value, ...]` array as pairs.
fn pairs(r: &Reply) -> Vec<(&[u8], &Reply)> {
    match r {
        Reply::Array(Some(items)) => items.chunks(2).filter_map(|c| Some((text(c.first()?)?, c.get(1)?))).collect(),
        _ => vec![],
    }
}

fn int(r: Option<&Reply>) -> i64 {
    match r {
        Some(Reply::Integer(i)) => *i,
        Some(other) => text(other).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()).unwrap_or(0),
        None => 0,
    }
}

fn field<'a>(p: &[(&[u8], &'a Reply)], name: &str) -> Option<&'a Reply> {
    p.iter().find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| *v)
}

fn parse_spec(r: &Reply) -> Spec {
    let p = pairs(r);
    let kind_and_spec = |name: &str| {
        let part = field(&p, name).map(pairs).unwrap_or_default();
        let kind = field(&part, "type").and_then(text).unwrap_or_default().to_ascii_lowercase();
        let spec = field(&part, "spec").map(pairs).unwrap_or_default();
        (kind, spec.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect::<Vec<_>>())
    };
    let get = |s: &[(Vec<u8>, Reply)], name: &str| s.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.clone());
    let (bk, bs) = kind_and_spec("begin_search");
    let begin = match &bk[..] {
        b"index" => Begin::Index(int(get(&bs, "index").as_ref())),
        b"keyword" => Begin::Keyword {
            keyword: get(&bs, "keyword").and_then(|r| r.as_bytes().map(|b| b.to_vec())).unwrap_or_default(),
            startfrom: int(get(&bs, "startfrom").as_ref()),
        },
        _ => Begin::Unknown,
    };
    let (fk, fs) = kind_and_spec("find_keys");
    let find = match &fk[..] {
        b"range" => Find::Range {
            lastkey: int(get(&fs, "lastkey").as_ref()),
            keystep: int(get(&fs, "keystep").as_ref()),
            limit: int(get(&fs, "limit").as_ref()),
        },
        b"keynum" => Find::Keynum {
            keynumidx: int(get(&fs, "keynumidx").as_ref()),
            firstkey: int(get(&fs, "firstkey").as_ref()),
            keystep: int(get(&fs, "keystep").as_ref()),
        },
        _ => Find::Unknown,
    };
    Spec { begin, find }
}

impl CommandTable {
    /// The table of a `COMMAND` reply (every command, subcommands included).
    pub fn from_reply(reply: &Reply) -> CommandTable {
        let mut t = CommandTable::default();
        if let Reply::Array(Some(entries)) = reply {
            t.add(entries);
        }
        t
    }

    fn add(&mut self, entries: &[Reply]) {
        for e in entries {
            let Reply::Array(Some(f)) = e else { continue };
            let Some(name) = f.first().and_then(text) else { continue };
            let movable = matches!(f.get(2), Some(Reply::Array(Some(flags)))
                if flags.iter().any(|fl| text(fl).is_some_and(|b| b.eq_ignore_ascii_case(b"movablekeys"))));
            let specs = match f.get(8) {
                Some(Reply::Array(Some(specs))) => specs.iter().map(parse_spec).collect(),
                _ => vec![],
            };
            let subs = match f.get(9) {
                Some(Reply::Array(Some(subs))) if !subs.is_empty() => Some(subs),
                _ => None,
            };
            let cmd = Command {
                first: int(f.get(3)),
                last: int(f.get(4)),
                step: int(f.get(5)),
                movable,
                specs,
                container: subs.is_some(),
            };
            self.commands.insert(name.to_ascii_lowercase(), cmd);
            if let Some(subs) = subs {
                self.add(subs);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Whether the server knows the command `name` (any case).
    pub fn knows(&self, name: &[u8]) -> bool {
        let mut buf = [0; 64];
        lower(name, &mut buf).is_some_and(|n| self.commands.contains_key(n))
    }

    /// Where the one key of the command `name` is, when it always has exactly one at a
    /// fixed place (`SET`, `RESTORE`, `HSET`, ...): the cheap path of routing.
    pub fn single_key(&self, name: &[u8]) -> Option<usize> {
        let mut buf = [0; 64];
        self.commands.get(lower(name, &mut buf)?)?.single_key()
    }

    /// The keys of the command `args` (`args[0]` its name): by a subcommand's own
    /// description first (`XGROUP CREATE`: the container `XGROUP` has no key of its own).
    pub fn keys<A: AsRef<[u8]>>(&self, args: &[A]) -> Keys {
        let Some(name) = args.first() else { return Keys::UnknownCommand };
        let name = name.as_ref().to_ascii_lowercase();
        let sub = args.get(1).map(|s| [&name[..], b"|", &s.as_ref().to_ascii_lowercase()[..]].concat());
        let Some(cmd) = sub.and_then(|s| self.commands.get(&s)).or_else(|| self.commands.get(&name)) else {
            return Keys::UnknownCommand;
        };
        if !cmd.specs.is_empty() {
            let mut at = Vec::new();
            for spec in &cmd.specs {
                match spec_keys(spec, args) {
                    Some(keys) => at.extend(keys),
                    None => return Keys::Unknowable,
                }
            }
            at.sort_unstable();
            at.dedup();
            return Keys::At(at);
        }
        if cmd.movable {
            return Keys::Unknowable;
        }
        Keys::At(legacy_keys(cmd.first, cmd.last, cmd.step, args.len()))
    }

    /// The table as bytes for another process ([`CommandTable::decode`]).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        let mut names: Vec<&Vec<u8>> = self.commands.keys().collect();
        names.sort();
        for name in names {
            let c = &self.commands[name];
            let mut args: Vec<Vec<u8>> = vec![
                name.clone(),
                c.first.to_string().into_bytes(),
                c.last.to_string().into_bytes(),
                c.step.to_string().into_bytes(),
                if c.container { vec![b'0' + u8::from(c.movable), b'c'] } else { vec![b'0' + u8::from(c.movable)] },
            ];
            for s in &c.specs {
                let mut e = match &s.begin {
                    Begin::Index(i) => format!("i {i}").into_bytes(),
                    Begin::Keyword { keyword, startfrom } => {
                        let mut b = format!("k {startfrom} ").into_bytes();
                        b.extend_from_slice(keyword);
                        b
                    }
                    Begin::Unknown => b"u".to_vec(),
                };
                let find = match &s.find {
                    Find::Range { lastkey, keystep, limit } => format!("\nr {lastkey} {keystep} {limit}"),
                    Find::Keynum { keynumidx, firstkey, keystep } => format!("\nn {keynumidx} {firstkey} {keystep}"),
                    Find::Unknown => "\nu".to_string(),
                };
                e.extend_from_slice(find.as_bytes());
                args.push(e);
            }
            crate::encode_command_into(&mut out, &args);
        }
        out.freeze()
    }

    /// A table from [`CommandTable::encode`]; `None` when the bytes are not one.
    pub fn decode(bytes: &Bytes) -> Option<CommandTable> {
        let mut t = CommandTable::default();
        let mut pos = 0;
        while pos < bytes.len() {
            let n = crate::scan_command(&bytes[pos..], usize::MAX).ok()??;
            let args = crate::parse_command(&bytes.slice(pos..pos + n)).ok()?;
            pos += n;
            let num = |i: usize| -> Option<i64> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
            let mut specs = Vec::new();
            for s in args.get(5..).unwrap_or_default() {
                let (begin, find) = s.split_at(s.iter().position(|&b| b == b'\n')?);
                let words = |b: &[u8]| -> Vec<i64> {
                    std::str::from_utf8(b).unwrap_or("").split(' ').skip(1).filter_map(|w| w.parse().ok()).collect()
                };
                let begin = match begin.first() {
                    Some(b'i') => Begin::Index(*words(begin).first()?),
                    Some(b'k') => {
                        let rest = begin.get(2..)?;
                        let sp = rest.iter().position(|&b| b == b' ')?;
                        let startfrom = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
                        Begin::Keyword { keyword: rest[sp + 1..].to_vec(), startfrom }
                    }
                    _ => Begin::Unknown,
                };
                let find = &find[1..];
                let w = words(find);
                let find = match (find.first(), &w[..]) {
                    (Some(b'r'), [lastkey, keystep, limit]) => {
                        Find::Range { lastkey: *lastkey, keystep: *keystep, limit: *limit }
                    }
                    (Some(b'n'), [keynumidx, firstkey, keystep]) => {
                        Find::Keynum { keynumidx: *keynumidx, firstkey: *firstkey, keystep: *keystep }
                    }
                    _ => Find::Unknown,
                };
                specs.push(Spec { begin, find });
            }
            let flags = args.get(4)?;
            let cmd = Command {
                first: num(1)?,
                last: num(2)?,
                step: num(3)?,
                movable: flags.first() == Some(&b'1'),
                specs,
                container: flags.get(1) == Some(&b'c'),
            };
            t.commands.insert(args.first()?.to_vec(), cmd);
        }
        Some(t)
    }
}

/// The keys of the first/last/step triple (negative `last`: from the end).
fn legacy_keys(first: i64, last: i64, step: i64, argc: usize) -> Vec<usize> {
    let n = argc as i64;
    if first <= 0 {
        return vec![];
    }
    let last = if last < 0 { n + last } else { last.min(n - 1) };
    (first..=last).step_by(step.max(1) as usize).filter(|&i| i < n).map(|i| i as usize).collect()
}

/// The keys of one key spec (Redis's `getKeysUsingKeySpecs`); `None` when it cannot say.
fn spec_keys<A: AsRef<[u8]>>(spec: &Spec, args: &[A]) -> Option<Vec<usize>> {
    let argc = args.len() as i64;
    let first = match &spec.begin {
        Begin::Index(i) => *i,
        Begin::Keyword { keyword, startfrom } => {
            // As Redis searches: forward from `startfrom` (never the name), backward down to
            // the second argument.
            let (from, to, step): (i64, i64, i64) =
                if *startfrom > 0 { (*startfrom, argc - 1, 1) } else { (argc + startfrom, 2, -1) };
            let mut i = from;
            let mut found = None;
            while (step > 0 && i <= to) || (step < 0 && i >= to) {
                if args.get(i as usize).is_some_and(|a| a.as_ref().eq_ignore_ascii_case(keyword)) {
                    found = Some(i + 1);
                    break;
                }
                i += step;
            }
            // No keyword: no keys of this spec.
            let Some(f) = found else { return Some(vec![]) };
            f
        }
        Begin::Unknown => return None,
    };
    if first <= 0 || first >= argc {
        return Some(vec![]);
    }
    let (first, last, step) = match &spec.find {
        Find::Range { lastkey, keystep, limit } => {
            let last = if *lastkey >= 0 {
                first.checked_add(*lastkey)?
            } else if *limit <= 1 {
                argc.checked_add(*lastkey)?
            } else {
                first.checked_add(((argc - first) / limit).checked_add(*lastkey)?)?
            };
            (first, last, *keystep)
        }
        Find::Keynum { keynumidx, firstkey, keystep } => {
            let idx = usize::try_from(first.checked_add(*keynumidx)?).ok()?;
            let n: i64 = std::str::from_utf8(args.get(idx)?.as_ref()).ok()?.parse().ok()?;
            // A count the arguments cannot hold is a malformed command: no keys to tell.
            if n < 0 || n > argc {
                return None;
            }
            let start = first.checked_add(*firstkey)?;
            (start, start.checked_add(n.checked_sub(1)?.checked_mul((*keystep).max(1))?)?, *keystep)
        }
        Find::Unknown => return None,
    };
    let mut out = Vec::new();
    let mut i = first;
    while i <= last && i < argc {
        out.push(i as usize);
        i += step.max(1);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    fn arr(items: Vec<Reply>) -> Reply {
        Reply::Array(Some(items))
    }

    fn spec(begin: (&str, Vec<Reply>), find: (&str, Vec<Reply>)) -> Reply {
        arr(vec![
            b("flags"),
            arr(vec![b("RW")]),
            b("begin_search"),
            arr(vec![b("type"), b(begin.0), b("spec"), arr(begin.1)]),
            b("find_keys"),
            arr(vec![b("type"), b(find.0), b("spec"), arr(find.1)]),
        ])
    }

    fn entry(name: &str, first: i64, last: i64, step: i64, movable: bool, specs: Vec<Reply>) -> Reply {
        let flags = if movable { vec![b("write"), b("movablekeys")] } else { vec![b("write")] };
        arr(vec![
            b(name),
            Reply::Integer(-2),
            arr(flags),
            Reply::Integer(first),
            Reply::Integer(last),
            Reply::Integer(step),
            arr(vec![]),
            arr(vec![]),
            arr(specs),
            arr(vec![]),
        ])
    }

    /// Key specs as Redis 7.4 / Valkey 8 report them, for commands of several shapes.
    fn table() -> CommandTable {
        let idx = |i: i64| ("index", vec![b("index"), Reply::Integer(i)]);
        let range = |l: i64, s: i64, lim: i64| {
            (
                "range",
                vec![b("lastkey"), Reply::Integer(l), b("keystep"), Reply::Integer(s), b("limit"), Reply::Integer(lim)],
            )
        };
        let keynum = |i: i64, f: i64, s: i64| {
            (
                "keynum",
                vec![
                    b("keynumidx"),
                    Reply::Integer(i),
                    b("firstkey"),
                    Reply::Integer(f),
                    b("keystep"),
                    Reply::Integer(s),
                ],
            )
        };
        CommandTable::from_reply(&arr(vec![
            entry("set", 1, 1, 1, false, vec![spec(idx(1), range(0, 1, 0))]),
            entry("hsetex", 1, 1, 1, false, vec![spec(idx(1), range(0, 1, 0))]),
            entry("mset", 1, -1, 2, false, vec![spec(idx(1), range(-1, 2, 0))]),
            entry("eval", 0, 0, 0, true, vec![spec(idx(2), keynum(0, 1, 1))]),
            entry("msetex", 0, 0, 0, true, vec![spec(idx(1), keynum(0, 1, 2))]),
            entry(
                "xread",
                0,
                0,
                0,
                true,
                vec![spec(
                    ("keyword", vec![b("keyword"), b("STREAMS"), b("startfrom"), Reply::Integer(1)]),
                    range(-1, 1, 2),
                )],
            ),
            entry(
                "sort",
                1,
                1,
                1,
                true,
                vec![spec(idx(1), range(0, 1, 0)), spec(("unknown", vec![]), ("unknown", vec![]))],
            ),
            entry("oldcmd", 1, 2, 1, false, vec![]),
        ]))
    }

    #[test]
    fn keys_come_from_the_servers_key_specs() {
        let t = table();
        let at = |args: &[&str]| t.keys(args);
        assert_eq!(at(&["SET", "k", "v"]), Keys::At(vec![1]));
        assert_eq!(at(&["HSETEX", "h", "PXAT", "1", "FIELDS", "1", "f", "v"]), Keys::At(vec![1]));
        assert_eq!(at(&["MSET", "a", "1", "b", "2"]), Keys::At(vec![1, 3]));
        assert_eq!(at(&["EVAL", "return 1", "2", "x", "y", "arg"]), Keys::At(vec![3, 4]));
        assert_eq!(at(&["EVAL", "return 1", "0"]), Keys::At(vec![]));
        assert_eq!(at(&["MSETEX", "2", "a", "1", "b", "2", "PX", "5"]), Keys::At(vec![2, 4]));
        assert_eq!(at(&["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]), Keys::At(vec![4, 5]));
        assert_eq!(at(&["SORT", "k", "STORE", "d"]), Keys::Unknowable);
        // Malformed counts (a command as a client might send it, not as a server would run
        // it): no keys to tell, never a panic.
        assert_eq!(at(&["EVAL", "x", "-1"]), Keys::Unknowable);
        assert_eq!(at(&["EVAL", "x", "9223372036854775807", "k"]), Keys::Unknowable);
        assert_eq!(at(&["EVAL", "x", "5", "k"]), Keys::Unknowable);
        assert_eq!(at(&["XREAD", "STREAMS"]), Keys::At(vec![]));
        assert_eq!(at(&["OLDCMD", "a", "b", "c"]), Keys::At(vec![1, 2]));
        assert_eq!(at(&["DELIFEQ", "k", "v"]), Keys::UnknownCommand);
        assert!(t.knows(b"HSetEx") && !t.knows(b"delifeq"));
        assert_eq!(t.single_key(b"SET"), Some(1));
        assert_eq!(t.single_key(b"MSET"), None);
        assert_eq!(t.single_key(b"EVAL"), None);
        assert_eq!(t.single_key(b"OLDCMD"), None);
        assert_eq!(crate::command_arg(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n", 2), Some(&b"vv"[..]));
        assert_eq!(crate::command_arg(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n", 3), None);
    }

    #[test]
    fn a_table_survives_encoding() {
        let t = table();
        let back = CommandTable::decode(&t.encode()).expect("decodes");
        assert_eq!(back, t);
        assert!(CommandTable::decode(&Bytes::from_static(b"*1\r\n$3\r\nset\r\n")).is_none());
    }
}
