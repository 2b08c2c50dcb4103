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
//! The socket also tells when a response is on the wire. A stream notes the cache change its
//! responses were built at ([`wrote`]) as it queues them; what the connection writes after the
//! turn began holds them (h2 writes a response in the turn it was queued, or the next). The
//! first send that carries a byte written since then tells the connection's [`WriteTap`], if it
//! has one, when that send began: the turn's first frame is on the wire. That holds whichever
//! send it is: the turn's flush, a send for room in the middle of a turn ([`CORK_LIMIT`]), or
//! the rest of a flush that filled the socket.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Instant;

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
    /// The socket has a [`WriteTap`]: its turns are marked.
    tapped: bool,
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
    /// Bytes written to the buffer and sent since the connection began: offsets in its byte
    /// stream.
    written: u64,
    sent_total: u64,
    /// Where the running turn's writes begin.
    turn_start: u64,
    /// Turns that wrote responses ([`wrote`]) whose first byte has not been sent: where their
    /// writes begin, and the latest cache change they noted. In order of offset.
    marks: VecDeque<(u64, u64)>,
    tap: Option<WriteTap>,
}

/// A socket whose writes wait for [`Cork::flush`], and the handle that sends them, which tells
/// `tap` when a response to a cache change is sent.
pub fn cork(socket: TcpStream, tap: Option<WriteTap>) -> (Corked, Cork) {
    let tapped = tap.is_some();
    let state = State {
        socket,
        buf: Vec::new(),
        sent: 0,
        error: None,
        written: 0,
        sent_total: 0,
        turn_start: 0,
        marks: VecDeque::new(),
        tap,
    };
    let state = Arc::new(Mutex::new(state));
    (Corked { state: state.clone() }, Cork { state, tapped })
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Marks what the running turn has noted ([`wrote`]) as written from the turn's start.
    fn mark(&mut self) {
        let seq = WROTE.take();
        if seq == 0 || self.tap.is_none() {
            return;
        }
        match self.marks.back_mut() {
            Some((start, latest)) if *start == self.turn_start => *latest = (*latest).max(seq),
            _ => self.marks.push_back((self.turn_start, seq)),
        }
    }

    /// Sends what is buffered, until all of it is sent or the socket is full (then `cx` is
    /// woken when it has room). Each send that carries the first byte of a marked turn's
    /// writes tells the tap when it began; so does a mark whose bytes were sent already.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.mark();
        while self.sent < self.buf.len() {
            // (The clock is read only while a mark waits: never in `serve`.)
            let began = (!self.marks.is_empty()).then(Instant::now);
            let n = match ready!(Pin::new(&mut self.socket).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(e)),
            };
            self.sent += n;
            self.sent_total += n as u64;
            if let Some(began) = began {
                self.tell(began);
            }
        }
        self.buf = Vec::new();
        self.sent = 0;
        if self.marks.front().is_some_and(|(start, _)| *start < self.sent_total) {
            // A mark made after a send for room had sent bytes past its start: its responses
            // were written after that, and go now or in the next turn.
            self.tell(Instant::now());
        }
        // (A mark whose turn wrote nothing yet waits: h2 writes its responses next turn.)
        Poll::Ready(Ok(()))
    }

    /// Tells the tap, at `began`, of every mark whose first byte is sent.
    fn tell(&mut self, began: Instant) {
        while let Some(&(start, seq)) = self.marks.front() {
            if start >= self.sent_total {
                break;
            }
            self.marks.pop_front();
            if let Some(tap) = &self.tap {
                tap(seq, began);
            }
        }
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

    fn append(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
    }
}

impl Cork {
    /// Starts the connection's turn: nothing noted yet ([`wrote`]); what the turn writes
    /// begins here.
    pub fn begin(&self) {
        WROTE.set(0);
        if self.tapped {
            let mut state = lock(&self.state);
            state.turn_start = state.written;
        }
    }

    /// Sends what the connection wrote this turn; if the socket is full, the rest goes when it
    /// has room (the task is woken then, and flushes again at the end of that turn). An error
    /// is kept for the connection's next write, which ends the connection. The tap hears of
    /// the latest cache change the turn's responses were built at when the first of the
    /// turn's bytes is sent (on loopback the peer may read it before that write returns).
    pub fn flush(&self, cx: &mut Context<'_>) {
        let mut state = lock(&self.state);
        if let Poll::Ready(Err(e)) = state.poll_send(cx) {
            state.error = Some(e);
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
        state.append(buf);
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
            state.append(b);
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

    /// The end of a connection's turn: what it wrote is sent (as far as the socket takes it).
    fn flushed(cork: &Cork) {
        cork.flush(&mut Context::from_waker(std::task::Waker::noop()));
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
        flushed(&cork);
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
    /// writes go out; a turn that noted none, or whose notes came before it began (another
    /// connection's, on the same thread), tells it nothing.
    #[tokio::test]
    async fn the_tap_hears_of_a_turns_latest_change_once_it_is_sent() {
        let (server, mut client) = pair().await;
        let heard: Arc<Mutex<Vec<u64>>> = Default::default();
        let h = heard.clone();
        let (mut corked, cork) = cork(server, Some(Arc::new(move |seq, _| h.lock().unwrap().push(seq))));
        cork.begin();
        corked.write_all(b"a").await.unwrap();
        wrote(3);
        wrote(5);
        wrote(4);
        assert!(heard.lock().unwrap().is_empty(), "nothing before the flush");
        flushed(&cork);
        assert_eq!(*heard.lock().unwrap(), [5]);

        cork.begin();
        corked.write_all(b"b").await.unwrap();
        flushed(&cork);
        assert_eq!(*heard.lock().unwrap(), [5], "a turn that wrote no response");

        wrote(11);
        cork.begin();
        corked.write_all(b"c").await.unwrap();
        flushed(&cork);
        assert_eq!(*heard.lock().unwrap(), [5], "a note from before the turn");

        let mut got = Vec::new();
        let mut buf = [0u8; 8];
        while got.len() < 3 {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"abc");
    }

    /// What a recording tap heard: cache change, and when.
    type Heard = Arc<Mutex<Vec<(u64, Instant)>>>;

    /// A tap that records what it hears, and when.
    fn recording() -> (WriteTap, Heard) {
        let heard: Heard = Default::default();
        let h = heard.clone();
        (Arc::new(move |seq, at| h.lock().unwrap().push((seq, at))), heard)
    }

    /// A turn whose flush fills the socket is heard of when its first bytes go, not when the
    /// last do: the peer may read a whole response from the part sent.
    #[tokio::test]
    async fn a_turn_is_heard_of_when_its_first_bytes_go_even_if_the_socket_fills() {
        let (server, mut client) = pair().await;
        let (tap, heard) = recording();
        let (mut corked, cork) = cork(server, Some(tap));
        cork.begin();
        // More than loopback's socket buffers hold: taken whole (the buffer was empty), then
        // sent in part.
        let big = vec![1u8; 64 << 20];
        let n = std::future::poll_fn(|cx| Pin::new(&mut corked).poll_write(cx, &big)).await.unwrap();
        assert_eq!(n, big.len());
        wrote(7);
        let before = Instant::now();
        flushed(&cork);
        assert!(cork.pending() > 0, "the socket filled");
        let got = heard.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "heard of once, before the rest is sent");
        assert_eq!(got[0].0, 7);
        assert!(got[0].1 >= before);
        drop(big);
        // The rest goes as the peer reads; the turn is not heard of again.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            while total < (64 << 20) {
                total += client.read(&mut buf).await.unwrap();
            }
        });
        while cork.pending() > 0 {
            cork.begin();
            flushed(&cork);
            tokio::task::yield_now().await;
        }
        reader.await.unwrap();
        assert_eq!(heard.lock().unwrap().len(), 1);
    }

    /// A response noted in a turn whose connection writes it only in the next turn is heard
    /// of when the next turn's bytes go; one noted before a send for room in the middle of a
    /// turn, at that send.
    #[tokio::test]
    async fn a_note_waits_for_bytes_written_after_it_and_a_send_for_room_tells_it() {
        let (server, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        let (tap, heard) = recording();
        let (mut corked, cork) = cork(server, Some(tap));
        cork.begin();
        wrote(9);
        flushed(&cork);
        assert!(heard.lock().unwrap().is_empty(), "nothing written since the note: not on the wire yet");
        cork.begin();
        corked.write_all(b"the response").await.unwrap();
        flushed(&cork);
        assert_eq!(heard.lock().unwrap().iter().map(|h| h.0).collect::<Vec<_>>(), [9]);

        cork.begin();
        let chunk = vec![7u8; CORK_LIMIT / 2 + 1];
        corked.write_all(&chunk).await.unwrap();
        wrote(12);
        corked.write_all(&chunk).await.unwrap();
        assert_eq!(
            heard.lock().unwrap().iter().map(|h| h.0).collect::<Vec<_>>(),
            [9, 12],
            "the send for room carried the turn's first bytes"
        );
        flushed(&cork);
        assert_eq!(heard.lock().unwrap().len(), 2, "the flush tells nothing more");
        corked.shutdown().await.unwrap();
        drop((corked, cork));
        assert_eq!(reader.await.unwrap(), 12 + 2 * chunk.len());
    }
}
