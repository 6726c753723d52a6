//! Bounds-checked LZF decompressor (the format of Redis's `lzf_d.c`).

/// Decompress `input` into a buffer of exactly `out_len` bytes.
///
/// The output buffer grows as bytes are produced (no allocation sized by an
/// untrusted length beyond a small cap); any out-of-range reference, overrun
/// or length mismatch is an error.
pub(crate) fn decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(out_len.min(input.len().saturating_mul(4)).min(1 << 20));
    let mut ip = 0usize;
    while ip < input.len() {
        let ctrl = input[ip] as usize;
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            if ip + run > input.len() {
                return Err("LZF literal run past end of input".into());
            }
            if out.len() + run > out_len {
                return Err("LZF output longer than declared".into());
            }
            out.extend_from_slice(&input[ip..ip + run]);
            ip += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                if ip >= input.len() {
                    return Err("LZF truncated back-reference".into());
                }
                len += input[ip] as usize;
                ip += 1;
            }
            if ip >= input.len() {
                return Err("LZF truncated back-reference".into());
            }
            let back = ((ctrl & 0x1f) << 8) + input[ip] as usize + 1;
            ip += 1;
            len += 2;
            if back > out.len() {
                return Err("LZF back-reference before start of output".into());
            }
            if out.len() + len > out_len {
                return Err("LZF output longer than declared".into());
            }
            let start = out.len() - back;
            for i in 0..len {
                let b = out[start + i];
                out.push(b);
            }
        }
    }
    if out.len() != out_len {
        return Err(format!("LZF output is {} bytes, {} declared", out.len(), out_len));
    }
    Ok(out)
}

/// How far back an LZF back-reference reaches.
const WINDOW: usize = 8192;

/// An LZF string decompressed a part at a time: memory stays bounded by the part size and
/// the 8 KiB window, whatever the string's size (a 512 MB bitmap compresses to a few MB and
/// is never whole in memory). The compressed bytes are read from the source as needed.
pub(crate) struct LzfStream {
    /// Compressed bytes still in the source.
    in_left: u64,
    /// Compressed bytes read, from `ip` on not decoded yet.
    input: Vec<u8>,
    ip: usize,
    /// Declared output bytes not produced yet.
    out_left: usize,
    /// The last (at most [`WINDOW`]) bytes produced: what back-references reach.
    hist: Vec<u8>,
}

impl LzfStream {
    pub(crate) fn new(compressed: u64, len: usize) -> Self {
        LzfStream { in_left: compressed, input: Vec::new(), ip: 0, out_left: len, hist: Vec::new() }
    }

    pub(crate) fn done(&self) -> bool {
        self.out_left == 0 && self.in_left == 0 && self.ip >= self.input.len()
    }

    /// Makes at least `n` undecoded bytes available (fewer only at the end of the input),
    /// reading blocks of compressed bytes with `read`.
    fn want(&mut self, n: usize, read: &mut impl FnMut(u64) -> Result<Vec<u8>, String>) -> Result<(), String> {
        if self.input.len() - self.ip >= n || self.in_left == 0 {
            return Ok(());
        }
        self.input.drain(..self.ip);
        self.ip = 0;
        while self.input.len() < n && self.in_left > 0 {
            let block = self.in_left.min(64 * 1024).max((n - self.input.len()) as u64).min(self.in_left);
            let more = read(block)?;
            if more.is_empty() {
                return Err("LZF input ended early".into());
            }
            self.in_left -= (more.len() as u64).min(self.in_left);
            self.input.extend_from_slice(&more);
        }
        Ok(())
    }

    /// The next part of the output, of about `max` bytes (a back-reference may add up to
    /// 264 more); `None` once the whole declared length was produced.
    pub(crate) fn next_part(
        &mut self,
        max: usize,
        mut read: impl FnMut(u64) -> Result<Vec<u8>, String>,
    ) -> Result<Option<Vec<u8>>, String> {
        if self.out_left == 0 {
            if !self.done() {
                self.want(1, &mut read)?;
                if self.ip < self.input.len() {
                    return Err("LZF output longer than declared".into());
                }
            }
            return Ok(None);
        }
        // History first, then this part: back-references index into both.
        let mut buf = std::mem::take(&mut self.hist);
        let start = buf.len();
        while buf.len() - start < max.max(1) && self.out_left > 0 {
            self.want(1, &mut read)?;
            if self.ip >= self.input.len() {
                return Err(format!("LZF input ended {} bytes short of the declared length", self.out_left));
            }
            let ctrl = self.input[self.ip] as usize;
            if ctrl < 32 {
                let run = ctrl + 1;
                self.want(1 + run, &mut read)?;
                if self.ip + 1 + run > self.input.len() {
                    return Err("LZF literal run past end of input".into());
                }
                if run > self.out_left {
                    return Err("LZF output longer than declared".into());
                }
                buf.extend_from_slice(&self.input[self.ip + 1..self.ip + 1 + run]);
                self.ip += 1 + run;
                self.out_left -= run;
            } else {
                self.want(3, &mut read)?;
                let mut at = self.ip + 1;
                let mut len = ctrl >> 5;
                if len == 7 {
                    len += *self.input.get(at).ok_or("LZF truncated back-reference")? as usize;
                    at += 1;
                }
                let back =
                    ((ctrl & 0x1f) << 8) + *self.input.get(at).ok_or("LZF truncated back-reference")? as usize + 1;
                at += 1;
                len += 2;
                if back > buf.len() {
                    return Err("LZF back-reference before start of output".into());
                }
                if len > self.out_left {
                    return Err("LZF output longer than declared".into());
                }
                let from = buf.len() - back;
                for i in 0..len {
                    let b = buf[from + i];
                    buf.push(b);
                }
                self.ip = at;
                self.out_left -= len;
            }
        }
        let part = buf[start..].to_vec();
        let keep = buf.len().min(WINDOW);
        buf.drain(..buf.len() - keep);
        self.hist = buf;
        Ok(Some(part))
    }
}

#[cfg(test)]
mod tests {
    use super::{LzfStream, decompress};

    /// A long, repetitive LZF stream: literals and back-references of every length class.
    fn sample() -> (Vec<u8>, usize) {
        let mut input = vec![31u8];
        input.extend((0..32u8).map(|i| b'a' + i % 26));
        let mut len = 32;
        for i in 0..5000usize {
            let l = 3 + i % 300; // 3..=302: short (< 9) and long (>= 9) forms
            let back = 1 + (i * 7) % 32;
            let l = l.min(264);
            let code = l - 2;
            if code < 7 {
                input.push(((code << 5) | (back - 1) >> 8) as u8);
            } else {
                input.push(((7 << 5) | (back - 1) >> 8) as u8);
                input.push((code - 7) as u8);
            }
            input.push(((back - 1) & 0xff) as u8);
            len += l;
            if i % 50 == 0 {
                input.push(2);
                input.extend_from_slice(b"xyz");
                len += 3;
            }
        }
        (input, len)
    }

    #[test]
    fn streaming_matches_whole_decompression_in_any_part_size() {
        let (input, len) = sample();
        let whole = decompress(&input, len).unwrap();
        for (max, block) in [(1usize, 1usize), (7, 3), (1000, 64), (1 << 20, 1 << 16)] {
            let mut s = LzfStream::new(input.len() as u64, len);
            let mut pos = 0usize;
            let mut read = |n: u64| {
                let k = (n as usize).min(block.max(1)).max(n.min(3) as usize).min(input.len() - pos);
                let k = if k == 0 { (n as usize).min(input.len() - pos) } else { k };
                let out = input[pos..pos + k].to_vec();
                pos += k;
                Ok(out)
            };
            let mut out = Vec::new();
            while let Some(p) = s.next_part(max, &mut read).unwrap() {
                assert!(p.len() <= max.max(1) + 264, "part of {} bytes for max {max}", p.len());
                out.extend_from_slice(&p);
            }
            assert_eq!(out, whole, "max {max} block {block}");
            assert!(s.hist.len() <= super::WINDOW);
        }
    }

    #[test]
    fn streaming_refuses_what_whole_decompression_refuses() {
        let (input, len) = sample();
        for (inp, l) in [(&input[..], len + 1), (&input[..], len - 1), (&input[..input.len() - 1], len)] {
            let mut s = LzfStream::new(inp.len() as u64, l);
            let mut pos = 0usize;
            let mut read = |n: u64| {
                let k = (n as usize).min(inp.len() - pos);
                let out = inp[pos..pos + k].to_vec();
                pos += k;
                Ok(out)
            };
            let mut res = Ok(());
            loop {
                match s.next_part(4096, &mut read) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            assert!(res.is_err(), "len {l} of {len}, input {} of {}", inp.len(), input.len());
        }
    }

    #[test]
    fn literal_and_backref() {
        // "aaaaaaaaaa": literal 'a', then back-ref len 9 (ctrl len 7 -> 7 + x), distance 1
        let input = [0u8, b'a', (7 << 5), 0, 0];
        let out = decompress(&input, 10).unwrap();
        assert_eq!(out, b"aaaaaaaaaa");
        assert!(decompress(&input, 9).is_err());
        assert!(decompress(&[1u8, b'a'], 2).is_err());
        assert!(decompress(&[(1 << 5), 5], 3).is_err());
    }
}
