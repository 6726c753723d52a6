//! A TCP proxy on loopback, put between two ferry stages to break the network between
//! them: it forwards bytes both ways, and on demand cuts every connection, refuses new
//! ones, or stalls them (holds every byte until resumed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Connections opened before the last cut end.
    generation: AtomicU64,
    stalled: AtomicBool,
    refusing: AtomicBool,
    stop: AtomicBool,
}

pub struct Proxy {
    pub addr: String,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `upstream` on a free loopback port.
    pub fn start(upstream: &str) -> Proxy {
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let state = Arc::new(State::default());
        let (listen, up, st) = (addr.clone(), upstream.to_string(), state.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind(&listen).await.expect("proxy bind");
                let _ = ready_tx.send(());
                let mut conns = tokio::task::JoinSet::new();
                while !st.stop.load(SeqCst) {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    };
                    let Ok((client, _)) = accepted else { continue };
                    if st.refusing.load(SeqCst) {
                        drop(client);
                        continue;
                    }
                    let (st, up) = (st.clone(), up.clone());
                    conns.spawn(async move {
                        let Ok(server) = TcpStream::connect(&up).await else { return };
                        let generation = st.generation.load(SeqCst);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        // Either direction ending ends both.
                        tokio::select! {
                            _ = pump(cr, sw, &st, generation) => {}
                            _ = pump(sr, cw, &st, generation) => {}
                        }
                    });
                }
                conns.abort_all();
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("proxy did not start");
        Proxy { addr, state, thread: Some(thread) }
    }

    /// Closes every connection open now (the peers see a reset or an EOF).
    pub fn cut(&self) {
        self.state.generation.fetch_add(1, SeqCst);
    }

    /// Holds every byte (the connections stay open) until `stall(false)`.
    pub fn stall(&self, on: bool) {
        self.state.stalled.store(on, SeqCst);
    }

    /// Accepts and closes new connections at once while `on`.
    pub fn refuse(&self, on: bool) {
        self.state.refusing.store(on, SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until either ends or the connection's generation is cut.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, st: &State, g: u64) {
    let mut buf = vec![0u8; 64 * 1024];
    let cut = || st.generation.load(SeqCst) != g || st.stop.load(SeqCst);
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if cut() { return; }
                continue;
            }
        };
        while st.stalled.load(SeqCst) && !cut() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if cut() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
