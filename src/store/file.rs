//! The file store: one JSON file per account under `<state_dir>/accounts/`, mode 0600, written
//! by temp file + fsync + rename + directory fsync so a crash never loses the previous grant.
//!
//! Not a database: one gateway instance owns a state directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Grant, GrantStore, StoreError};

/// Grants stored as files in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store under `state_dir/accounts`, created (mode 0700) when missing.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("accounts");
        std::fs::create_dir_all(&dir).map_err(|source| io_err(&dir, source))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|source| io_err(&dir, source))?;
        }
        sweep_leftovers(&dir, LEFTOVER_AGE);
        Ok(FileStore { dir })
    }

    /// The file that holds `account`'s grant. Account names are validated by the config
    /// (`[A-Za-z0-9._-]`, not starting with '.'), so they are safe as file names.
    pub fn path_of(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.json"))
    }

    /// The accounts with a grant file here, sorted.
    pub fn accounts(&self) -> Result<Vec<String>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| io_err(&self.dir, source))?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes `account`'s grant file, if there is one.
    pub fn remove(&self, account: &str) -> Result<(), StoreError> {
        let path = self.path_of(account);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path, e)),
            _ => Ok(()),
        }
    }

    pub(super) fn load_sync(path: &Path) -> Result<Option<Grant>, StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_err(path, source)),
        };
        let grant =
            super::decode(&bytes).map_err(|reason| StoreError::Corrupt { path: path.display().to_string(), reason })?;
        Ok(Some(grant))
    }

    fn save_sync(dir: &Path, path: &Path, grant: &Grant) -> Result<(), StoreError> {
        let bytes = super::encode(grant);
        let tmp = dir.join(format!(".{}.tmp", crate::secret::random_hex(8)));
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            file.write_all(&bytes)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, path)?;
            // The rename is durable only once the directory entry is on disk.
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(source) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(path, source));
        }
        Ok(())
    }
}

/// How old a temp file must be before `open` takes it for a crash's leftover: a save takes
/// milliseconds, and another process (`swiftgate register`) may be in the middle of one.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temp files (`.<hex>.tmp`) a crash between create and rename left in `dir`, older
/// than `age`: each holds a refresh token. Best effort; what cannot be removed stays.
fn sweep_leftovers(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
        if old && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a temp file an interrupted save left");
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { path: path.display().to_string(), source }
}

#[async_trait::async_trait]
impl GrantStore for FileStore {
    async fn load(&self, account: &str) -> Result<Option<Grant>, StoreError> {
        let path = self.path_of(account);
        run_blocking(move || Self::load_sync(&path)).await
    }

    async fn save(&self, account: &str, grant: &Grant) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        let path = self.path_of(account);
        let grant = grant.clone();
        run_blocking(move || Self::save_sync(&dir, &path, &grant)).await
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|join| {
        Err(StoreError::Io { path: "<state store>".into(), source: std::io::Error::other(join.to_string()) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn grant(token: &str) -> Grant {
        Grant { refresh_token: Secret::new(token), scope: "credentials.r".into(), registered_at: 7 }
    }

    #[tokio::test]
    async fn round_trips_and_overwrites_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load("alice").await.unwrap(), None);
        store.save("alice", &grant("one")).await.unwrap();
        store.save("alice", &grant("two")).await.unwrap();
        assert_eq!(store.load("alice").await.unwrap(), Some(grant("two")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path_of("alice")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("accounts")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn open_removes_temp_files_an_interrupted_save_left() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = dir.path().join("accounts");
        std::fs::create_dir_all(&accounts).unwrap();
        let (old, fresh, other) = (accounts.join(".0123.tmp"), accounts.join(".4567.tmp"), accounts.join("a.json"));
        for path in [&old, &fresh, &other] {
            std::fs::write(path, "x").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(hour_ago).unwrap();
        std::fs::File::options().write(true).open(&other).unwrap().set_modified(hour_ago).unwrap();
        FileStore::open(dir.path()).unwrap();
        assert!(!old.exists(), "an hour-old leftover goes");
        assert!(fresh.exists(), "a save in progress elsewhere is left alone");
        assert!(other.exists(), "grants stay");
    }

    #[tokio::test]
    async fn corrupt_and_truncated_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.save("bob", &grant("secret-token-value")).await.unwrap();
        let path = store.path_of("bob");
        let full = std::fs::read(&path).unwrap();
        for bad in [&full[..full.len() / 2], b"", b"{\"version\":9}", b"\xff\xfe"] {
            std::fs::write(&path, bad).unwrap();
            let err = store.load("bob").await.unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{msg}");
            assert!(msg.contains("bob.json"), "{msg}");
            assert!(!msg.contains("secret-token-value"), "secret leaked: {msg}");
        }
    }
}
