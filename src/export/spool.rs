//! The on-disk spool: batches that could not be delivered, kept as JSON Lines files in a
//! folder until the backend is back (in this process or the next one using the folder).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::trace::TraceRecord;

const SUFFIX: &str = ".jsonl";
const CLAIMED: &str = ".sending";

/// A bounded folder of undelivered traces.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    used: Mutex<u64>,
    seq: AtomicU64,
}

/// Spans a spooled trace stands for (its spans plus the trace itself).
pub fn spans_of(t: &TraceRecord) -> u64 {
    t.spans.len() as u64 + 1
}

impl Spool {
    /// Opens (creating it) `dir`, holding at most `max_bytes`. Files a crashed process left
    /// claimed are taken back.
    pub fn open(dir: impl AsRef<Path>, max_bytes: u64) -> std::io::Result<Spool> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let mut used = 0;
        for e in fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
            if let Some(base) = name.strip_suffix(CLAIMED) {
                // Claimed by a process that is gone (or still sending: it then deletes the
                // file it renamed and finds it missing, which is harmless).
                if stale(&p) {
                    let _ = fs::rename(&p, dir.join(base));
                }
            }
            used += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(Spool { dir, max_bytes, used: Mutex::new(used), seq: AtomicU64::new(0) })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `traces` as one file; returns the spans written, or why nothing was.
    pub fn write(&self, traces: &[Arc<TraceRecord>]) -> Result<u64, String> {
        let mut buf = Vec::new();
        for t in traces {
            serde_json::to_writer(&mut buf, &**t).map_err(|e| format!("cannot serialise a trace: {e}"))?;
            buf.push(b'\n');
        }
        let mut used = self.used.lock();
        if *used + buf.len() as u64 > self.max_bytes {
            return Err(format!("spool {} is full ({} of {} bytes used)", self.dir.display(), *used, self.max_bytes));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!("{now:020}-{}-{:06}", std::process::id(), self.seq.fetch_add(1, Ordering::Relaxed));
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_data()?;
            fs::rename(&tmp, self.dir.join(format!("{name}{SUFFIX}")))
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write to spool {}: {e}", self.dir.display())
        })?;
        *used += buf.len() as u64;
        Ok(traces.iter().map(|t| spans_of(t)).sum())
    }

    /// Whether any spooled file is waiting.
    pub fn has_files(&self) -> bool {
        self.files().next().is_some()
    }

    fn files(&self) -> impl Iterator<Item = PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(SUFFIX) && !n.starts_with('.'))
            })
            .collect();
        v.sort();
        v.into_iter()
    }

    /// Takes the oldest file for sending: renames it so no other process sends it too, and
    /// reads its traces. Lines that do not parse are counted, by the spans they held, in
    /// [`Claim::unreadable`].
    pub fn claim(&self) -> Option<Claim> {
        for p in self.files() {
            let claimed = PathBuf::from(format!("{}{CLAIMED}", p.display()));
            if fs::rename(&p, &claimed).is_err() {
                continue; // another process took it
            }
            let Ok(f) = fs::File::open(&claimed) else { continue };
            let mut traces = Vec::new();
            let mut bad = 0;
            for line in BufReader::new(f).lines() {
                match line {
                    Ok(l) => match serde_json::from_str::<TraceRecord>(&l) {
                        Ok(t) => traces.push(Arc::new(t)),
                        // Counted as the spans it held (each has a `span_id`) plus the trace,
                        // as it was counted when spooled, not as one.
                        Err(_) => bad += l.matches("\"span_id\":").count() as u64 + 1,
                    },
                    Err(_) => bad += 1,
                }
            }
            let bytes = fs::metadata(&claimed).map(|m| m.len()).unwrap_or(0);
            return Some(Claim { path: claimed, original: p, traces, unreadable: bad, bytes });
        }
        None
    }

    /// Deletes a claimed file once its traces are delivered (or given up on).
    pub fn done(&self, claim: Claim) {
        if fs::remove_file(&claim.path).is_ok() {
            let mut used = self.used.lock();
            *used = used.saturating_sub(claim.bytes);
        }
    }

    /// Puts a claimed file back, for a later attempt.
    pub fn release(&self, claim: Claim) {
        let _ = fs::rename(&claim.path, &claim.original);
    }
}

fn stale(p: &Path) -> bool {
    // A claimed file untouched for a minute belongs to a process that stopped.
    fs::metadata(p)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().map(|e| e.as_secs() > 60).unwrap_or(false))
        .unwrap_or(true)
}

/// A spooled file taken for sending.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
    original: PathBuf,
    /// The traces it holds.
    pub traces: Vec<Arc<TraceRecord>>,
    /// Spans of the lines that could not be read back.
    pub unreadable: u64,
    bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_line_counts_the_spans_it_held() {
        let dir = std::env::temp_dir().join(format!("flowtrace-spool-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        // A trace with two spans, cut short: it cannot be read, but it held 3 spans.
        let line = r#"{"trace_id":"0123","spans":[{"span_id":"01"},{"span_id":"02"}"#;
        fs::write(dir.join(format!("0001{SUFFIX}")), format!("{line}\n")).unwrap();
        let claim = spool.claim().unwrap();
        assert_eq!((claim.traces.len(), claim.unreadable), (0, 3));
        spool.done(claim);
        let _ = fs::remove_dir_all(&dir);
    }
}
