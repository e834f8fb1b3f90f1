//! Files the proxy re-reads when they change, without a reload: secret
//! values of injected headers, client key files, listener certificates.
//!
//! One thread looks at every registered item every two seconds. Looking is
//! a `stat` per file, and an item re-reads its file only when the file's
//! size, modification time or inode changed, which also catches the link
//! swaps Kubernetes does when it rotates a mounted Secret.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

/// How often registered files are looked at.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Something that re-reads its files when they changed.
pub trait Refresh: Send + Sync {
    /// Re-reads what changed since the last call; never blocks for long.
    fn refresh(&self);
}

/// What a file looked like: enough to notice it was replaced or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path` now (following links); default when it is gone.
    pub fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => FileStamp {
                len: m.len(),
                modified: m.modified().ok(),
                inode: m.ino(),
            },
            Err(_) => FileStamp::default(),
        }
    }
}

type Items = Mutex<Vec<Weak<dyn Refresh>>>;

/// Adds `item` to the files looked at; it is dropped from the list once
/// nothing else holds it.
pub fn register(item: &Arc<dyn Refresh>) {
    static ITEMS: OnceLock<Arc<Items>> = OnceLock::new();
    let items = ITEMS.get_or_init(|| {
        let items: Arc<Items> = Arc::default();
        let looked_at = items.clone();
        let spawned = std::thread::Builder::new()
            .name("switchyard-files".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(INTERVAL);
                    let live: Vec<Arc<dyn Refresh>> = {
                        let mut list = looked_at.lock().unwrap_or_else(|e| e.into_inner());
                        list.retain(|w| w.strong_count() > 0);
                        list.iter().filter_map(Weak::upgrade).collect()
                    };
                    for item in live {
                        item.refresh();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(
                "cannot start the file refresher; changed secrets apply on reload only: {e}"
            );
        }
        items
    });
    items
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(item));
}
