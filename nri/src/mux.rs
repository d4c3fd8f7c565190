//! NRI's connection multiplexer: several logical byte streams over the one unix socket.
//!
//! Every frame on the trunk is `conn id (u32 BE) | payload length (u32 BE) | payload`. NRI uses
//! id 1 for the plugin service (the runtime calls the plugin) and id 2 for the runtime service
//! (the plugin calls the runtime). Opening a connection sends nothing: both ends simply agree on
//! the ids. Each logical connection is handed to ttrpc as an in-memory duplex stream; two pump
//! tasks move bytes between those streams and the trunk.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, watch};

/// Connection id of the plugin service (served by the plugin, called by the runtime).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// Connection id of the runtime service (served by the runtime, called by the plugin).
pub const RUNTIME_SERVICE_CONN: u32 = 2;

/// Frame header length: connection id and payload length, both big-endian u32.
pub const HEADER_LEN: usize = 8;
/// Largest accepted payload: a ttrpc header (10 bytes) plus ttrpc's 4 MiB message limit, the same
/// bound NRI itself enforces. A larger length can only be garbage; the trunk is closed.
pub const MAX_PAYLOAD: usize = 10 + (4 << 20);
/// Capacity of each in-memory duplex stream and read chunk: one typical ttrpc message fits.
const PIPE_CAPACITY: usize = 64 * 1024;

/// Why a multiplexed trunk stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The peer closed the socket.
    #[error("the peer closed the NRI socket")]
    Closed,
    /// A frame announced a payload larger than [`MAX_PAYLOAD`].
    #[error("oversized frame on connection {conn}: {len} bytes (max {MAX_PAYLOAD})")]
    Oversized {
        /// Connection id of the bad frame.
        conn: u32,
        /// Announced payload length.
        len: usize,
    },
    /// Reading or writing the socket failed.
    #[error("NRI socket I/O: {0}")]
    Io(String),
}

/// A running multiplexer: the logical streams were handed out by [`Mux::new`]; this handle
/// reports when the trunk stops.
pub struct Mux {
    done: watch::Receiver<Option<MuxError>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Mux {
    /// Multiplexes `trunk`, opening the logical connections `ids`; returns the streams in the
    /// same order. Frames for other ids are dropped (NRI opens no others).
    pub fn new(trunk: UnixStream, ids: &[u32]) -> (Self, Vec<DuplexStream>) {
        let (rd, wr) = trunk.into_split();
        let wr = Arc::new(Mutex::new(wr));
        let (done_tx, done) = watch::channel(None);
        let done_tx = Arc::new(done_tx);
        let mut streams = Vec::with_capacity(ids.len());
        let mut inbound = HashMap::new();
        let mut tasks = Vec::new();
        for &id in ids {
            let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
            let (their_rd, their_wr) = tokio::io::split(ours);
            inbound.insert(id, their_wr);
            tasks.push(tokio::spawn(pump_out(
                id,
                their_rd,
                wr.clone(),
                done_tx.clone(),
            )));
            streams.push(theirs);
        }
        tasks.push(tokio::spawn(pump_in(rd, inbound, done_tx)));
        (Self { done, tasks }, streams)
    }

    /// Waits until the trunk stops and returns why.
    pub async fn closed(&mut self) -> MuxError {
        loop {
            if let Some(e) = self.done.borrow().clone() {
                return e;
            }
            if self.done.changed().await.is_err() {
                return MuxError::Closed;
            }
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Encodes one frame header.
pub fn encode_header(conn: u32, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&conn.to_be_bytes());
    h[4..].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Decodes one frame header into `(conn id, payload length)`.
pub fn decode_header(h: &[u8; HEADER_LEN]) -> (u32, usize) {
    let conn = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    (conn, len)
}

fn finish(done: &watch::Sender<Option<MuxError>>, e: MuxError) {
    done.send_if_modified(|cur| {
        if cur.is_none() {
            *cur = Some(e);
            true
        } else {
            false
        }
    });
}

/// Trunk -> logical streams.
async fn pump_in(
    mut rd: tokio::net::unix::OwnedReadHalf,
    mut conns: HashMap<u32, WriteHalf<DuplexStream>>,
    done: Arc<watch::Sender<Option<MuxError>>>,
) {
    let mut hdr = [0u8; HEADER_LEN];
    let mut buf = Vec::with_capacity(PIPE_CAPACITY);
    let err = loop {
        if let Err(e) = rd.read_exact(&mut hdr).await {
            break io_end(e);
        }
        let (conn, len) = decode_header(&hdr);
        if len > MAX_PAYLOAD {
            break MuxError::Oversized { conn, len };
        }
        buf.resize(len, 0);
        if let Err(e) = rd.read_exact(&mut buf).await {
            break io_end(e);
        }
        match conns.get_mut(&conn) {
            Some(w) => {
                if w.write_all(&buf).await.is_err() {
                    // The ttrpc side of this connection is gone; keep serving the others.
                    conns.remove(&conn);
                }
            }
            None => tracing::debug!(conn, len, "dropping frame for an unknown NRI connection"),
        }
    };
    tracing::debug!(%err, "NRI trunk reader stopped");
    finish(&done, err);
    // Dropping the write halves signals EOF to every ttrpc connection.
}

/// One logical stream -> trunk.
async fn pump_out(
    conn: u32,
    mut rd: ReadHalf<DuplexStream>,
    wr: Arc<Mutex<OwnedWriteHalf>>,
    done: Arc<watch::Sender<Option<MuxError>>>,
) {
    let mut frame = vec![0u8; HEADER_LEN + PIPE_CAPACITY];
    loop {
        let n = match rd.read(&mut frame[HEADER_LEN..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        frame[..HEADER_LEN].copy_from_slice(&encode_header(conn, n));
        let mut w = wr.lock().await;
        if let Err(e) = w.write_all(&frame[..HEADER_LEN + n]).await {
            finish(&done, io_end(e));
            return;
        }
    }
}

fn io_end(e: std::io::Error) -> MuxError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => MuxError::Closed,
        _ => MuxError::Io(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = encode_header(2, 0x0102_0304);
        assert_eq!(h, [0, 0, 0, 2, 1, 2, 3, 4]);
        assert_eq!(decode_header(&h), (2, 0x0102_0304));
    }

    #[tokio::test]
    async fn streams_are_separated_and_oversized_frames_close_the_trunk() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_ma, mut sa) = Mux::new(a, &[1, 2]);
        let (_mb, mut sb) = Mux::new(b, &[1, 2]);
        sa[0].write_all(b"to-one").await.unwrap();
        sa[1].write_all(b"to-two").await.unwrap();
        let mut got = [0u8; 6];
        sb[1].read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"to-two");
        sb[0].read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"to-one");

        // A raw oversized header from the peer stops the trunk with a clear reason.
        let (c, mut d) = UnixStream::pair().unwrap();
        let (mut mc, _sc) = Mux::new(c, &[1]);
        d.write_all(&encode_header(1, MAX_PAYLOAD + 1))
            .await
            .unwrap();
        assert!(matches!(
            mc.closed().await,
            MuxError::Oversized { conn: 1, .. }
        ));
    }
}
