//! Encoding commands as RESP arrays of bulk strings.

use bytes::{BufMut, Bytes, BytesMut};

/// Appends `args` as one RESP command (`*N\r\n$len\r\narg\r\n...`) to `out`.
pub fn encode_command_into<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    put_header(out, b'*', args.len());
    for a in args {
        let a = a.as_ref();
        put_header(out, b'$', a.len());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Appends a RESP header: `kind` (`*` for an array, `$` for a bulk string), `n`, CRLF.
pub fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    let mut len_buf = itoa_buf();
    out.put_u8(kind);
    out.put_slice(fmt_usize(&mut len_buf, n));
    out.put_slice(b"\r\n");
}

/// One RESP command as bytes.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let size: usize = args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>() + 16;
    let mut out = BytesMut::with_capacity(size);
    encode_command_into(&mut out, args);
    out.freeze()
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn fmt_usize(buf: &mut [u8; 20], mut n: usize) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_binary_args() {
        let b = encode_command(&[&b"SET"[..], b"k\r\n", b""]);
        assert_eq!(&b[..], b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
        let mut out = BytesMut::new();
        for n in [0, 9, 10, 1234567890, usize::MAX] {
            put_header(&mut out, b'$', n);
        }
        assert_eq!(&out[..], format!("$0\r\n$9\r\n$10\r\n$1234567890\r\n${}\r\n", usize::MAX).as_bytes());
    }
}
