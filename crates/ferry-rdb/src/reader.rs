//! Buffered byte source: counts the offset, feeds a running CRC-64 and can
//! capture the raw bytes of a value (up to a limit).

use crate::crc::CRC64;
use crate::error::ErrorKind;
use std::io::Read;

const BUF_SIZE: usize = 64 * 1024;

pub(crate) struct Src<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    offset: u64,
    /// `buf[mark..pos]`: consumed, not yet fed to the CRC and the capture. They are fed a
    /// buffer's worth at a time ([`Src::flush`]), not a read at a time: most reads are of a
    /// few bytes, and the CRC is fast only over long runs.
    mark: usize,
    crc: Option<crc::Digest<'static, u64, crate::crc::Crc64Impl>>,
    capture: Option<Vec<u8>>,
    capture_limit: usize,
}

impl<R: Read> Src<R> {
    pub(crate) fn new(inner: R, checksum: bool) -> Self {
        Src {
            inner,
            buf: vec![0; BUF_SIZE],
            pos: 0,
            end: 0,
            offset: 0,
            mark: 0,
            crc: if checksum { Some(CRC64.digest()) } else { None },
            capture: None,
            capture_limit: 0,
        }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// CRC-64 of every byte consumed so far (None when not computed).
    pub(crate) fn crc(&self) -> Option<u64> {
        self.crc.as_ref().map(|d| {
            let mut d = d.clone();
            d.update(&self.buf[self.mark..self.pos]);
            d.finalize()
        })
    }

    /// Feeds the bytes consumed since the last call to the CRC and the capture.
    fn flush(&mut self) {
        if self.mark == self.pos {
            return;
        }
        let chunk = &self.buf[self.mark..self.pos];
        if let Some(d) = self.crc.as_mut() {
            d.update(chunk);
        }
        if let Some(c) = self.capture.as_mut() {
            if c.len() + chunk.len() > self.capture_limit {
                self.capture = None;
            } else {
                c.extend_from_slice(chunk);
            }
        }
        self.mark = self.pos;
    }

    /// Start capturing consumed bytes; `prefix` is recorded first.
    pub(crate) fn start_capture(&mut self, limit: usize, prefix: &[u8]) {
        self.flush();
        if limit == 0 || prefix.len() > limit {
            self.capture = None;
            return;
        }
        // Small: most values are; [`Src::reserve_capture`] sizes it when the size is known.
        let mut v = Vec::with_capacity(limit.min(64));
        v.extend_from_slice(prefix);
        self.capture = Some(v);
        self.capture_limit = limit;
    }

    /// Room for `n` more captured bytes, at once: up to a buffer's worth (a header's length
    /// is only a claim until the bytes arrive; beyond that the capture grows as they do).
    pub(crate) fn reserve_capture(&mut self, n: u64) {
        let pending = self.pos - self.mark;
        if let Some(c) = self.capture.as_mut() {
            c.reserve(pending + n.min(BUF_SIZE as u64) as usize);
        }
    }

    /// Whether `n` more bytes keep the capture within its limit.
    pub(crate) fn capture_fits(&self, n: u64) -> bool {
        let pending = (self.pos - self.mark) as u64;
        self.capture.as_ref().is_some_and(|c| (c.len() as u64 + pending).saturating_add(n) <= self.capture_limit as u64)
    }

    pub(crate) fn stop_capture(&mut self) -> Option<Vec<u8>> {
        self.flush();
        self.capture.take()
    }

    fn fill(&mut self) -> Result<bool, ErrorKind> {
        if self.pos < self.end {
            return Ok(true);
        }
        self.flush();
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pos = 0;
                    self.mark = 0;
                    self.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.offset += n as u64;
    }

    /// Read exactly `out.len()` bytes. Ok(false) if the input ended before
    /// any byte was read; Truncated if it ended in the middle.
    pub(crate) fn read_exact_or_eof(&mut self, out: &mut [u8]) -> Result<bool, ErrorKind> {
        let mut done = 0;
        while done < out.len() {
            if !self.fill()? {
                if done == 0 {
                    return Ok(false);
                }
                return Err(ErrorKind::Truncated);
            }
            let n = (self.end - self.pos).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.consume(n);
            done += n;
        }
        Ok(true)
    }

    pub(crate) fn read_exact(&mut self, out: &mut [u8]) -> Result<(), ErrorKind> {
        if out.is_empty() {
            return Ok(());
        }
        if self.read_exact_or_eof(out)? { Ok(()) } else { Err(ErrorKind::Truncated) }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ErrorKind> {
        if self.pos < self.end {
            let b = self.buf[self.pos];
            self.consume(1);
            return Ok(b);
        }
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ErrorKind> {
        let mut b = [0u8; N];
        self.read_exact(&mut b)?;
        Ok(b)
    }

    /// Read `n` bytes; the buffer grows only as bytes actually arrive.
    pub(crate) fn read_vec(&mut self, n: u64) -> Result<Vec<u8>, ErrorKind> {
        let mut v = Vec::with_capacity((n as usize).min(BUF_SIZE));
        let mut left = n;
        while left > 0 {
            if !self.fill()? {
                return Err(ErrorKind::Truncated);
            }
            let k = ((self.end - self.pos) as u64).min(left) as usize;
            v.extend_from_slice(&self.buf[self.pos..self.pos + k]);
            self.consume(k);
            left -= k as u64;
        }
        Ok(v)
    }

    pub(crate) fn skip(&mut self, n: u64) -> Result<(), ErrorKind> {
        let mut left = n;
        while left > 0 {
            if !self.fill()? {
                return Err(ErrorKind::Truncated);
            }
            let k = ((self.end - self.pos) as u64).min(left) as usize;
            self.consume(k);
            left -= k as u64;
        }
        Ok(())
    }
}
