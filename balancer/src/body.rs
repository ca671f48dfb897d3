//! A user's request body on its way to the app, limited in size (`--max-body-bytes`) and
//! in how slowly it may arrive (`--min-body-rate`). What goes wrong with it is the user's
//! fault, recorded so that the answer is a 4xx and never blames the app.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::proxy::{names, text};

/// What went wrong with a request body on the user's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The body broke off or was malformed (a bad chunk): 400.
    Malformed,
    /// The body grew past `--max-body-bytes` without declaring its length: 413.
    TooLarge,
    /// The body arrived slower than `--min-body-rate`: 408.
    TooSlow,
}

impl ClientFault {
    /// The user's answer, counted as the user's error (node `none`, class 4xx).
    pub fn answer(self, remote: std::net::SocketAddr) -> hyper::Response<crate::proxy::Body> {
        metrics::counter!(names::REQUESTS, "node" => "none", "class" => "4xx").increment(1);
        debug!(%remote, fault = ?self, "refused a request body");
        match self {
            ClientFault::Malformed => text(
                StatusCode::BAD_REQUEST,
                "malformed or incomplete request body\n",
            ),
            ClientFault::TooLarge => {
                text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
            }
            ClientFault::TooSlow => {
                let mut response = text(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body arrived too slowly\n",
                );
                // The rest of the body is not waited for: the connection cannot go on.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
        }
    }
}

/// The limits on a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    /// Bytes per second on average, counted after `grace`; 0: no limit.
    pub min_rate: u64,
    pub grace: Duration,
}

/// A user's request body, failing (and recording the fault) past its limits.
pub struct ClientBody {
    inner: Incoming,
    limits: BodyLimits,
    read: u64,
    /// When the body first waited for the user (a body that never waits costs no clock
    /// read), and the timer armed then.
    started: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    fault: Arc<Mutex<Option<ClientFault>>>,
}

impl ClientBody {
    pub fn new(
        inner: Incoming,
        limits: BodyLimits,
        fault: Arc<Mutex<Option<ClientFault>>>,
    ) -> Self {
        ClientBody {
            inner,
            limits,
            read: 0,
            started: None,
            timer: None,
            fault,
        }
    }

    /// When the bytes read so far stop being enough.
    fn deadline(&mut self) -> Option<Instant> {
        if self.limits.min_rate == 0 {
            return None;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let earned = Duration::from_secs_f64(self.read as f64 / self.limits.min_rate as f64);
        Some(started + self.limits.grace + earned)
    }

    fn fail(
        &mut self,
        fault: ClientFault,
        reason: &'static str,
    ) -> Poll<Option<Result<Frame<Bytes>, <Self as Body>::Error>>> {
        *self.fault.lock() = Some(fault);
        Poll::Ready(Some(Err(reason.into())))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                    if self.read > self.limits.max_bytes {
                        return self.fail(ClientFault::TooLarge, "request body too large");
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                *self.fault.lock() = Some(ClientFault::Malformed);
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some(deadline) = self.deadline() else {
                    return Poll::Pending;
                };
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return self.fail(ClientFault::TooSlow, "request body arrived too slowly");
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
