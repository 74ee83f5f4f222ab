//! Uploads on the fast path: a body kept for a replay, or held behind `100 Continue` and
//! then spliced or copied; the upstream connection reached for them.

use super::*;

impl FastPath<'_> {
    /// An upload larger than the replay buffer: its head (in `out`) upstream, then, once
    /// upstream asks for it, its body from the client (spliced or copied), then the answer's
    /// head (see the module's description): the connection and the head's length in its buffer.
    pub(super) async fn upload<S: Connection>(
        &self,
        client: &mut S,
        taken: &Taken,
        len: u64,
        body_start: &[u8],
        out: &[u8],
    ) -> Result<(Raw, usize), Unreached> {
        let target = &taken.cached.target;
        // Before the body, every failure leaves the request whole for the proxy.
        let reach = self.reach(target, &PUT, out, Some(self.policy.timeout(Wait::Continue)));
        let mut up = match tokio::time::timeout(self.policy.timeout(Wait::AnswerHead), reach).await {
            Ok(Ok((up, None))) => up,
            Ok(Ok((mut up, Some(head)))) if head.code == 100 => {
                up.buf.advance(head.len);
                up
            }
            _ => return Err(Unreached::Decline),
        };
        // From here the client's body is being read: a failure cuts the connection.
        let (left, idle) = (len - body_start.len() as u64, self.policy.timeout(Wait::Idle));
        // A pipe only where it can serve: both sides plain and something left to move.
        let splicing = left > 0 && client.plain().is_some() && up.plain().is_some();
        let pipe = if splicing { Pipe::new() } else { None };
        let broke = if !matches!(tokio::time::timeout(idle, up.io.write_all(body_start)).await, Ok(Ok(()))) {
            Some((Broke::Sink, 0))
        } else if let (Some(pipe), Some(from), Some(to)) = (pipe, client.plain(), up.plain()) {
            let spliced = pipe.relay(from.socket(), to, left, idle, |n| from.got(n)).await;
            if spliced.is_ok() {
                self.count_spliced();
            }
            spliced.err()
        } else {
            // Also with nothing left: a TLS upstream may hold the body's start until flushed.
            copy_body(client, &mut up.io, left, idle).await.err()
        };
        match broke {
            None => {}
            Some((Broke::Source, _)) => {
                tracing::info!("a client broke off an upload's body");
                return Err(Unreached::Cut);
            }
            Some((Broke::Sink, taken)) => {
                tracing::warn!("upstream request failed: it stopped taking an upload's body");
                return Err(Unreached::Abandoned { unread: left - taken });
            }
        };
        // The answer's head, within the header timeout from the body's end, as in
        // the hyper engine's; a `100` that came after the expect timeout is passed over.
        let answer = async {
            loop {
                match answer_head(&mut up).await {
                    AnswerHead::Whole(head) if head.code < 200 => up.buf.advance(head.len),
                    AnswerHead::Whole(head) => return Some(head.len),
                    _ => return None,
                }
            }
        };
        match tokio::time::timeout(self.policy.timeout(Wait::AnswerHead), answer).await {
            Ok(Some(head)) => Ok((up, head)),
            Ok(None) => {
                tracing::warn!("upstream request failed: no answer to an upload's body");
                Err(Unreached::Failed(Failure::Broken))
            }
            Err(_) => Err(Unreached::Failed(Failure::Timeout)),
        }
    }

    /// An upload of `len` bytes the proxy would keep for a replay: its head (in `out`) and its
    /// body go upstream as they come, the body read into the client's buffer `buf` behind the
    /// head and kept there; then the answer's head (see [`Upload::kept`]): the connection and
    /// the head's length in its buffer. Any failure before that head declines, with the whole
    /// request in `buf` or still on the client's socket.
    pub(super) async fn upload_kept<S: Connection>(
        &self,
        client: &mut S,
        buf: &mut BytesMut,
        taken: &Taken,
        len: u64,
        out: &[u8],
    ) -> Result<(Raw, usize), Unreached> {
        let target = &taken.cached.target;
        // At most the replay buffer, which the configuration keeps far below `usize::MAX`.
        let end = taken.head_len + usize::try_from(len).map_err(|_| Unreached::Decline)?;
        // Any failure before the answer's head declines (see above).
        let (mut up, _) = self.raw_connection(target).await.map_err(|_| Unreached::Decline)?;
        let idle = self.policy.timeout(Wait::Idle);
        let mut sent = buf.len().min(end);
        let first = write_two(&mut up.io, out, &buf[taken.head_len..sent]);
        if !matches!(tokio::time::timeout(idle, first).await, Ok(Ok(()))) {
            return Err(Unreached::Decline);
        }
        while sent < end {
            if buf.capacity() - buf.len() < CLIENT_READ {
                buf.reserve((end - buf.len()).clamp(CLIENT_READ, crate::body::MAX_READ));
            }
            match tokio::time::timeout(idle, client.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    tracing::info!("a client broke off an upload's body");
                    return Err(Unreached::Cut);
                }
            }
            let to = buf.len().min(end);
            if !matches!(tokio::time::timeout(idle, up.io.write_all(&buf[sent..to])).await, Ok(Ok(()))) {
                return Err(Unreached::Decline);
            }
            sent = to;
        }
        if !matches!(tokio::time::timeout(idle, up.io.flush()).await, Ok(Ok(()))) {
            return Err(Unreached::Decline);
        }
        match tokio::time::timeout(self.policy.timeout(Wait::AnswerHead), answer_head(&mut up)).await {
            Ok(AnswerHead::Whole(head)) => Ok((up, head.len)),
            _ => Err(Unreached::Decline),
        }
    }

    /// A parked connection to `target`'s origin, or a new one, its buffer empty; and whether
    /// it was parked.
    pub(super) async fn raw_connection(&self, target: &crate::target::Target) -> Result<(Raw, bool), Unreached> {
        let (mut up, reused) = match self.pools.take_raw(&target.origin) {
            Some(raw) => (raw, true),
            // Boxed, as every path a request seldom takes.
            None => match Box::pin(self.pools.connect_raw(&target.connect_to)).await {
                Ok(raw) => (raw, false),
                Err(e) => {
                    tracing::warn!(cause = %e, "upstream request failed");
                    return Err(Unreached::Failed(Failure::Unreachable));
                }
            },
        };
        up.buf.clear();
        Ok((up, reused))
    }

    /// Sends the head in `out` to `target` on a parked connection or a new one, and reads the
    /// answer's head: the connection and the head's length in its buffer, or, with `expect`,
    /// `None` if no head came within that time. A parked connection that upstream closed
    /// meanwhile (it ends before a byte of answer) is dropped and the request, of `method`,
    /// goes again on another as the policy allows ([`Policy::resends`]), else to the proxy.
    pub(super) async fn reach(
        &self,
        target: &crate::target::Target,
        method: &http::Method,
        out: &[u8],
        expect: Option<std::time::Duration>,
    ) -> Result<(Raw, Option<Head>), Unreached> {
        let mut resent = 0;
        loop {
            let (mut up, reused) = self.raw_connection(target).await?;
            let sent = match up.io.write_all(out).await {
                Ok(()) => up.io.flush().await,
                Err(e) => Err(e),
            };
            let head = match (sent, expect) {
                (Ok(()), None) => answer_head(&mut up).await,
                (Ok(()), Some(wait)) => match tokio::time::timeout(wait, answer_head(&mut up)).await {
                    Ok(head) => head,
                    Err(_) => return Ok((up, None)),
                },
                (Err(_), _) => AnswerHead::Nothing,
            };
            match head {
                AnswerHead::Whole(head) => return Ok((up, Some(head))),
                AnswerHead::Nothing if reused && self.policy.resends(method, false, resent) => {
                    tracing::debug!("a parked upstream connection was dead");
                    resent += 1;
                }
                AnswerHead::Nothing if reused => return Err(Unreached::Decline),
                AnswerHead::Nothing => {
                    tracing::warn!("upstream request failed: the connection ended without an answer");
                    return Err(Unreached::Failed(Failure::Broken));
                }
                AnswerHead::Other => return Err(Unreached::Decline),
            }
        }
    }
}

/// Copies the `left` bytes of an upload's body from the client to `to` through a buffer:
/// upstream (a TLS client or upstream, or no pipe to be had), or a sink for a body upstream
/// stopped taking. It reads no further than the body's end: what follows belongs to the next
/// request. A wait on either side longer than `idle` breaks
/// the copy, which then tells how many bytes it had taken from the client.
pub(super) async fn copy_body<S: Connection, W: AsyncWrite + Unpin>(
    client: &mut S,
    to: &mut W,
    left: u64,
    idle: std::time::Duration,
) -> Result<(), (Broke, u64)> {
    let mut chunk = vec![0u8; usize::try_from(left).unwrap_or(usize::MAX).min(COPY_CHUNK)];
    let mut taken = 0u64;
    while taken < left {
        let room = usize::try_from(left - taken).unwrap_or(usize::MAX).min(chunk.len());
        let n = match tokio::time::timeout(idle, client.read(&mut chunk[..room])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err((Broke::Source, taken)),
        };
        taken += n as u64;
        if !matches!(tokio::time::timeout(idle, to.write_all(&chunk[..n])).await, Ok(Ok(()))) {
            return Err((Broke::Sink, taken));
        }
    }
    // A TLS upstream may hold the tail until flushed.
    match tokio::time::timeout(idle, to.flush()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err((Broke::Sink, taken)),
    }
}
