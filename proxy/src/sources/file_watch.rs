//! Watching a directory: inotify read on the control plane's own runtime,
//! plus a slow poll. The kernel wakes the control thread directly; a
//! watcher thread (the `notify` crate's) was a second wake-up on the way,
//! and on a busy core that thread's wait for the CPU was most of the
//! slowest endpoint changes (8-11 ms of 9-14, `bench/run --scale`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchMask};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::file::SourceError;
use super::file_changes::FileChanges;

/// What changes a directory's contents. Not opens and reads: our own
/// rescan makes those, and waking on them would spin the control thread.
fn interest() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// Wakes `tx` when the directory may have changed: inotify events, plus a
/// slow poll that catches what inotify cannot see (a directory replaced
/// under its mount point, edits within the same mtime granularity).
/// With `changes`, each event also names its files there (an overflow, an
/// event on the directory itself, or the poll asks for a whole rescan).
pub fn watch(
    dir: &Path,
    tx: mpsc::Sender<()>,
    poll: Duration,
    changes: Option<Arc<FileChanges>>,
) -> Result<WatchGuard, SourceError> {
    let err = |source: std::io::Error| SourceError::Watch {
        dir: dir.to_owned(),
        source,
    };
    let inotify = Inotify::init().map_err(err)?;
    inotify.watches().add(dir, interest()).map_err(err)?;
    // SAFETY: the `Inotify` owns its descriptor and moves into the
    // `AsyncFd`, which holds it, unchanged and open, until it is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) }
        .map_err(|e| err(e.into_parts().1))?;
    if let Some(changes) = &changes {
        changes.watching();
    }
    let reader = tokio::spawn(read_events(fd, dir.to_owned(), tx.clone(), changes.clone()));
    let poller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        loop {
            tick.tick().await;
            if let Some(changes) = &changes {
                changes.everything();
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(WatchGuard { reader, poller })
}

/// Reads events as they come, names their files to `changes` and wakes
/// `tx`; ends if inotify fails (the poll still notices changes).
async fn read_events(
    mut fd: AsyncFd<Inotify>,
    dir: PathBuf,
    tx: mpsc::Sender<()>,
    changes: Option<Arc<FileChanges>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let mut ready = match fd.readable_mut().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot wait for inotify events; only the poll notices changes");
                return;
            }
        };
        let mut paths = Vec::new();
        let mut whole = false;
        match ready.get_inner_mut().read_events(&mut buffer) {
            Ok(events) => {
                for event in events {
                    match event.name {
                        Some(name) if !event.mask.contains(EventMask::Q_OVERFLOW) => {
                            paths.push(dir.join(name));
                        }
                        // The directory itself, or lost events.
                        _ => whole = true,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ready.clear_ready();
                continue;
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read inotify events; only the poll notices changes");
                return;
            }
        }
        if let Some(changes) = &changes {
            if whole {
                changes.everything();
            } else {
                changes.event(&paths);
            }
        }
        // A full channel already holds a wake-up; dropping this is fine.
        let _ = tx.try_send(());
    }
}

/// Stops watching when dropped.
pub struct WatchGuard {
    reader: tokio::task::JoinHandle<()>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.reader.abort();
        self.poller.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::file_changes::Pending;

    #[tokio::test]
    async fn an_event_names_its_file_and_wakes() {
        let dir = std::env::temp_dir().join(format!("sy-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let changes = Arc::new(FileChanges::new(dir.clone()));
        let (tx, mut rx) = mpsc::channel(1);
        let _guard =
            watch(&dir, tx, Duration::from_secs(3600), Some(changes.clone())).expect("watch");
        // The poll's first tick and the watch's start ask for a whole rescan.
        rx.recv().await.expect("first tick");
        assert!(matches!(changes.take(), Pending::All));

        let tmp = dir
            .parent()
            .expect("parent")
            .join(format!(".sy-watch-tmp-{}", std::process::id()));
        std::fs::write(&tmp, "x").expect("write");
        std::fs::rename(&tmp, dir.join("a.yaml")).expect("rename");
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("woken")
            .expect("open");
        match changes.take() {
            Pending::Files(files) => assert!(files.contains(&dir.join("a.yaml")), "{files:?}"),
            Pending::All => panic!("expected the file named"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
