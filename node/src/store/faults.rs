//! A fault-injecting [`StoreFiles`] for tests, in the spirit of redb's test backend: it counts
//! the store's file-changing steps and, at a chosen step, makes that step fail with a chosen
//! error, or "crashes": that step and every later one fail without touching the disk, as if the
//! process had died between the previous step and this one.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::files::{RealFiles, StoreFiles};

/// The kinds of step, to aim a fault at one kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    WriteNew,
    StartWriteback,
    SyncFile,
    Rename,
    SyncDir,
    Remove,
}

/// What happens at the chosen step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The step fails with this error kind; later steps run normally. A failed `WriteNew`
    /// leaves half the bytes written, as a full disk would.
    Fail(io::ErrorKind),
    /// The process "dies" before the step: it and every later step fail.
    Crash,
}

#[derive(Debug)]
pub(crate) struct FaultyFiles {
    real: RealFiles,
    /// Steps (of the aimed kind, if any) seen so far.
    seen: AtomicU64,
    plan: Mutex<Option<(Option<Step>, u64, Fault)>>,
    crashed: AtomicBool,
    /// Whether the planned fault has fired.
    fired: AtomicBool,
}

impl FaultyFiles {
    /// No fault until [`plan`](Self::plan) names one.
    pub(crate) fn new() -> Self {
        Self {
            real: RealFiles,
            seen: AtomicU64::new(0),
            plan: Mutex::new(None),
            crashed: AtomicBool::new(false),
            fired: AtomicBool::new(false),
        }
    }

    /// `fault` at the `nth` (from 0) step of kind `step` (any kind if `None`) from now on.
    pub(crate) fn plan(&self, step: Option<Step>, nth: u64, fault: Fault) {
        self.seen.store(0, Ordering::SeqCst);
        self.fired.store(false, Ordering::SeqCst);
        *self.plan.lock().unwrap() = Some((step, nth, fault));
    }

    /// Steps (of the aimed kind, if any) seen since the last [`plan`](Self::plan).
    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Whether the planned fault fired.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Whether the process "died".
    pub(crate) fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Decides the fate of one step: `Ok(true)` to run it, `Ok(false)` to run half of it (a
    /// short write), or the error to return.
    fn step(&self, kind: Step) -> io::Result<bool> {
        if self.crashed() {
            return Err(io::Error::other("crashed"));
        }
        let plan = *self.plan.lock().unwrap();
        let Some((aimed, nth, fault)) = plan else {
            return Ok(true);
        };
        if aimed.is_some_and(|aimed| aimed != kind) {
            return Ok(true);
        }
        if self.seen.fetch_add(1, Ordering::SeqCst) != nth {
            return Ok(true);
        }
        self.fired.store(true, Ordering::SeqCst);
        match fault {
            Fault::Crash => {
                self.crashed.store(true, Ordering::SeqCst);
                Err(io::Error::other("crashed"))
            }
            // A write runs half, then fails.
            Fault::Fail(_) if kind == Step::WriteNew => Ok(false),
            Fault::Fail(error_kind) => Err(io::Error::from(error_kind)),
        }
    }

    fn planned_error(&self) -> io::Error {
        match *self.plan.lock().unwrap() {
            Some((_, _, Fault::Fail(kind))) => io::Error::from(kind),
            _ => io::Error::other("crashed"),
        }
    }
}

impl StoreFiles for FaultyFiles {
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if self.step(Step::WriteNew)? {
            return self.real.write_new(path, bytes);
        }
        self.real.write_new(path, &bytes[..bytes.len() / 2])?;
        Err(self.planned_error())
    }

    fn start_writeback(&self, path: &Path) -> io::Result<()> {
        self.step(Step::StartWriteback)?;
        self.real.start_writeback(path)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.step(Step::SyncFile)?;
        self.real.sync_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step(Step::Rename)?;
        self.real.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step(Step::SyncDir)?;
        self.real.sync_dir(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.step(Step::Remove)?;
        self.real.remove_file(path)
    }
}
