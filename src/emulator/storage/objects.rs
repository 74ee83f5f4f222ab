//! Requests on objects: reads (ranges, DLO manifests), writes spooled to disk, copies,
//! metadata and deletion.

use super::*;

impl SwiftStore {
    pub(super) async fn get_object(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        object: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, SwiftError> {
        let head = parts.method == Method::HEAD;
        let manifest_get = body::form_get(params, "multipart-manifest") == Some("get");
        let mut attempt = 1;
        loop {
            let view = self.view_object(account, container, object, manifest_get)?;
            let mut headers = object_headers(&view);
            let last_modified = unix_seconds_ceil(view.last_modified);
            if let Precondition::NotModified = evaluate_conditions(&parts.headers, &view.etag, last_modified)? {
                return Ok(reply(StatusCode::NOT_MODIFIED, headers));
            }
            if head {
                // HEAD carries the real length with no body (swift-protocol.md §3.13).
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(view.size));
                return Ok(reply(StatusCode::OK, headers));
            }
            let (status, start, len) = match parse_range(&parts.headers, view.size)? {
                ByteRange::Whole => (StatusCode::OK, 0, view.size),
                ByteRange::Span(first, last) => {
                    if let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", view.size)) {
                        headers.insert(header::CONTENT_RANGE, value);
                    }
                    (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
                }
            };
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            match open_stream(slice_pieces(&view.pieces, start, len)).await {
                Ok(stream) => {
                    let mut resp = Response::new(stream);
                    *resp.status_mut() = status;
                    *resp.headers_mut() = headers;
                    return Ok(resp);
                }
                // A concurrent PUT replaced the object and unlinked the file we were given:
                // look again rather than fail a read of an object that exists.
                Err(err) if err.kind() == io::ErrorKind::NotFound && attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Snapshots an object (and, for a DLO, its segment list) under the lock.
    pub(super) fn view_object(
        &self,
        account: &str,
        container: &str,
        object: &str,
        manifest_get: bool,
    ) -> Result<ObjectView, SwiftError> {
        let accounts = self.lock();
        let acct = accounts.get(account).ok_or(SwiftError::NotFound)?;
        let record = acct.containers.get(container).and_then(|c| c.objects.get(object)).ok_or(SwiftError::NotFound)?;
        let manifest = if manifest_get { None } else { record.manifest.as_ref() };
        let Some(manifest) = manifest else {
            return Ok(ObjectView {
                record: record.clone(),
                etag: record.etag.clone(),
                size: record.size,
                last_modified: record.last_modified,
                pieces: vec![Piece { path: record.file.clone(), offset: 0, len: record.size }],
                dlo: false,
            });
        };
        let segments = dlo_segments(acct, manifest);
        let mut hasher = Md5::new();
        let mut size = 0u64;
        let mut last_modified = record.last_modified;
        let mut pieces = Vec::with_capacity(segments.len());
        for segment in segments {
            hasher.update(segment.etag.as_bytes());
            size = size.saturating_add(segment.size);
            last_modified = last_modified.max(segment.last_modified);
            pieces.push(Piece { path: segment.file.clone(), offset: 0, len: segment.size });
        }
        Ok(ObjectView {
            record: record.clone(),
            // Swift quotes large-object ETags (swift-protocol.md §3.4); clients rely on the
            // quotes to tell them apart from a plain MD5.
            etag: format!("\"{}\"", hex::encode(hasher.finalize())),
            size,
            last_modified,
            pieces,
            dlo: true,
        })
    }

    // ---- objects: writes --------------------------------------------------------------------

    pub(super) async fn put_object<B>(
        &self,
        parts: &Parts,
        payload: B,
        account: &str,
        container: &str,
        object: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, SwiftError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let headers = &parts.headers;
        if body::form_get(params, "multipart-manifest") == Some("put") {
            return Err(SwiftError::BadRequest("SLO not supported by the emulator"));
        }
        // Everything that can reject the request is decided before the body is polled, so a
        // client using `Expect: 100-continue` never uploads into a refusal.
        let exists = self.object_exists(account, container, object)?;
        if let Some(value) = headers.get(header::IF_NONE_MATCH) {
            if value.as_bytes().trim_ascii() != b"*" {
                return Err(SwiftError::BadRequest("If-None-Match only supports *"));
            }
            if exists {
                return Err(SwiftError::PreconditionFailed(PRECONDITION_TEXT));
            }
        }
        validate_meta(headers, OBJECT_META)?;
        validate_manifest(headers)?;
        let declared = declared_length(headers)?;
        if let Some(source) = headers.get("x-copy-from") {
            let (src_container, src_object) =
                parse_copy_path(source, "X-Copy-From header must be of the form <container name>/<object name>")?;
            check_same_account(headers, "x-copy-from-account", account)?;
            if declared.unwrap_or(0) > 0 {
                return Err(SwiftError::BadRequest("Copy requests require a zero byte body"));
            }
            return self
                .copy_object(
                    headers,
                    account,
                    (src_container.as_str(), src_object.as_str()),
                    (container, object),
                    params,
                )
                .await;
        }
        let chunked = is_chunked(headers);
        if declared.is_none() && !chunked {
            return Err(SwiftError::LengthRequired);
        }
        if declared.is_some_and(|len| len > self.max_file_size) {
            return Err(SwiftError::TooLarge);
        }

        let mut spool = Spool::create(&self.data_dir).await?;
        let mut payload = payload;
        loop {
            // Matched in its own statement so the body's error value is never kept across the
            // write's `.await` below.
            let frame = match payload.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    let err: BoxError = err.into();
                    tracing::debug!(cause = %err, "object upload aborted by the client");
                    return Err(SwiftError::ClientDisconnect);
                }
            };
            // Trailers carry nothing Swift stores.
            if let Ok(data) = frame.into_data() {
                spool.write(&data, self.max_file_size).await?;
            }
        }
        if let (Some(len), false) = (declared, chunked) {
            if spool.size < len {
                return Err(SwiftError::ClientDisconnect);
            }
            if spool.size > len {
                return Err(SwiftError::BadRequest("Request body longer than Content-Length"));
            }
        }
        let spooled = spool.finish().await?;
        if let Some(expected) = headers.get(header::ETAG) {
            let expected = String::from_utf8_lossy(expected.as_bytes());
            if !expected.trim().trim_matches('"').eq_ignore_ascii_case(&spooled.etag) {
                return Err(SwiftError::EtagMismatch);
            }
        }
        let staged = self.promote(spooled.guard).await?;
        let record = ObjectRecord {
            file: staged.path.clone(),
            size: spooled.size,
            etag: spooled.etag,
            content_type: content_type_of(headers).unwrap_or_else(|| "application/octet-stream".to_owned()),
            last_modified: SystemTime::now(),
            user_meta: object_meta_from(headers),
            content_encoding: headers.get(header::CONTENT_ENCODING).cloned(),
            content_disposition: headers.get(header::CONTENT_DISPOSITION).cloned(),
            manifest: headers.get(X_OBJECT_MANIFEST).cloned(),
        };
        let mut out = zero_length();
        put_str(&mut out, header::ETAG, &record.etag);
        put_str(&mut out, header::LAST_MODIFIED, &http_date(record.last_modified));
        self.commit(account, container, object, staged, record).await?;
        Ok(reply(StatusCode::CREATED, out))
    }

    /// `COPY` with `Destination`: the mirror image of a PUT with `X-Copy-From`.
    pub(super) async fn copy_method(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        object: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, SwiftError> {
        let headers = &parts.headers;
        let destination =
            headers.get("destination").ok_or(SwiftError::PreconditionFailed("Destination header required"))?;
        let (dst_container, dst_object) =
            parse_copy_path(destination, "Destination header must be of the form <container name>/<object name>")?;
        check_same_account(headers, "destination-account", account)?;
        validate_meta(headers, OBJECT_META)?;
        validate_manifest(headers)?;
        self.copy_object(headers, account, (container, object), (dst_container.as_str(), dst_object.as_str()), params)
            .await
    }

    pub(super) async fn copy_object(
        &self,
        headers: &HeaderMap,
        account: &str,
        (src_container, src_object): (&str, &str),
        (dst_container, dst_object): (&str, &str),
        params: &[(String, String)],
    ) -> Result<Response<Body>, SwiftError> {
        let manifest_get = body::form_get(params, "multipart-manifest") == Some("get");
        let mut attempt = 1;
        let (view, staged, size, etag) = loop {
            let view = self.view_object(account, src_container, src_object, manifest_get)?;
            self.object_exists(account, dst_container, dst_object)?;
            let copied = if view.dlo {
                // Swift copies a DLO as the concatenation of its segments, a plain object.
                match self.spool_pieces(&view.pieces).await {
                    Ok(spooled) => match self.promote(spooled.guard).await {
                        Ok(staged) => Ok((staged, spooled.size, spooled.etag)),
                        Err(err) => Err(err),
                    },
                    Err(err) => Err(err),
                }
            } else {
                self.link_copy(&view.record.file)
                    .await
                    .map(|staged| (staged, view.record.size, view.record.etag.clone()))
            };
            match copied {
                Ok((staged, size, etag)) => break (view, staged, size, etag),
                // The source was overwritten between the snapshot and the link: take a new one.
                Err(SwiftError::Io(err)) if err.kind() == io::ErrorKind::NotFound && attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        };
        let source = &view.record;
        let mut user_meta =
            if header_is_true(headers.get("x-fresh-metadata")) { BTreeMap::new() } else { source.user_meta.clone() };
        user_meta.extend(object_meta_from(headers));
        let record = ObjectRecord {
            file: staged.path.clone(),
            size,
            etag,
            content_type: content_type_of(headers).unwrap_or_else(|| source.content_type.clone()),
            last_modified: SystemTime::now(),
            user_meta,
            content_encoding: headers
                .get(header::CONTENT_ENCODING)
                .cloned()
                .or_else(|| source.content_encoding.clone()),
            content_disposition: headers
                .get(header::CONTENT_DISPOSITION)
                .cloned()
                .or_else(|| source.content_disposition.clone()),
            manifest: if view.dlo {
                None
            } else {
                headers.get(X_OBJECT_MANIFEST).cloned().or_else(|| source.manifest.clone())
            },
        };
        let mut out = zero_length();
        put_str(&mut out, header::ETAG, &record.etag);
        put_str(&mut out, header::LAST_MODIFIED, &http_date(record.last_modified));
        let copied_from = format!(
            "{}/{}",
            utf8_percent_encode(src_container, COPIED_FROM_SET),
            utf8_percent_encode(src_object, COPIED_FROM_SET)
        );
        put_str(&mut out, HeaderName::from_static("x-copied-from"), &copied_from);
        put_str(&mut out, HeaderName::from_static("x-copied-from-account"), account);
        put_str(&mut out, HeaderName::from_static("x-copied-from-last-modified"), &http_date(view.last_modified));
        self.commit(account, dst_container, dst_object, staged, record).await?;
        Ok(reply(StatusCode::CREATED, out))
    }

    pub(super) fn post_object(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        object: &str,
    ) -> Result<Response<Body>, SwiftError> {
        let headers = &parts.headers;
        validate_meta(headers, OBJECT_META)?;
        validate_manifest(headers)?;
        {
            let mut accounts = self.lock();
            let record = accounts
                .get_mut(account)
                .and_then(|a| a.containers.get_mut(container))
                .and_then(|c| c.objects.get_mut(object))
                .ok_or(SwiftError::NotFound)?;
            // Swift's fast-POST replaces the whole user metadata set and the "allowed headers"
            // (Content-Encoding, Content-Disposition, X-Object-Manifest); what is not resent is
            // dropped. Content-Type only changes when sent.
            record.user_meta = object_meta_from(headers);
            if let Some(content_type) = content_type_of(headers) {
                record.content_type = content_type;
            }
            record.content_encoding = headers.get(header::CONTENT_ENCODING).cloned();
            record.content_disposition = headers.get(header::CONTENT_DISPOSITION).cloned();
            record.manifest = headers.get(X_OBJECT_MANIFEST).cloned();
        }
        Ok(body::html(
            StatusCode::ACCEPTED,
            "<html><h1>Accepted</h1><p>The request is accepted for processing.</p></html>",
        ))
    }

    pub(super) async fn delete_object(
        &self,
        account: &str,
        container: &str,
        object: &str,
    ) -> Result<Response<Body>, SwiftError> {
        let removed = {
            let mut accounts = self.lock();
            accounts
                .get_mut(account)
                .and_then(|a| a.containers.get_mut(container))
                .and_then(|c| c.objects.remove(object))
                .ok_or(SwiftError::NotFound)?
        };
        remove_quietly(&removed.file).await;
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    /// Whether the object exists; `NotFound` when its container does not.
    pub(super) fn object_exists(&self, account: &str, container: &str, object: &str) -> Result<bool, SwiftError> {
        let accounts = self.lock();
        let cont = accounts.get(account).and_then(|a| a.containers.get(container)).ok_or(SwiftError::NotFound)?;
        Ok(cont.objects.contains_key(object))
    }

    pub(super) fn new_object_path(&self) -> PathBuf {
        self.data_dir.join(format!("{}.obj", crate::secret::random_hex(16)))
    }

    /// Gives a finished upload its final name; the `.tmp` name marks files that never completed.
    pub(super) async fn promote(&self, spooled: FileGuard) -> Result<FileGuard, SwiftError> {
        let target = self.new_object_path();
        tokio::fs::rename(&spooled.path, &target).await?;
        spooled.disarm();
        Ok(FileGuard::new(target))
    }

    /// Copies a stored object file into a new version file.
    pub(super) async fn link_copy(&self, source: &Path) -> Result<FileGuard, SwiftError> {
        let target = self.new_object_path();
        // Version files are never modified after they are written, so a hard link is an
        // instant, safe copy; fall back to copying bytes where links are impossible.
        match tokio::fs::hard_link(source, &target).await {
            Ok(()) => Ok(FileGuard::new(target)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(err.into()),
            Err(_) => {
                let guard = FileGuard::new(target);
                tokio::fs::copy(source, &guard.path).await?;
                Ok(guard)
            }
        }
    }

    /// Concatenates stored pieces into a new temporary file, hashing as it goes.
    pub(super) async fn spool_pieces(&self, pieces: &[Piece]) -> Result<Spooled, SwiftError> {
        let mut spool = Spool::create(&self.data_dir).await?;
        let mut buf = vec![0u8; CHUNK_SIZE];
        for piece in pieces {
            let mut file = File::open(&piece.path).await?;
            if piece.offset > 0 {
                file.seek(io::SeekFrom::Start(piece.offset)).await?;
            }
            let mut reader = file.take(piece.len);
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                spool.write(&buf[..n], self.max_file_size).await?;
            }
        }
        spool.finish().await
    }

    /// Makes `record` the current version of the object and unlinks the version it replaces.
    pub(super) async fn commit(
        &self,
        account: &str,
        container: &str,
        object: &str,
        staged: FileGuard,
        record: ObjectRecord,
    ) -> Result<(), SwiftError> {
        let previous = {
            let mut accounts = self.lock();
            // The container may have been deleted while the body was uploading; `staged` then
            // removes the orphaned file when it drops.
            let cont =
                accounts.get_mut(account).and_then(|a| a.containers.get_mut(container)).ok_or(SwiftError::NotFound)?;
            cont.objects.insert(object.to_owned(), record)
        };
        staged.disarm();
        // Readers that already opened the old file keep reading it; later ones find the new one.
        if let Some(previous) = previous {
            remove_quietly(&previous.file).await;
        }
        Ok(())
    }
}
