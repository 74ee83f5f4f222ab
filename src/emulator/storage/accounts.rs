//! Requests on accounts and containers: metadata, listings, creation and deletion.

use super::*;

/// What the request path names.
pub(super) enum Addressed {
    Account,
    Container(String),
    Object(String, String),
}

impl SwiftStore {
    /// data_dir exists and is writable; objects larger than max_file_size are refused with 413.
    pub fn new(data_dir: PathBuf, max_file_size: u64) -> Self {
        SwiftStore { data_dir, max_file_size, accounts: Mutex::new(BTreeMap::new()) }
    }

    /// Creates the account if missing, with containers `default` and `default_segments`.
    pub fn create_account(&self, account: &str) {
        let mut accounts = self.lock();
        if accounts.contains_key(account) {
            return;
        }
        let now = SystemTime::now();
        let containers = DEFAULT_CONTAINERS.iter().map(|name| ((*name).to_owned(), Container::new(now))).collect();
        accounts.insert(account.to_owned(), Account { containers, meta: BTreeMap::new(), created: now });
    }

    /// Bytes used by the account (sum of object sizes), 0 if unknown.
    pub fn bytes_used(&self, account: &str) -> u64 {
        self.lock().get(account).map(Account::bytes_used).unwrap_or(0)
    }

    /// The JSON document for GET /info.
    pub fn info_json(&self) -> String {
        // No `slo` key: clients such as swiftclient ≥ 4.3 switch to SLO uploads when it is
        // advertised, and the emulator only implements DLO.
        serde_json::json!({
            "swift": {
                "version": SWIFT_VERSION,
                "max_file_size": self.max_file_size,
                "max_object_name_length": MAX_OBJECT_NAME_LENGTH,
                "container_listing_limit": LISTING_LIMIT,
                "max_meta_value_length": MAX_META_VALUE_LENGTH
            },
            "tempauth": {}
        })
        .to_string()
    }

    /// Serves one authenticated storage request. `account` is e.g. "AUTH_0123...", already checked
    /// by the caller; `rest` is the RAW (still percent-encoded) path after `/v1/<account>`: "" or "/"
    /// for the account, "/<container>" or "/<container>/" for a container, "/<container>/<object...>"
    /// for an object (object names may contain '/', '//', trailing '/'); `query` the raw query string.
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        account: &str,
        rest: &str,
        query: Option<&str>,
    ) -> http::Response<crate::body::Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let (parts, payload) = req.into_parts();
        let mut resp = match self.route(&parts, payload, account, rest, query).await {
            Ok(resp) => resp,
            Err(err) => err.into_response(),
        };
        if matches!(resp.status(), StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
            *resp.body_mut() = body::empty();
        }
        if let Ok(value) = HeaderValue::from_str(&new_trans_id()) {
            resp.headers_mut().insert(HeaderName::from_static("x-trans-id"), value.clone());
            resp.headers_mut().insert(HeaderName::from_static("x-openstack-request-id"), value);
        }
        resp
    }

    pub(super) async fn route<B>(
        &self,
        parts: &Parts,
        payload: B,
        account: &str,
        rest: &str,
        query: Option<&str>,
    ) -> Result<Response<Body>, SwiftError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let target = parse_target(rest)?;
        let params = query.map(|q| body::form_pairs(q.as_bytes())).unwrap_or_default();
        self.create_account(account);
        match target {
            Addressed::Account => match parts.method.as_str() {
                "GET" | "HEAD" => self.get_account(parts, account, &params),
                "POST" => self.post_account(parts, account),
                _ => Err(SwiftError::MethodNotAllowed("GET, HEAD, POST")),
            },
            Addressed::Container(container) => match parts.method.as_str() {
                "GET" | "HEAD" => self.get_container(parts, account, &container, &params),
                "PUT" => self.put_container(parts, account, &container),
                "POST" => self.post_container(parts, account, &container),
                "DELETE" => self.delete_container(account, &container),
                _ => Err(SwiftError::MethodNotAllowed("DELETE, GET, HEAD, POST, PUT")),
            },
            Addressed::Object(container, object) => match parts.method.as_str() {
                "GET" | "HEAD" => self.get_object(parts, account, &container, &object, &params).await,
                "PUT" => self.put_object(parts, payload, account, &container, &object, &params).await,
                "POST" => self.post_object(parts, account, &container, &object),
                "DELETE" => self.delete_object(account, &container, &object).await,
                "COPY" => self.copy_method(parts, account, &container, &object, &params).await,
                _ => Err(SwiftError::MethodNotAllowed("COPY, DELETE, GET, HEAD, POST, PUT")),
            },
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Account>> {
        // Every update under the lock is a single insert, remove or field assignment, so a
        // panic elsewhere cannot leave the tree half-changed; poisoning carries no information.
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- accounts ---------------------------------------------------------------------------

    pub(super) fn get_account(
        &self,
        parts: &Parts,
        account: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, SwiftError> {
        let query = if parts.method == Method::HEAD { None } else { Some(ListQuery::parse(params, &parts.headers)?) };
        let (headers, rows) = {
            let accounts = self.lock();
            let acct = accounts.get(account).ok_or(SwiftError::NotFound)?;
            let rows: Vec<Row> = match &query {
                Some(q) => select(&acct.containers, q)
                    .into_iter()
                    .map(|pick| match pick {
                        Pick::Item(name, c) => Row::Container {
                            name: name.to_owned(),
                            count: c.objects.len(),
                            bytes: c.bytes_used(),
                            last_modified: c.created,
                        },
                        Pick::Subdir(dir) => Row::Subdir(dir),
                    })
                    .collect(),
                None => Vec::new(),
            };
            (account_headers(acct), rows)
        };
        Ok(match query {
            None => reply(StatusCode::NO_CONTENT, headers),
            Some(q) => render_listing(&rows, q.format, Owner::Account(account), headers),
        })
    }

    pub(super) fn post_account(&self, parts: &Parts, account: &str) -> Result<Response<Body>, SwiftError> {
        validate_meta(&parts.headers, ACCOUNT_META.set)?;
        {
            let mut accounts = self.lock();
            let acct = accounts.get_mut(account).ok_or(SwiftError::NotFound)?;
            apply_meta(&mut acct.meta, &parts.headers, &ACCOUNT_META);
        }
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    // ---- containers -------------------------------------------------------------------------

    pub(super) fn get_container(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
        params: &[(String, String)],
    ) -> Result<Response<Body>, SwiftError> {
        let query = if parts.method == Method::HEAD { None } else { Some(ListQuery::parse(params, &parts.headers)?) };
        let (headers, rows) = {
            let accounts = self.lock();
            let cont = accounts.get(account).and_then(|a| a.containers.get(container)).ok_or(SwiftError::NotFound)?;
            let rows: Vec<Row> = match &query {
                Some(q) => select(&cont.objects, q)
                    .into_iter()
                    .map(|pick| match pick {
                        Pick::Item(name, rec) => Row::Object {
                            name: name.to_owned(),
                            hash: rec.etag.clone(),
                            bytes: rec.size,
                            content_type: rec.content_type.clone(),
                            last_modified: rec.last_modified,
                        },
                        Pick::Subdir(dir) => Row::Subdir(dir),
                    })
                    .collect(),
                None => Vec::new(),
            };
            (container_headers(cont), rows)
        };
        Ok(match query {
            None => reply(StatusCode::NO_CONTENT, headers),
            Some(q) => render_listing(&rows, q.format, Owner::Container(container), headers),
        })
    }

    pub(super) fn put_container(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
    ) -> Result<Response<Body>, SwiftError> {
        validate_meta(&parts.headers, CONTAINER_META.set)?;
        let created = {
            let mut accounts = self.lock();
            let acct = accounts.get_mut(account).ok_or(SwiftError::NotFound)?;
            match acct.containers.get_mut(container) {
                Some(existing) => {
                    apply_meta(&mut existing.meta, &parts.headers, &CONTAINER_META);
                    false
                }
                None => {
                    let mut fresh = Container::new(SystemTime::now());
                    apply_meta(&mut fresh.meta, &parts.headers, &CONTAINER_META);
                    acct.containers.insert(container.to_owned(), fresh);
                    true
                }
            }
        };
        let status = if created { StatusCode::CREATED } else { StatusCode::ACCEPTED };
        Ok(reply(status, zero_length()))
    }

    pub(super) fn post_container(
        &self,
        parts: &Parts,
        account: &str,
        container: &str,
    ) -> Result<Response<Body>, SwiftError> {
        validate_meta(&parts.headers, CONTAINER_META.set)?;
        {
            let mut accounts = self.lock();
            let cont =
                accounts.get_mut(account).and_then(|a| a.containers.get_mut(container)).ok_or(SwiftError::NotFound)?;
            apply_meta(&mut cont.meta, &parts.headers, &CONTAINER_META);
        }
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    pub(super) fn delete_container(&self, account: &str, container: &str) -> Result<Response<Body>, SwiftError> {
        {
            let mut accounts = self.lock();
            let acct = accounts.get_mut(account).ok_or(SwiftError::NotFound)?;
            let cont = acct.containers.get(container).ok_or(SwiftError::NotFound)?;
            if !cont.objects.is_empty() {
                return Err(SwiftError::Conflict);
            }
            acct.containers.remove(container);
        }
        Ok(reply(StatusCode::NO_CONTENT, HeaderMap::new()))
    }

    // ---- objects: reads ---------------------------------------------------------------------
}
