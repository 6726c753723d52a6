//! Decoders of Redis's compact blob encodings: listpack, ziplist, intset, zipmap.
//! Every access is bounds-checked; integers are rendered as Redis renders them.

use crate::error::{ErrorKind, corrupt};
use bytes::Bytes;

/// One element of a listpack or ziplist.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Int(i64),
    Str(Bytes),
}

impl Item {
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Item::Int(i) => Bytes::from(i.to_string()),
            Item::Str(b) => b,
        }
    }

    pub(crate) fn as_int(&self) -> Result<i64, ErrorKind> {
        match self {
            Item::Int(i) => Ok(*i),
            Item::Str(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| ErrorKind::Corrupt("expected an integer element".into())),
        }
    }
}

fn get(blob: &[u8], from: usize, n: usize, what: &str) -> Result<usize, ErrorKind> {
    match from.checked_add(n) {
        Some(end) if end <= blob.len() => Ok(end),
        _ => corrupt(format!("{what}: entry runs past the end of the blob")),
    }
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64)
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

/// Decode a listpack into its elements.
pub(crate) fn listpack(blob: &Bytes) -> Result<Vec<Item>, ErrorKind> {
    const W: &str = "listpack";
    let b = &blob[..];
    if b.len() < 7 {
        return corrupt("listpack shorter than its header");
    }
    let total = le(&b[0..4]) as usize;
    if total != b.len() {
        return corrupt(format!("listpack header says {total} bytes, blob is {}", b.len()));
    }
    let num = le(&b[4..6]) as usize;
    let mut items = Vec::with_capacity(num.min(4096));
    let mut p = 6usize;
    loop {
        if p >= b.len() {
            return corrupt("listpack without terminator");
        }
        let c = b[p];
        if c == 0xFF {
            if p + 1 != b.len() {
                return corrupt("listpack terminator before end of blob");
            }
            break;
        }
        let (item, enclen) = if c & 0x80 == 0 {
            (Item::Int((c & 0x7f) as i64), 1)
        } else if c & 0xC0 == 0x80 {
            let l = (c & 0x3f) as usize;
            let end = get(b, p + 1, l, W)?;
            (Item::Str(blob.slice(p + 1..end)), 1 + l)
        } else if c & 0xE0 == 0xC0 {
            get(b, p, 2, W)?;
            let u = (((c & 0x1f) as u64) << 8) | b[p + 1] as u64;
            (Item::Int(sign_extend(u, 13)), 2)
        } else if c & 0xF0 == 0xE0 {
            get(b, p, 2, W)?;
            let l = (((c & 0x0f) as usize) << 8) | b[p + 1] as usize;
            let end = get(b, p + 2, l, W)?;
            (Item::Str(blob.slice(p + 2..end)), 2 + l)
        } else {
            match c {
                0xF0 => {
                    get(b, p, 5, W)?;
                    let l = le(&b[p + 1..p + 5]) as usize;
                    let end = get(b, p + 5, l, W)?;
                    (Item::Str(blob.slice(p + 5..end)), 5 + l)
                }
                0xF1..=0xF4 => {
                    let n = match c {
                        0xF1 => 2,
                        0xF2 => 3,
                        0xF3 => 4,
                        _ => 8,
                    };
                    get(b, p, 1 + n, W)?;
                    let v = le(&b[p + 1..p + 1 + n]);
                    (Item::Int(sign_extend(v, (n * 8) as u32)), 1 + n)
                }
                _ => return corrupt(format!("listpack: invalid encoding byte 0x{c:02x}")),
            }
        };
        let backlen = if enclen <= 127 {
            1
        } else if enclen < 16383 {
            2
        } else if enclen < 2097151 {
            3
        } else if enclen < 268435455 {
            4
        } else {
            5
        };
        p = get(b, p, enclen + backlen, W)?;
        items.push(item);
    }
    if num != 65535 && num != items.len() {
        return corrupt(format!("listpack header says {num} elements, found {}", items.len()));
    }
    Ok(items)
}

/// Decode a ziplist into its elements.
pub(crate) fn ziplist(blob: &Bytes) -> Result<Vec<Item>, ErrorKind> {
    const W: &str = "ziplist";
    let b = &blob[..];
    if b.len() < 11 {
        return corrupt("ziplist shorter than its header");
    }
    let total = le(&b[0..4]) as usize;
    if total != b.len() {
        return corrupt(format!("ziplist header says {total} bytes, blob is {}", b.len()));
    }
    if b[b.len() - 1] != 0xFF {
        return corrupt("ziplist without terminator");
    }
    let num = le(&b[8..10]) as usize;
    let mut items = Vec::with_capacity(num.min(4096));
    let mut p = 10usize;
    loop {
        if p >= b.len() {
            return corrupt("ziplist without terminator");
        }
        if b[p] == 0xFF {
            if p + 1 != b.len() {
                return corrupt("ziplist terminator before end of blob");
            }
            break;
        }
        // prevlen
        p = if b[p] < 254 { p + 1 } else { get(b, p, 5, W)? };
        if p >= b.len() {
            return corrupt("ziplist entry truncated");
        }
        let enc = b[p];
        let (item, next) = match enc >> 6 {
            0 => {
                let l = (enc & 0x3f) as usize;
                let end = get(b, p + 1, l, W)?;
                (Item::Str(blob.slice(p + 1..end)), end)
            }
            1 => {
                get(b, p, 2, W)?;
                let l = (((enc & 0x3f) as usize) << 8) | b[p + 1] as usize;
                let end = get(b, p + 2, l, W)?;
                (Item::Str(blob.slice(p + 2..end)), end)
            }
            2 => {
                if enc != 0x80 {
                    return corrupt(format!("ziplist: invalid string encoding 0x{enc:02x}"));
                }
                get(b, p, 5, W)?;
                let l = u32::from_be_bytes([b[p + 1], b[p + 2], b[p + 3], b[p + 4]]) as usize;
                let end = get(b, p + 5, l, W)?;
                (Item::Str(blob.slice(p + 5..end)), end)
            }
            _ => {
                let n = match enc {
                    0xC0 => 2,
                    0xD0 => 4,
                    0xE0 => 8,
                    0xF0 => 3,
                    0xFE => 1,
                    0xF1..=0xFD => 0,
                    _ => return corrupt(format!("ziplist: invalid encoding 0x{enc:02x}")),
                };
                let end = get(b, p + 1, n, W)?;
                let v =
                    if n == 0 { ((enc & 0x0f) as i64) - 1 } else { sign_extend(le(&b[p + 1..end]), (n * 8) as u32) };
                (Item::Int(v), end)
            }
        };
        p = next;
        items.push(item);
    }
    if num != 65535 && num != items.len() {
        return corrupt(format!("ziplist header says {num} elements, found {}", items.len()));
    }
    Ok(items)
}

/// Decode an intset into decimal-text members.
pub(crate) fn intset(b: &[u8]) -> Result<Vec<Bytes>, ErrorKind> {
    if b.len() < 8 {
        return corrupt("intset shorter than its header");
    }
    let enc = le(&b[0..4]) as usize;
    let n = le(&b[4..8]) as usize;
    if !matches!(enc, 2 | 4 | 8) {
        return corrupt(format!("intset: invalid encoding {enc}"));
    }
    if n.checked_mul(enc).and_then(|x| x.checked_add(8)) != Some(b.len()) {
        return corrupt("intset: length does not match blob size");
    }
    Ok(b[8..].chunks_exact(enc).map(|c| Bytes::from(sign_extend(le(c), (enc * 8) as u32).to_string())).collect())
}

/// Decode a zipmap into (field, value) pairs.
pub(crate) fn zipmap(blob: &Bytes) -> Result<Vec<(Bytes, Bytes)>, ErrorKind> {
    const W: &str = "zipmap";
    let b = &blob[..];
    if b.len() < 2 {
        return corrupt("zipmap too short");
    }
    let mut out = Vec::new();
    let mut p = 1usize;
    let read_len = |p: &mut usize| -> Result<Option<usize>, ErrorKind> {
        if *p >= b.len() {
            return corrupt("zipmap without terminator");
        }
        match b[*p] {
            255 => Ok(None),
            254 => {
                get(b, *p, 5, W)?;
                let l = le(&b[*p + 1..*p + 5]) as usize;
                *p += 5;
                Ok(Some(l))
            }
            l => {
                *p += 1;
                Ok(Some(l as usize))
            }
        }
    };
    loop {
        let Some(kl) = read_len(&mut p)? else {
            if p + 1 != b.len() {
                return corrupt("zipmap terminator before end of blob");
            }
            break;
        };
        let kend = get(b, p, kl, W)?;
        let key = blob.slice(p..kend);
        p = kend;
        let Some(vl) = read_len(&mut p)? else {
            return corrupt("zipmap: key without value");
        };
        if p >= b.len() {
            return corrupt("zipmap entry truncated");
        }
        let free = b[p] as usize;
        p += 1;
        let vend = get(b, p, vl, W)?;
        let val = blob.slice(p..vend);
        p = get(b, vend, free, W)?;
        out.push((key, val));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listpack_ints() {
        // header(6) + 7-bit uint 5 + backlen, 13-bit -1, terminator
        let mut v = vec![0, 0, 0, 0, 2, 0];
        v.extend_from_slice(&[0x05, 0x01]);
        v.extend_from_slice(&[0xDF, 0xFF, 0x02]);
        v.push(0xFF);
        let n = v.len() as u32;
        v[0..4].copy_from_slice(&n.to_le_bytes());
        let items = listpack(&Bytes::from(v)).unwrap();
        assert_eq!(items[0].as_int().unwrap(), 5);
        assert_eq!(items[1].as_int().unwrap(), -1);
    }

    #[test]
    fn intset_16() {
        let v = [2u8, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0x01, 0x00];
        let m = intset(&v).unwrap();
        assert_eq!(m, vec![Bytes::from("-1"), Bytes::from("1")]);
    }
}
