//! Encoding commands as RESP arrays of bulk strings.

use bytes::{BufMut, Bytes, BytesMut};

/// Appends `args` as one RESP command (`*N\r\n$len\r\narg\r\n...`) to `out`.
pub fn encode_command_into<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    let mut len_buf = itoa_buf();
    out.put_u8(b'*');
    out.put_slice(fmt_usize(&mut len_buf, args.len()));
    out.put_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.put_u8(b'$');
        out.put_slice(fmt_usize(&mut len_buf, a.len()));
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
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
    }
}
