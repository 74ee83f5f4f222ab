//! Object bytes on disk: spooled uploads, files removed unless kept, and pieces streamed back.

use super::*;

/// Removes its file when dropped unless disarmed, so failed or abandoned uploads (including a
/// request future dropped mid-body) leave nothing behind.
pub(super) struct FileGuard {
    pub(super) path: PathBuf,
    pub(super) armed: bool,
}

impl FileGuard {
    pub(super) fn new(path: PathBuf) -> Self {
        FileGuard { path, armed: true }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if self.armed {
            // A single unlink: cheap enough to do synchronously, and a drop cannot await.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A temporary file being filled, with the running size and MD5.
pub(super) struct Spool {
    pub(super) file: BufWriter<File>,
    pub(super) hasher: Md5,
    pub(super) size: u64,
    pub(super) guard: FileGuard,
}

/// A completely written temporary file.
pub(super) struct Spooled {
    pub(super) guard: FileGuard,
    pub(super) size: u64,
    pub(super) etag: String,
}

impl Spool {
    pub(super) async fn create(dir: &Path) -> Result<Self, SwiftError> {
        let path = dir.join(format!("{}.tmp", crate::secret::random_hex(16)));
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await?;
        Ok(Spool {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            hasher: Md5::new(),
            size: 0,
            guard: FileGuard::new(path),
        })
    }

    pub(super) async fn write(&mut self, data: &[u8], limit: u64) -> Result<(), SwiftError> {
        self.size = self.size.saturating_add(data.len() as u64);
        if self.size > limit {
            return Err(SwiftError::TooLarge);
        }
        self.hasher.update(data);
        self.file.write_all(data).await?;
        Ok(())
    }

    pub(super) async fn finish(mut self) -> Result<Spooled, SwiftError> {
        // tokio's File writes in the background; flushing waits until the bytes reached the OS,
        // so a rename and a later open see all of them.
        self.file.flush().await?;
        let Spool { file, hasher, size, guard } = self;
        drop(file);
        Ok(Spooled { guard, size, etag: hex::encode(hasher.finalize()) })
    }
}

pub(super) async fn remove_quietly(path: &Path) {
    if let Err(err) = tokio::fs::remove_file(path).await {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), cause = %err, "could not remove old object file");
        }
    }
}

// ---- streaming reads ------------------------------------------------------------------------

/// A byte range of one object file.
#[derive(Clone)]
pub(super) struct Piece {
    pub(super) path: PathBuf,
    pub(super) offset: u64,
    pub(super) len: u64,
}

/// An object as a GET sees it: a plain object is one piece, a DLO one piece per segment.
pub(super) struct ObjectView {
    pub(super) record: ObjectRecord,
    pub(super) etag: String,
    pub(super) size: u64,
    pub(super) last_modified: SystemTime,
    pub(super) pieces: Vec<Piece>,
    pub(super) dlo: bool,
}

/// The pieces covering `len` bytes from `start` of the concatenation of `pieces`.
pub(super) fn slice_pieces(pieces: &[Piece], start: u64, len: u64) -> VecDeque<Piece> {
    let end = start.saturating_add(len);
    let mut out = VecDeque::new();
    let mut pos = 0u64;
    for piece in pieces {
        let piece_start = pos;
        let piece_end = pos.saturating_add(piece.len);
        pos = piece_end;
        if piece.len == 0 || piece_end <= start {
            continue;
        }
        if piece_start >= end {
            break;
        }
        let from = start.max(piece_start);
        let to = end.min(piece_end);
        out.push_back(Piece { path: piece.path.clone(), offset: piece.offset + (from - piece_start), len: to - from });
    }
    out
}

pub(super) type PieceReader = ReaderStream<tokio::io::Take<File>>;

pub(super) struct PieceStream {
    pub(super) current: Option<PieceReader>,
    pub(super) pending: VecDeque<Piece>,
}

pub(super) async fn open_piece(piece: &Piece) -> io::Result<PieceReader> {
    let mut file = File::open(&piece.path).await?;
    if piece.offset > 0 {
        file.seek(io::SeekFrom::Start(piece.offset)).await?;
    }
    Ok(ReaderStream::with_capacity(file.take(piece.len), CHUNK_SIZE))
}

pub(super) async fn next_chunk(mut state: PieceStream) -> io::Result<Option<(Bytes, PieceStream)>> {
    loop {
        if let Some(current) = state.current.as_mut() {
            let item = current.next().await;
            match item {
                Some(Ok(bytes)) => return Ok(Some((bytes, state))),
                Some(Err(err)) => return Err(err),
                None => state.current = None,
            }
        }
        match state.pending.pop_front() {
            Some(piece) => state.current = Some(open_piece(&piece).await?),
            None => return Ok(None),
        }
    }
}

/// A body streaming `pieces` one after another, never holding more than a chunk in memory.
pub(super) async fn open_stream(mut pieces: VecDeque<Piece>) -> io::Result<Body> {
    // The first file is opened before any header goes out, so a file removed by a concurrent
    // overwrite becomes a retry instead of a response cut short.
    let current = match pieces.pop_front() {
        Some(piece) => Some(open_piece(&piece).await?),
        None => None,
    };
    let state = PieceStream { current, pending: pieces };
    let frames = futures_util::stream::try_unfold(state, next_chunk)
        .map(|item| item.map(Frame::data).map_err(|err| Box::new(err) as BoxError));
    // Qualified: StreamBody is both a Body and a Stream, and both extension traits have `boxed`.
    Ok(BodyExt::boxed(StreamBody::new(frames)))
}
