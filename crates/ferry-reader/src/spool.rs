//! The reader's spool: frames wait in memory up to a byte limit, then on local disk, so the
//! reader never stops reading the source's socket (a master disconnects a replica whose
//! output buffer grows past `client-output-buffer-limit replica`, it never waits for one).
//!
//! Order is kept: once a frame went to disk, every later one does too until the disk part
//! is drained. Memory stays bounded by the limit; the disk by `max_bytes` (a full spool is
//! an error that says so).

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, bail};
use ferry_proto::Frame;
use prost::Message;
use tokio::sync::Notify;

struct State {
    mem: VecDeque<Frame>,
    mem_bytes: u64,
    file: Option<std::fs::File>,
    write_pos: u64,
    read_pos: u64,
    disk_frames: u64,
    closed: bool,
}

/// A FIFO of frames, in memory then on disk.
pub struct Spool {
    path: PathBuf,
    mem_limit: u64,
    max_bytes: u64,
    state: Mutex<State>,
    ready: Notify,
}

impl Spool {
    /// A spool whose file (created when first needed) is `dir/name`.
    pub fn new(dir: Option<PathBuf>, name: &str, mem_limit: u64, max_bytes: u64) -> Spool {
        let dir = dir.unwrap_or_else(std::env::temp_dir);
        let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        Spool {
            path: dir.join(format!("ferry-spool-{safe}-{}", std::process::id())),
            mem_limit,
            max_bytes,
            state: Mutex::new(State {
                mem: VecDeque::new(),
                mem_bytes: 0,
                file: None,
                write_pos: 0,
                read_pos: 0,
                disk_frames: 0,
                closed: false,
            }),
            ready: Notify::new(),
        }
    }

    /// The spool file, in a directory of this process's own: the directory is created new
    /// (mode 0700) and the file in it too (mode 0600), so neither can be something another
    /// user put there (`spool_dir` may be shared, like /tmp), and what they hold — source
    /// data — is this user's only. Both are removed at once, the open file staying usable:
    /// nothing is left behind, even after a SIGKILL.
    fn create_file(&self) -> anyhow::Result<std::fs::File> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = self.path.with_extension("d");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the spool directory {}", dir.display()))?;
        let file = dir.join("spool");
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("cannot create the spool file {}", file.display()));
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir(&dir);
        opened
    }

    /// Bytes waiting on disk.
    pub fn disk_bytes(&self) -> u64 {
        let s = self.state.lock().unwrap();
        s.write_pos - s.read_pos
    }

    /// Adds a frame; never waits for the consumer.
    pub fn push(&self, frame: Frame) -> anyhow::Result<()> {
        let mut s = self.state.lock().unwrap();
        let size = frame.encoded_len() as u64;
        if s.disk_frames == 0 && (s.mem_bytes + size <= self.mem_limit || s.mem.is_empty()) {
            s.mem_bytes += size;
            s.mem.push_back(frame);
        } else {
            if s.write_pos - s.read_pos + size > self.max_bytes {
                bail!(
                    "the spool is full ({} bytes at {}): the target is too slow for the source's write rate; raise reader.spool_max_bytes",
                    self.max_bytes,
                    self.path.display()
                );
            }
            if s.file.is_none() {
                s.file = Some(self.create_file()?);
            }
            let buf = frame.encode_length_delimited_to_vec();
            let pos = s.write_pos;
            s.file
                .as_ref()
                .expect("opened above")
                .write_all_at(&buf, pos)
                .with_context(|| format!("writing the spool file {}", self.path.display()))?;
            s.write_pos += buf.len() as u64;
            s.disk_frames += 1;
        }
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// No more frames will be pushed.
    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.ready.notify_one();
    }

    /// The next frame, waiting for one; `None` once closed and drained.
    pub async fn pop(&self) -> anyhow::Result<Option<Frame>> {
        loop {
            {
                let mut s = self.state.lock().unwrap();
                if let Some(f) = s.mem.pop_front() {
                    s.mem_bytes -= f.encoded_len() as u64;
                    return Ok(Some(f));
                }
                if s.disk_frames > 0 {
                    let file = s.file.as_ref().expect("frames on disk");
                    let mut head = [0u8; 10];
                    let avail = (s.write_pos - s.read_pos).min(10) as usize;
                    file.read_exact_at(&mut head[..avail], s.read_pos).context("reading the spool")?;
                    let len = prost::decode_length_delimiter(&head[..avail]).context("corrupt spool")?;
                    let hdr = prost::length_delimiter_len(len);
                    let mut body = vec![0u8; len];
                    file.read_exact_at(&mut body, s.read_pos + hdr as u64).context("reading the spool")?;
                    s.read_pos += (hdr + len) as u64;
                    s.disk_frames -= 1;
                    if s.disk_frames == 0 {
                        // Drained: start the file over.
                        s.read_pos = 0;
                        s.write_pos = 0;
                        if let Some(f) = s.file.as_ref() {
                            let _ = f.set_len(0);
                        }
                    }
                    return Ok(Some(Frame::decode(&body[..]).context("corrupt spool")?));
                }
                if s.closed {
                    return Ok(None);
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::frame;

    fn f(i: u8) -> Frame {
        Frame { kind: Some(frame::Kind::Rdb(vec![i; 100].into())) }
    }

    #[tokio::test]
    async fn spills_to_disk_in_order_and_drains() {
        let s = Spool::new(None, "test", 300, 1 << 20);
        for i in 0..20 {
            s.push(f(i)).unwrap();
        }
        assert!(s.disk_bytes() > 0);
        for i in 0..10 {
            assert_eq!(s.pop().await.unwrap(), Some(f(i)));
        }
        // Still spilling until the disk part is drained, order kept.
        s.push(f(20)).unwrap();
        for i in 10..21 {
            assert_eq!(s.pop().await.unwrap(), Some(f(i)));
        }
        assert_eq!(s.disk_bytes(), 0);
        s.close();
        assert_eq!(s.pop().await.unwrap(), None);
    }

    #[test]
    fn the_spool_file_is_created_new_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A link planted where the spool file goes must not be followed.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let s = Spool::new(Some(dir.path().to_path_buf()), "planted", 0, 1 << 20);
        std::os::unix::fs::symlink(&victim, s.path.with_extension("d")).unwrap();
        s.push(f(0)).unwrap();
        let e = format!("{:#}", s.push(f(1)).unwrap_err());
        assert!(e.contains("cannot create the spool directory") && e.contains("planted"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        // Without the link: created with mode 0600 (then unlinked at once, so look while open),
        // and nothing is left in the directory.
        let s = Spool::new(Some(dir.path().to_path_buf()), "private", 0, 1 << 20);
        s.push(f(0)).unwrap();
        s.push(f(1)).unwrap();
        let st = s.state.lock().unwrap();
        let mode = st.file.as_ref().unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "only the victim and the planted link: {left:?}");
    }

    #[test]
    fn a_full_spool_is_a_clear_error() {
        let s = Spool::new(None, "full", 0, 250);
        s.push(f(0)).unwrap();
        s.push(f(1)).unwrap();
        s.push(f(2)).unwrap();
        let e = s.push(f(3)).unwrap_err().to_string();
        assert!(e.contains("spool is full"), "{e}");
    }
}
