//! A user's connection as the HTTP server reads it: first the bytes already read past a
//! PROXY protocol header, then the socket's; and optionally a deadline on its first bytes,
//! so that a user who connects and sends nothing (or a protocol preface that never
//! completes) is cut off instead of holding a connection slot.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, read after `rest`; with a deadline, reads fail with `TimedOut` when nothing
/// arrived within `wait` of the first read, and once bytes arrive it is `inner` unchanged.
pub struct UserStream<S> {
    inner: S,
    rest: Vec<u8>,
    at: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> UserStream<S> {
    /// `inner`, read after `rest` (bytes read past a PROXY header); its first bytes must
    /// come within `wait`, if given.
    pub fn new(inner: S, rest: Vec<u8>, wait: Option<Duration>) -> Self {
        UserStream {
            inner,
            rest,
            at: 0,
            deadline: wait.map(|wait| Box::pin(tokio::time::sleep(wait))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for UserStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.rest.len() {
            let n = buf.remaining().min(self.rest.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.rest[at..at + n]);
            self.at += n;
            if self.at == self.rest.len() {
                self.rest = Vec::new();
                self.at = 0;
            }
            self.deadline = None;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.deadline = None,
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing in time",
                )));
            }
            _ => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for UserStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn silence_times_out_and_bytes_lift_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut silent = UserStream::new(server, Vec::new(), Some(Duration::from_millis(50)));
        let mut buf = [0u8; 8];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = UserStream::new(server, Vec::new(), Some(Duration::from_millis(50)));
        client.write_all(b"GET").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 3);
        // Past the deadline, a quiet moment is no longer an error.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b" /").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn the_rest_comes_first() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut stream = UserStream::new(server, b"GET ".to_vec(), None);
        client.write_all(b"/ HTTP/1.1").await.unwrap();
        drop(client);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1");
    }
}
