//! A connection's socket whose writes wait in a buffer until the connection's task has run
//! its turn ([`Cork::flush`]).
//!
//! h2 writes every DATA frame of more than 256 bytes with a system call of its own (it chains
//! the payload rather than copy it). On a fan-out each stream's response is such a frame, and
//! on loopback each write is a packet through the whole TCP path, the sender's and the
//! receiver's: `writev` was a third of the server's CPU on a fan-out to 5,000 streams (100 per
//! connection). The connection's task runs its streams and its connection in one turn
//! ([`super::http`]), so what they write in that turn goes out in one write here.
//!
//! The flush is also when a response is on the wire: a stream notes the cache change its
//! responses were built at ([`wrote`]) and the flush that sends them tells the connection's
//! [`WriteTap`], if it has one.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::sync::WriteTap;

/// The most a [`Corked`] socket holds before a write waits for it to be sent (about a
/// hundred streams' responses to one change).
pub const CORK_LIMIT: usize = 256 * 1024;

/// The socket as the HTTP/2 connection sees it: reads go straight to it, writes into the
/// buffer, and a flush is left to the task's end of turn ([`Cork::flush`]).
pub struct Corked {
    state: Arc<Mutex<State>>,
}

/// The connection's task's handle on a [`Corked`] socket: it sends what the turn wrote.
pub struct Cork {
    state: Arc<Mutex<State>>,
    tap: Option<WriteTap>,
}

thread_local! {
    /// The latest cache change a response written in this turn was built at (0: none). A
    /// connection's streams run in its task's turn on one thread, so the turn's flush reads
    /// what they noted.
    static WROTE: Cell<u64> = const { Cell::new(0) };
}

/// Notes that the running turn wrote a response built at cache sequence number `seq`: the
/// turn's [`Cork::flush`] reports it to the connection's [`WriteTap`] once it is sent.
pub fn wrote(seq: u64) {
    WROTE.with(|w| w.set(w.get().max(seq)));
}

struct State {
    socket: TcpStream,
    /// Written and not sent yet, from `sent` on. Empty with no allocation between turns: an
    /// idle connection holds nothing here.
    buf: Vec<u8>,
    sent: usize,
    /// What the last [`Cork::flush`] met, for the connection's next write to return.
    error: Option<io::Error>,
    /// The latest cache change written ([`wrote`]) and not all sent yet (0: none).
    unsent: u64,
}

/// A socket whose writes wait for [`Cork::flush`], and the handle that sends them, which tells
/// `tap` when a response to a cache change is sent.
pub fn cork(socket: TcpStream, tap: Option<WriteTap>) -> (Corked, Cork) {
    let state = Arc::new(Mutex::new(State { socket, buf: Vec::new(), sent: 0, error: None, unsent: 0 }));
    (Corked { state: state.clone() }, Cork { state, tap })
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Sends what is buffered, until all of it is sent or the socket is full (then `cx` is
    /// woken when it has room).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut self.socket).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.buf = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `len` more bytes: what is buffered is sent first when `len` more would pass
    /// [`CORK_LIMIT`].
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if let Some(e) = self.error.take() {
            return Poll::Ready(Err(e));
        }
        if self.buf.len() + len > CORK_LIMIT && self.sent < self.buf.len() {
            ready!(self.poll_send(cx))?;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(len.max(16 * 1024));
        }
        Poll::Ready(Ok(()))
    }
}

impl Cork {
    /// Starts the connection's turn: nothing written yet ([`wrote`]).
    pub fn begin(&self) {
        WROTE.set(0);
    }

    /// Sends what the connection wrote this turn; if the socket is full, the rest goes when it
    /// has room (the task is woken then, and flushes again at the end of that turn). An error
    /// is kept for the connection's next write, which ends the connection. Once all is sent,
    /// the tap hears of the latest cache change the turns wrote, and when the write that sent
    /// the last of it began (on loopback the peer may read it before that write returns).
    pub fn flush(&self, cx: &mut Context<'_>) {
        let wrote = WROTE.take();
        let mut state = lock(&self.state);
        state.unsent = state.unsent.max(wrote);
        // Read only for a tap: no clock read per turn in `serve`.
        let began = self.tap.as_ref().map(|_| std::time::Instant::now());
        match state.poll_send(cx) {
            Poll::Ready(Err(e)) => state.error = Some(e),
            Poll::Ready(Ok(())) if state.unsent > 0 => {
                let seq = std::mem::take(&mut state.unsent);
                drop(state);
                if let (Some(tap), Some(began)) = (&self.tap, began) {
                    tap(seq, began);
                }
            }
            _ => {}
        }
    }

    /// Bytes written and not sent yet.
    #[cfg(test)]
    fn pending(&self) -> usize {
        let state = lock(&self.state);
        state.buf.len() - state.sent
    }
}

impl AsyncRead for Corked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.state).socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Corked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = lock(&self.state);
        ready!(state.poll_room(cx, buf.len()))?;
        state.buf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut state = lock(&self.state);
        let len = bufs.iter().map(|b| b.len()).sum();
        ready!(state.poll_room(cx, len))?;
        for b in bufs {
            state.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Left to the end of the task's turn ([`Cork::flush`]), which always comes: the
    /// connection is polled only by its task's turn.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(lock(&self.state).error.take().map_or(Ok(()), Err))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = lock(&self.state);
        ready!(state.poll_send(cx))?;
        Pin::new(&mut state.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// Writes and flushes wait for the end of the turn; then they go out in one piece, in
    /// order.
    #[tokio::test]
    async fn writes_go_out_when_the_turn_flushes() {
        let (server, mut client) = pair().await;
        let (mut corked, cork) = cork(server, None);
        corked.write_all(b"one ").await.unwrap();
        let n = corked.write_vectored(&[io::IoSlice::new(b"two "), io::IoSlice::new(b"three")]).await.unwrap();
        assert_eq!(n, 9, "a vectored write is taken whole");
        corked.flush().await.unwrap();
        assert_eq!(cork.pending(), 13);
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), client.read(&mut buf)).await;
        assert!(early.is_err(), "nothing is sent before the turn's flush");
        std::future::poll_fn(|cx| {
            cork.flush(cx);
            Poll::Ready(())
        })
        .await;
        assert_eq!(cork.pending(), 0);
        let mut got = Vec::new();
        while got.len() < 13 {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"one two three");
        assert_eq!(lock(&cork.state).buf.capacity(), 0, "an emptied buffer gives its memory back");
    }

    /// A write that would take the buffer past its limit sends what is there first: a turn
    /// never holds much more than the limit.
    #[tokio::test]
    async fn a_full_buffer_is_sent_before_more_is_taken() {
        let (server, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let (mut corked, cork) = cork(server, None);
        let chunk = vec![7u8; CORK_LIMIT / 2 + 1];
        corked.write_all(&chunk).await.unwrap();
        assert_eq!(cork.pending(), chunk.len());
        corked.write_all(&chunk).await.unwrap();
        assert!(cork.pending() <= chunk.len(), "the first chunk went before the second was taken");
        corked.shutdown().await.unwrap();
        assert_eq!(cork.pending(), 0, "shutting down sends the rest");
        drop((corked, cork));
        assert_eq!(reader.await.unwrap().len(), 2 * chunk.len());
    }

    /// The tap hears of the latest change a turn's responses were built at, once the turn's
    /// writes are sent; a turn that noted none, or whose notes came before it began (another
    /// connection's, on the same thread), tells it nothing.
    #[tokio::test]
    async fn the_tap_hears_of_a_turns_latest_change_once_it_is_sent() {
        let (server, mut client) = pair().await;
        let heard: Arc<Mutex<Vec<u64>>> = Default::default();
        let h = heard.clone();
        let (mut corked, cork) = cork(server, Some(Arc::new(move |seq, _| h.lock().unwrap().push(seq))));
        async fn turn(cork: &Cork) {
            std::future::poll_fn(|cx| {
                cork.flush(cx);
                Poll::Ready(())
            })
            .await
        }
        cork.begin();
        corked.write_all(b"a").await.unwrap();
        wrote(3);
        wrote(5);
        wrote(4);
        assert!(heard.lock().unwrap().is_empty(), "nothing before the flush");
        turn(&cork).await;
        assert_eq!(*heard.lock().unwrap(), [5]);

        cork.begin();
        corked.write_all(b"b").await.unwrap();
        turn(&cork).await;
        assert_eq!(*heard.lock().unwrap(), [5], "a turn that wrote no response");

        wrote(11);
        cork.begin();
        corked.write_all(b"c").await.unwrap();
        turn(&cork).await;
        assert_eq!(*heard.lock().unwrap(), [5], "a note from before the turn");

        let mut got = Vec::new();
        let mut buf = [0u8; 8];
        while got.len() < 3 {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"abc");
    }
}
