//! Which manifest files the watcher saw change since the last rescan, so
//! that a rescan after one edited file stats that file instead of listing
//! the directory and stat'ing every file in it (at 101 files the listing
//! was half of an endpoint change's sync, ~0.65 ms of ~1.35).
//!
//! Anything the names cannot be trusted for makes the next rescan list the
//! directory whole: no watcher yet, the slow poll (what inotify cannot
//! see), an overflowed event queue, an event on the directory itself or on
//! a hidden entry (a ConfigMap volume swaps its `..data` symlink, and every
//! manifest behind it changes at once), or a forced reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the next rescan must look at.
#[derive(Debug)]
pub enum Pending {
    /// List the directory whole.
    All,
    /// Only these files of the directory may have changed.
    Files(BTreeSet<PathBuf>),
}

#[derive(Debug)]
struct State {
    /// A watcher reports changes; without one every rescan is whole.
    watched: bool,
    all: bool,
    files: BTreeSet<PathBuf>,
}

/// Shared between the watcher's task (`file_watch.rs`) and the source.
#[derive(Debug)]
pub struct FileChanges {
    dir: PathBuf,
    state: Mutex<State>,
}

impl FileChanges {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            state: Mutex::new(State {
                watched: false,
                all: true,
                files: BTreeSet::new(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding this lock loses at most a set of names;
        // recover the state and rescan whole rather than propagate.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.all = true;
            state
        });
        f(&mut state)
    }

    /// A watcher now reports changes. The rescan after this is whole:
    /// anything before the watch started was not seen.
    pub fn watching(&self) {
        self.with(|s| {
            s.watched = true;
            s.all = true;
        });
    }

    /// The next rescan lists the directory whole.
    pub fn everything(&self) {
        self.with(|s| s.all = true);
    }

    /// The watcher saw events naming `paths` (lost events are
    /// [`everything`](Self::everything)).
    pub fn event(&self, paths: &[PathBuf]) {
        let trusted = !paths.is_empty() && paths.iter().all(|p| self.names_a_file(p));
        self.with(|s| {
            if trusted {
                s.files.extend(paths.iter().cloned());
            } else {
                s.all = true;
            }
        });
    }

    /// An entry directly in the directory, not hidden: what a rescan of
    /// one file can stand for.
    fn names_a_file(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
    }

    /// What changed since the last call; resets.
    pub fn take(&self) -> Pending {
        self.with(|s| {
            let files = std::mem::take(&mut s.files);
            if s.all || !s.watched {
                s.all = false;
                Pending::All
            } else {
                Pending::Files(files)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/m")
    }

    #[test]
    fn unwatched_is_always_whole() {
        let c = FileChanges::new(dir());
        c.event(&[dir().join("a.yaml")]);
        assert!(matches!(c.take(), Pending::All));
        assert!(matches!(c.take(), Pending::All));
    }

    #[test]
    fn watched_names_the_files_after_a_first_whole_rescan() {
        let c = FileChanges::new(dir());
        c.watching();
        assert!(matches!(c.take(), Pending::All));
        c.event(&[dir().join("a.yaml"), dir().join("b.yaml")]);
        c.event(&[dir().join("a.yaml")]);
        match c.take() {
            Pending::Files(f) => assert_eq!(
                f.into_iter().collect::<Vec<_>>(),
                [dir().join("a.yaml"), dir().join("b.yaml")]
            ),
            Pending::All => panic!("expected the named files"),
        }
        assert!(matches!(c.take(), Pending::Files(f) if f.is_empty()));
    }

    #[test]
    fn untrusted_events_make_the_next_rescan_whole() {
        let c = FileChanges::new(dir());
        c.watching();
        let _ = c.take();
        for paths in [
            vec![dir().join("..data")],
            vec![dir()],
            vec![PathBuf::from("/elsewhere/a.yaml")],
            vec![],
        ] {
            c.event(&paths);
            assert!(matches!(c.take(), Pending::All), "{paths:?}");
            assert!(matches!(c.take(), Pending::Files(_)));
        }
        c.everything();
        assert!(matches!(c.take(), Pending::All));
    }
}
