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

#[cfg(test)]
mod tests {
    use super::decompress;

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
