//! The bearer tokens of the TCP listener: `[admin] token_file` (may do
//! everything) and `read_tokens_file` (may only read). Kept as SHA-256
//! digests and compared in constant time against every token, so neither
//! a token's content nor its length shows in the answer's timing. The
//! files are read again when they change (rotation without a restart); a
//! file that turned unusable keeps the tokens read before, and says why.

use cutover_config::admin::read_token_file;
use cutover_config::RemoteAdmin;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use subtle::{Choice, ConstantTimeEq};

/// How often the token files are looked at for changes.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What a request's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// A token of `token_file`.
    Full,
    /// A token of `read_tokens_file`: GET only.
    ReadOnly,
    /// No token of either file.
    Denied,
}

#[derive(Debug, Default)]
struct Digests {
    full: Vec<[u8; 32]>,
    read_only: Vec<[u8; 32]>,
}

/// The tokens in force, and where they come from.
#[derive(Debug)]
pub(crate) struct Tokens {
    files: Vec<(PathBuf, bool)>,
    current: RwLock<Arc<Digests>>,
    seen: RwLock<Vec<Stamp>>,
}

/// Size, modification time and inode: a file's content changed when these did.
type Stamp = Option<(u64, Option<SystemTime>, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.len(), meta.modified().ok(), meta.ino()))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Reads both files; an unusable one is an error naming it (never a token).
    pub(crate) fn load(remote: &RemoteAdmin) -> Result<Tokens, String> {
        let mut files = vec![(remote.token_file.clone(), true)];
        if let Some(read) = &remote.read_tokens_file {
            files.push((read.clone(), false));
        }
        let seen = files.iter().map(|(path, _)| stamp(path)).collect();
        let digests = read_all(&files)?;
        Ok(Tokens {
            files,
            current: RwLock::new(Arc::new(digests)),
            seen: RwLock::new(seen),
        })
    }

    /// What `presented` allows. Every known token is compared, in constant time.
    pub(crate) fn access(&self, presented: &str) -> Access {
        let presented = digest(presented);
        let digests = Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner));
        let matches = |known: &[[u8; 32]]| {
            known.iter().fold(Choice::from(0), |found, token| {
                found | token.ct_eq(&presented)
            })
        };
        let full = matches(&digests.full);
        let read_only = matches(&digests.read_only);
        if bool::from(full) {
            Access::Full
        } else if bool::from(read_only) {
            Access::ReadOnly
        } else {
            Access::Denied
        }
    }

    /// Reads the files again if they changed since the last look.
    fn reload_if_changed(&self) {
        let now: Vec<Stamp> = self.files.iter().map(|(path, _)| stamp(path)).collect();
        {
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match read_all(&self.files) {
            Ok(digests) => {
                let (full, read_only) = (digests.full.len(), digests.read_only.len());
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(digests);
                tracing::info!(full, read_only, "admin API tokens reloaded");
            }
            Err(problem) => {
                tracing::error!("{problem}; the admin API keeps the tokens it had");
            }
        }
    }

    /// Looks for changed files every few seconds until the task is aborted.
    pub(crate) fn watch(self: &Arc<Tokens>) -> tokio::task::JoinHandle<()> {
        let tokens = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tokens) = tokens.upgrade() else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || tokens.reload_if_changed()).await;
            }
        })
    }
}

fn read_all(files: &[(PathBuf, bool)]) -> Result<Digests, String> {
    let mut digests = Digests::default();
    for (path, full) in files {
        let tokens = read_token_file(path)?;
        let list = if *full {
            &mut digests.full
        } else {
            &mut digests.read_only
        };
        list.extend(tokens.iter().map(|token| digest(token)));
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn remote(token_file: PathBuf, read_tokens_file: Option<PathBuf>) -> RemoteAdmin {
        RemoteAdmin {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file,
            read_tokens_file,
            tls: None,
            hosts: Vec::new(),
            cors_origins: Vec::new(),
        }
    }

    #[test]
    fn each_token_of_the_files_is_known_with_its_access() {
        let dir = tempfile::tempdir().unwrap();
        let full = write(
            dir.path(),
            "tokens",
            "# rotation: old and new\nold-token-0123456789\n\nnew-token-0123456789\n",
            0o600,
        );
        let read = write(dir.path(), "read", "reader-token-0123456789\n", 0o400);
        let tokens = Tokens::load(&remote(full, Some(read))).unwrap();
        assert_eq!(tokens.access("old-token-0123456789"), Access::Full);
        assert_eq!(tokens.access("new-token-0123456789"), Access::Full);
        assert_eq!(tokens.access("reader-token-0123456789"), Access::ReadOnly);
        assert_eq!(tokens.access("new-token-012345678"), Access::Denied);
        assert_eq!(tokens.access(""), Access::Denied);
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let full = write(dir.path(), "tokens", "first-token-0123456789\n", 0o600);
        let tokens = Tokens::load(&remote(full.clone(), None)).unwrap();
        write(dir.path(), "tokens", "second-token-0123456789\n", 0o600);
        // Another inode or size: seen as changed whatever the clock says.
        tokens.reload_if_changed();
        assert_eq!(tokens.access("second-token-0123456789"), Access::Full);
        assert_eq!(tokens.access("first-token-0123456789"), Access::Denied);
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(dir.path(), "tokens", "third-token-0123456789-x\n", 0o644);
        tokens.reload_if_changed();
        assert_eq!(tokens.access("second-token-0123456789"), Access::Full);
        assert_eq!(tokens.access("third-token-0123456789-x"), Access::Denied);
    }

    #[test]
    fn a_token_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let full = write(dir.path(), "tokens", "some-token-0123456789\n", 0o644);
        let error = Tokens::load(&remote(full, None)).unwrap_err();
        assert!(error.contains("mode 0644"), "{error}");
        assert!(error.contains("chmod 600"), "{error}");
        assert!(!error.contains("some-token"), "{error}");
    }
}
