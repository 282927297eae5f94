//! The write-ahead spool: an append-only log of finished traces in size-bounded segment
//! files, with the exporter's acknowledged cursor beside them.
//!
//! Every trace an exporter takes is appended here before it is sent (one `write` per trace,
//! so a SIGKILL loses nothing already appended; `fsync` is batched by the caller, about every
//! 200 ms and at every flush and shutdown, which bounds what a power cut can lose). The trace
//! is encoded before the log's lock is taken ([`Frame`]), so the lock covers the `write` alone.
//! Delivery acknowledges records by sequence number; the cursor (`ack`) is the lowest sequence
//! not yet acknowledged, and a segment whose records are all below it is deleted. The cap
//! counts the bytes of the segment files on disk.
//!
//! The design follows the OpenTelemetry Collector's persistent queue (read/write indexes and
//! an acknowledged set), Vector's disk buffer v2 (sized data files, a ledger, a lock on the
//! folder) and Fluent Bit's filesystem chunks. No crate offered this without a heavy
//! dependency (zstd, CBOR, sled or redb), so it is written here: about 400 lines of std.
//!
//! One process holds a folder at a time (an OS file lock on `lock`). A second process on the
//! same folder gets a folder of its own inside it (`proc-1`, `proc-2`, …), whose records the
//! holder of the main folder takes over (adopts) once that process has gone. Delivery is at
//! least once: a record delivered but not yet acknowledged on disk when the process dies is
//! sent again by the next one (Langfuse deduplicates by span and event id).
//!
//! Record frame: `u32 payload length, u64 sequence, u32 FNV-1a checksum (of the payload),
//! payload` (little endian). The payload is the trace in the binary record format of
//! [`record`] (its first byte the format's version, 1): about 32 bytes a span for the bench's
//! chain trace, where JSON took 250. Payloads that start with `{` are JSON, as versions before
//! the binary record wrote them, and are still read, so a spool left by one is delivered. A
//! payload that passes its checksum but does not decode is acknowledged and counted as lost,
//! like a corrupt frame. A torn frame at the end of the newest segment (a crash mid-write) is
//! cut off at start-up.
//!
//! Compression (lz4) was measured and left out: span ids and times are random-looking bytes,
//! so `lz4 -1` shrinks a whole segment of chain records only 1.47 times, and zlib level 1 a
//! single record by a fifth (1,615 to 1,270 bytes); the disk no longer limits the spool.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::trace::TraceRecord;

mod record;

pub(super) use record::Encoder;

const SEGMENT_SUFFIX: &str = ".seg";
const ACK_FILE: &str = "ack";
const LOCK_FILE: &str = "lock";
const OWN_PREFIX: &str = "proc-";
const HEADER: usize = 16;
/// A frame longer than this is taken as corruption, not a record.
const MAX_RECORD: u32 = 256 << 20;

/// Spans a trace stands for in reports (its spans, plus the trace itself unless it is a part
/// of a run still in progress).
pub(super) fn spans_of(t: &TraceRecord) -> u64 {
    t.weight()
}

fn checksum(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Reads a payload back: the binary record, or JSON (a `{` first) as earlier versions wrote.
/// A binary record is decoded into the memory of a record from `spare` when there is one.
fn decode(payload: &[u8], spare: &mut Vec<TraceRecord>) -> Option<TraceRecord> {
    match payload.first() {
        Some(b'{') => serde_json::from_slice(payload).ok(),
        _ => match spare.pop() {
            Some(mut t) => record::decode_into(payload, &mut t).ok().map(|()| t),
            None => record::decode(payload).ok(),
        },
    }
}

/// A frame encoded outside the log's lock: header (its sequence filled in when appended)
/// and payload. Keep one per thread and reuse it: its buffer and tables keep their memory.
#[derive(Debug, Default)]
pub(super) struct Frame {
    enc: Encoder,
    buf: Vec<u8>,
}

impl Frame {
    /// Encodes `t` (replacing what the frame held).
    pub(super) fn encode(&mut self, t: &TraceRecord) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER]);
        self.enc.encode(t, &mut self.buf);
        let len = (self.buf.len() - HEADER) as u32;
        let sum = checksum(&self.buf[HEADER..]);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[12..16].copy_from_slice(&sum.to_le_bytes());
    }

    /// Encodes `t` into a frame of its own (to be appended elsewhere, later): this one keeps
    /// its tables, the new one holds the bytes alone.
    pub(super) fn encode_detached(&mut self, t: &TraceRecord) -> Frame {
        self.encode(t);
        let buf = self.buf.clone();
        self.trim();
        Frame { enc: Encoder::default(), buf }
    }

    /// The frame's bytes, header first.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Lets go of the memory a large record (a long run's part) needed.
    pub(super) fn trim(&mut self) {
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
    }

    /// Encodes `t` here, then appends it to `log` under its lock, which so covers the `write`
    /// alone; `unread` as [`Log::append_frame_unread`]. Returns the record's sequence number.
    pub(super) fn append_to(
        &mut self,
        log: &parking_lot::Mutex<Log>,
        t: &TraceRecord,
        unread: bool,
    ) -> Result<u64, AppendError> {
        self.encode(t);
        let appended = {
            let mut log = log.lock();
            if unread {
                log.append_frame_unread(self)
            } else {
                log.append_frame(self)
            }
        };
        self.trim();
        appended
    }
}

/// A frame's header: payload length, sequence and checksum.
struct FrameHead {
    len: u32,
    seq: u64,
    sum: u32,
}

/// Reads the next frame's header, or `None` at the end of the data (or a torn header).
fn read_head(r: &mut impl Read) -> Option<FrameHead> {
    let mut head = [0u8; HEADER];
    r.read_exact(&mut head).ok()?;
    Some(FrameHead {
        len: u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        seq: u64::from_le_bytes(head[4..12].try_into().unwrap_or([0; 8])),
        sum: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
    })
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
struct Reader {
    /// Index (by `first`) of the segment being read.
    segment: u64,
    file: BufReader<File>,
    /// The sequence of the next frame in `file`.
    next: u64,
    /// Where that frame starts in the file.
    pos: u64,
}

/// A record read back from the log.
#[derive(Debug)]
pub(super) struct Stored {
    /// Its sequence number.
    pub seq: u64,
    /// The trace.
    pub trace: TraceRecord,
}

/// The write-ahead log of one exporter.
#[derive(Debug)]
pub(super) struct Log {
    dir: PathBuf,
    /// Held while open; `None` once closed.
    lock: Option<File>,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    active: File,
    next_seq: u64,
    /// Every record below this is acknowledged.
    floor: u64,
    /// Acknowledged records at or above `floor`.
    done: BTreeSet<u64>,
    /// Where the next read starts.
    scan: u64,
    reader: Option<Reader>,
    /// Whether records may be waiting that are not in the caller's memory.
    unread: bool,
    dirty: bool,
    ack_written: u64,
    /// Whether this is the main folder (it adopts the folders of other processes).
    main: bool,
    /// The frame [`append`](Self::append) encodes into.
    frame: Frame,
    /// The payload [`read`](Self::read) reads into.
    read_buf: Vec<u8>,
}

/// Why a record could not be appended.
#[derive(Debug, thiserror::Error)]
pub(super) enum AppendError {
    /// The cap is reached.
    #[error("spool {dir} is full ({used} of {max} bytes on disk)")]
    Full {
        /// The folder.
        dir: String,
        /// Bytes on disk.
        used: u64,
        /// The cap.
        max: u64,
    },
    /// Serialising or writing failed.
    #[error("cannot write to spool {dir}: {why}")]
    Io {
        /// The folder.
        dir: String,
        /// What failed.
        why: String,
    },
}

impl Log {
    /// Opens `dir` (creating it), holding at most `max_bytes` on disk. When another process
    /// holds `dir`, opens a folder of its own inside it instead and says so in the log output.
    pub(super) fn open(dir: impl AsRef<Path>, max_bytes: u64) -> std::io::Result<Log> {
        Self::open_with(dir.as_ref(), max_bytes, 8 << 20)
    }

    /// [`open`](Self::open) with a segment size (tests use small ones).
    pub(super) fn open_with(dir: &Path, max_bytes: u64, segment_bytes: u64) -> std::io::Result<Log> {
        fs::create_dir_all(dir)?;
        if let Some(lock) = try_lock(dir)? {
            let mut log = Self::open_locked(dir, lock, max_bytes, segment_bytes, true)?;
            log.adopt();
            return Ok(log);
        }
        for k in 1..=64 {
            let own = dir.join(format!("{OWN_PREFIX}{k}"));
            fs::create_dir_all(&own)?;
            if let Some(lock) = try_lock(&own)? {
                tracing::warn!(target: "flowtrace::export", "spool {} is in use by another process: this one spools to {} (taken over by the main folder's next holder once this process ends)", dir.display(), own.display());
                return Self::open_locked(&own, lock, max_bytes, segment_bytes, false);
            }
        }
        Err(std::io::Error::other(format!(
            "spool {} and 64 folders inside it are in use by other processes",
            dir.display()
        )))
    }

    fn open_locked(dir: &Path, lock: File, max_bytes: u64, segment_bytes: u64, main: bool) -> std::io::Result<Log> {
        let floor = fs::read_to_string(dir.join(ACK_FILE)).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        let mut segments: Vec<Segment> = Vec::new();
        for e in fs::read_dir(dir)?.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(first) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                segments.push(Segment { first, path: p, bytes });
            }
        }
        segments.sort_by_key(|s| s.first);
        // Segments wholly acknowledged (the next one starts at or below the floor) go.
        while segments.len() > 1 && segments[1].first <= floor {
            let s = segments.remove(0);
            let _ = fs::remove_file(&s.path);
        }
        let mut next_seq = floor;
        if let Some(last) = segments.last_mut() {
            let (end, next) = scan_valid(&last.path, last.first)?;
            if end < last.bytes {
                // A torn frame from a crash mid-write: cut it off.
                let f = fs::OpenOptions::new().write(true).open(&last.path)?;
                f.set_len(end)?;
                last.bytes = end;
            }
            next_seq = next_seq.max(next);
        }
        let reuse = segments.last().is_some_and(|s| s.bytes < segment_bytes && s.first <= next_seq);
        if !reuse {
            let path = dir.join(segment_name(next_seq));
            File::create(&path)?;
            segments.push(Segment { first: next_seq, path, bytes: 0 });
        }
        let last = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let active = fs::OpenOptions::new().append(true).open(&last)?;
        let unread = next_seq > floor;
        let mut log = Log {
            dir: dir.to_path_buf(),
            lock: Some(lock),
            max_bytes,
            segment_bytes,
            segments: segments.into(),
            active,
            next_seq,
            floor,
            done: BTreeSet::new(),
            scan: floor,
            reader: None,
            unread,
            dirty: false,
            ack_written: floor,
            main,
            frame: Frame::default(),
            read_buf: Vec::new(),
        };
        log.migrate_old_files();
        Ok(log)
    }

    /// The folder.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of segment files on disk.
    pub(super) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Whether records may be waiting that the caller has not read or kept in memory.
    pub(super) fn has_unread(&self) -> bool {
        self.unread
    }

    /// Says that records the caller held in memory were let go: read them again from the log.
    pub(super) fn rewind(&mut self) {
        self.scan = self.floor;
        self.unread = self.next_seq > self.floor;
    }

    /// Makes the log durable and lets the folder go (to the next process); appends fail
    /// from now on.
    pub(super) fn close(&mut self) -> std::io::Result<()> {
        let r = self.sync();
        self.lock = None;
        self.reader = None;
        r
    }

    /// Appends one trace; returns its sequence number.
    pub(super) fn append(&mut self, t: &TraceRecord) -> Result<u64, AppendError> {
        let mut frame = std::mem::take(&mut self.frame);
        frame.encode(t);
        let r = self.append_frame(&mut frame);
        self.frame = frame;
        r
    }

    /// Appends a frame encoded by the caller (outside the lock); returns its sequence number.
    /// One `write`: once this returns, a SIGKILL of the process does not lose the record.
    pub(super) fn append_frame(&mut self, frame: &mut Frame) -> Result<u64, AppendError> {
        let io = |why: String, dir: &Path| AppendError::Io { dir: dir.display().to_string(), why };
        if self.lock.is_none() {
            return Err(io("the spool is closed".into(), &self.dir));
        }
        let size = frame.buf.len() as u64;
        let used = self.bytes();
        if used + size > self.max_bytes {
            return Err(AppendError::Full { dir: self.dir.display().to_string(), used, max: self.max_bytes });
        }
        let seq = self.next_seq;
        frame.buf[4..12].copy_from_slice(&seq.to_le_bytes());
        if self.segments.back().is_some_and(|s| s.bytes > 0 && s.bytes + size > self.segment_bytes) {
            self.rotate().map_err(|e| io(e.to_string(), &self.dir))?;
        }
        self.active.write_all(&frame.buf).map_err(|e| io(e.to_string(), &self.dir))?;
        if let Some(s) = self.segments.back_mut() {
            s.bytes += size;
        }
        self.next_seq += 1;
        self.dirty = true;
        Ok(seq)
    }

    /// Appends a trace the caller does not keep in memory: it is read back later.
    pub(super) fn append_unread(&mut self, t: &TraceRecord) -> Result<u64, AppendError> {
        let seq = self.append(t)?;
        self.unread = true;
        Ok(seq)
    }

    /// [`append_unread`](Self::append_unread) of a frame encoded by the caller.
    pub(super) fn append_frame_unread(&mut self, frame: &mut Frame) -> Result<u64, AppendError> {
        let seq = self.append_frame(frame)?;
        self.unread = true;
        Ok(seq)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.active.sync_data()?;
        let path = self.dir.join(segment_name(self.next_seq));
        let f = fs::OpenOptions::new().create(true).append(true).open(&path)?;
        self.segments.push_back(Segment { first: self.next_seq, path, bytes: 0 });
        self.active = f;
        Ok(())
    }

    /// Acknowledges a record (delivered, or given up on and counted).
    pub(super) fn ack(&mut self, seq: u64) {
        if seq < self.floor {
            return;
        }
        // Delivery mostly acknowledges in order: the set holds only those ahead of a gap.
        if seq == self.floor {
            self.floor += 1;
            while !self.done.is_empty() && self.done.remove(&self.floor) {
                self.floor += 1;
            }
        } else {
            self.done.insert(seq);
        }
        // Delete segments wholly below the floor (never the active one).
        while self.segments.len() > 1 && self.segments[1].first <= self.floor {
            if let Some(s) = self.segments.pop_front() {
                if self.reader.as_ref().is_some_and(|r| r.segment == s.first) {
                    self.reader = None;
                }
                let _ = fs::remove_file(&s.path);
            }
        }
        if self.scan < self.floor {
            self.scan = self.floor;
        }
    }

    /// Makes every append and the cursor durable (`fsync`). Cheap when nothing changed.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.active.sync_data()?;
            self.dirty = false;
        }
        if self.ack_written != self.floor {
            let tmp = self.dir.join(".ack.tmp");
            let mut f = File::create(&tmp)?;
            writeln!(f, "{}", self.floor)?;
            f.sync_data()?;
            fs::rename(&tmp, self.dir.join(ACK_FILE))?;
            self.ack_written = self.floor;
        }
        Ok(())
    }

    /// Reads up to `max` unacknowledged records from the read position on, skipping those
    /// `skip` names (held in the caller's memory). Also returns how many frames could not be
    /// read back (corrupt); they are acknowledged, so the caller must count them as lost.
    pub(super) fn read(&mut self, max: usize, skip: impl Fn(u64) -> bool) -> (Vec<Stored>, u64) {
        self.read_spans(max, u64::MAX, skip)
    }

    /// [`read`](Self::read), stopping too once the records read stand for `max_spans` spans
    /// (a streamed run's parts are large records).
    pub(super) fn read_spans(&mut self, max: usize, max_spans: u64, skip: impl Fn(u64) -> bool) -> (Vec<Stored>, u64) {
        self.read_reusing(max, max_spans, skip, &mut Vec::new())
    }

    /// [`read_spans`](Self::read_spans), decoding into the memory of records from `spare`
    /// (records delivered and let go): decoding a record afresh allocated every map, key
    /// and string of it, and delivering it freed them all again.
    pub(super) fn read_reusing(
        &mut self,
        max: usize,
        max_spans: u64,
        skip: impl Fn(u64) -> bool,
        spare: &mut Vec<TraceRecord>,
    ) -> (Vec<Stored>, u64) {
        let mut out = Vec::new();
        let mut bad = 0;
        let mut spans = 0u64;
        while out.len() < max && spans < max_spans && self.scan < self.next_seq {
            if self.reader.as_ref().is_none_or(|r| r.next != self.scan) && !self.seek(self.scan) {
                break;
            }
            let Some(r) = self.reader.as_mut() else { break };
            let Some(FrameHead { len, seq, sum }) = read_head(&mut r.file) else {
                // End of this segment: the next one, if any, starts where this one ended.
                let next = self.segments.iter().find(|s| s.first > r.segment).map(|s| s.first);
                match next {
                    Some(first) if first >= self.scan => {
                        self.reader = None;
                        self.scan = first;
                        continue;
                    }
                    Some(_) => self.reader = None,
                    // The end of the newest segment: the reader stays here, so what is
                    // appended next is read on from this frame, not by reading the segment
                    // again from its start.
                    None => {
                        if r.file.seek(SeekFrom::Start(r.pos)).is_err() {
                            self.reader = None;
                        }
                    }
                }
                break;
            };
            r.pos += HEADER as u64;
            if len > MAX_RECORD || seq != r.next {
                // Corrupt: nothing after it in this segment can be trusted.
                bad += self.skip_segment();
                continue;
            }
            r.next += 1;
            self.scan = seq + 1;
            r.pos += len as u64;
            if seq < self.floor || self.done.contains(&seq) || skip(seq) {
                if r.file.seek_relative(len as i64).is_err() {
                    self.reader = None;
                }
                continue;
            }
            let payload = &mut self.read_buf;
            payload.resize(len as usize, 0);
            if r.file.read_exact(payload).is_err() || checksum(payload) != sum {
                self.ack(seq);
                bad += 1;
                self.reader = None;
                continue;
            }
            match decode(payload, spare) {
                Some(trace) => {
                    spans += spans_of(&trace);
                    out.push(Stored { seq, trace });
                }
                None => {
                    self.ack(seq);
                    bad += 1;
                }
            }
        }
        if self.scan >= self.next_seq {
            self.unread = false;
        }
        (out, bad)
    }

    /// Acknowledges the rest of the current segment (unreadable); returns how many records.
    fn skip_segment(&mut self) -> u64 {
        let Some(r) = self.reader.take() else { return 0 };
        let end = self.segments.iter().find(|s| s.first > r.segment).map(|s| s.first).unwrap_or(self.next_seq);
        let mut n = 0;
        for seq in r.next..end {
            if seq >= self.floor && !self.done.contains(&seq) {
                n += 1;
            }
            self.ack(seq);
        }
        self.scan = self.scan.max(end);
        n
    }

    /// Positions the reader at `seq`; false when no segment holds it.
    fn seek(&mut self, seq: u64) -> bool {
        let Some(s) = self.segments.iter().rev().find(|s| s.first <= seq) else {
            self.scan = self.segments.front().map(|s| s.first).unwrap_or(self.next_seq).max(seq);
            return false;
        };
        // A reader already in that segment, before `seq`, goes on from where it is.
        let mut r = match self.reader.take() {
            Some(r) if r.segment == s.first && r.next <= seq => r,
            _ => {
                let Ok(f) = File::open(&s.path) else { return false };
                Reader { segment: s.first, file: BufReader::with_capacity(256 << 10, f), next: s.first, pos: 0 }
            }
        };
        while r.next < seq {
            let Some(FrameHead { len, .. }) = read_head(&mut r.file) else { return false };
            if r.file.seek_relative(len as i64).is_err() {
                return false;
            }
            r.next += 1;
            r.pos += HEADER as u64 + len as u64;
        }
        self.reader = Some(r);
        true
    }

    /// Takes over the folders of other processes that have ended (`proc-N` inside the main
    /// folder): their unacknowledged records are appended here and the folders removed.
    /// Returns how many records were taken over.
    pub(super) fn adopt(&mut self) -> u64 {
        if !self.main {
            return 0;
        }
        let mut n = 0;
        let Ok(entries) = fs::read_dir(&self.dir) else { return 0 };
        for e in entries.flatten() {
            let p = e.path();
            if !p.file_name().and_then(|x| x.to_str()).is_some_and(|x| x.starts_with(OWN_PREFIX)) {
                continue;
            }
            let Ok(Some(lock)) = try_lock(&p) else { continue }; // its process is still running
            let Ok(mut other) = Log::open_locked(&p, lock, u64::MAX, self.segment_bytes, false) else { continue };
            let mut ok = true;
            loop {
                let (records, _bad) = other.read(256, |_| false);
                if records.is_empty() {
                    break;
                }
                for r in records {
                    if self.append_unread(&r.trace).is_err() {
                        ok = false;
                        break;
                    }
                    other.ack(r.seq);
                    n += 1;
                }
                if !ok {
                    break;
                }
            }
            if ok && self.sync().is_ok() {
                drop(other);
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = other.sync();
            }
        }
        if n > 0 {
            tracing::info!(target: "flowtrace::export", "spool {}: took over {n} traces left by another process", self.dir.display());
        }
        n
    }

    /// Traces spooled by earlier versions (one `.jsonl` file per batch, or `.sending` when
    /// claimed) are appended to the log and their files removed.
    fn migrate_old_files(&mut self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && (n.ends_with(".jsonl") || n.ends_with(".jsonl.sending")))
            })
            .collect();
        files.sort();
        for p in files {
            let Ok(text) = fs::read_to_string(&p) else { continue };
            let all = text
                .lines()
                .filter_map(|l| serde_json::from_str::<TraceRecord>(l).ok())
                .all(|t| self.append_unread(&t).is_ok());
            if all {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

/// The traces a spool folder (and the folders of other processes inside it) holds and has
/// not acknowledged, read without taking the folder: for inspection and tests.
pub(super) fn peek(dir: &Path) -> std::io::Result<Vec<TraceRecord>> {
    let mut out = Vec::new();
    let floor = fs::read_to_string(dir.join(ACK_FILE)).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let mut segs: Vec<PathBuf> = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
        if name.starts_with(OWN_PREFIX) && p.is_dir() {
            out.extend(peek(&p)?);
        } else if name.ends_with(SEGMENT_SUFFIX) {
            segs.push(p);
        }
    }
    segs.sort();
    for p in segs {
        let mut r = BufReader::new(File::open(&p)?);
        while let Some(FrameHead { len, seq, .. }) = read_head(&mut r) {
            if len > MAX_RECORD {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            if r.read_exact(&mut payload).is_err() {
                break; // being written
            }
            if seq >= floor {
                if let Some(t) = decode(&payload, &mut Vec::new()) {
                    out.push(t);
                }
            }
        }
    }
    Ok(out)
}

/// The log and its record codec, for the criterion benches (`flowtrace::export::__bench`):
/// not part of the API, and free to change.
#[doc(hidden)]
pub mod bench {
    use super::{record, Frame, Log, TraceRecord};

    /// Appends `t`'s binary payload to `out`.
    pub fn encode(t: &TraceRecord, out: &mut Vec<u8>) {
        record::Encoder::default().encode(t, out)
    }

    /// Decodes a binary payload.
    pub fn decode(payload: &[u8]) -> Option<TraceRecord> {
        record::decode(payload).ok()
    }

    /// A log in a folder of its own.
    #[derive(Debug)]
    pub struct Spool {
        log: Log,
        frame: Frame,
    }

    impl Spool {
        /// Opens (creating) a log in `dir`, uncapped.
        pub fn open(dir: &std::path::Path) -> std::io::Result<Spool> {
            Ok(Spool { log: Log::open(dir, u64::MAX)?, frame: Frame::default() })
        }

        /// Appends `t` as a record not held in memory (encode, checksum, one `write`).
        pub fn append(&mut self, t: &TraceRecord) {
            self.frame.encode(t);
            let _ = self.log.append_frame_unread(&mut self.frame);
        }

        /// Reads back up to `max` records and acknowledges them; returns how many.
        pub fn read_and_ack(&mut self, max: usize) -> usize {
            let (records, _) = self.log.read(max, |_| false);
            for r in &records {
                self.log.ack(r.seq);
            }
            records.len()
        }
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

/// The lock on `dir`, or `None` when another process holds it.
fn try_lock(dir: &Path) -> std::io::Result<Option<File>> {
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The end of the last whole, valid frame of a segment and the sequence after it.
fn scan_valid(path: &Path, first: u64) -> std::io::Result<(u64, u64)> {
    let mut r = BufReader::new(File::open(path)?);
    let (mut end, mut next) = (0u64, first);
    let mut payload = Vec::new();
    while let Some(FrameHead { len, seq, sum }) = read_head(&mut r) {
        if len > MAX_RECORD || seq != next {
            break;
        }
        payload.resize(len as usize, 0);
        if r.read_exact(&mut payload).is_err() || checksum(&payload) != sum {
            break;
        }
        end += HEADER as u64 + len as u64;
        next += 1;
    }
    Ok((end, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowtrace-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn trace(name: &str) -> TraceRecord {
        serde_json::from_value(serde_json::json!({
            "trace_id": "0123456789abcdef0123456789abcdef", "name": name,
            "start_unix_nanos": 1, "end_unix_nanos": 2, "input": null, "output": null, "status": "ok", "spans": []
        }))
        .expect("a trace record")
    }

    #[test]
    fn records_survive_reopening_until_acknowledged() {
        let d = dir("reopen");
        {
            let mut log = Log::open_with(&d, 1 << 20, 300).unwrap();
            for i in 0..10 {
                log.append(&trace(&format!("t{i}"))).unwrap();
            }
            log.ack(0);
            log.ack(1);
            log.ack(3); // out of order: the cursor stays at 2
            log.sync().unwrap();
            assert!(log.segments.len() > 1, "small segments rotate");
        }
        let mut log = Log::open_with(&d, 1 << 20, 300).unwrap();
        let (got, bad) = log.read(100, |_| false);
        let names: Vec<String> = got.iter().map(|r| r.trace.name.clone()).collect();
        // 3 was acknowledged after the cursor, which is not kept: it comes again (at least once).
        assert_eq!(names, ["t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"]);
        assert_eq!(bad, 0);
        for r in &got {
            log.ack(r.seq);
        }
        log.sync().unwrap();
        assert_eq!(log.segments.len(), 1, "acknowledged segments are deleted");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_rest_kept() {
        let d = dir("torn");
        {
            let mut log = Log::open_with(&d, 1 << 20, 1 << 20).unwrap();
            log.append(&trace("whole")).unwrap();
            log.append(&trace("torn")).unwrap();
        }
        let seg = d.join(segment_name(0));
        let len = fs::metadata(&seg).unwrap().len();
        fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
        let mut log = Log::open_with(&d, 1 << 20, 1 << 20).unwrap();
        let (got, _) = log.read(10, |_| false);
        assert_eq!(got.iter().map(|r| r.trace.name.as_str()).collect::<Vec<_>>(), ["whole"]);
        assert_eq!(log.append(&trace("next")).unwrap(), 1, "the torn record's number is reused");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn reading_at_the_writers_heels_goes_on_where_it_stopped() {
        let d = dir("heels");
        let mut log = Log::open_with(&d, 1 << 20, 200).unwrap();
        let mut seen = Vec::new();
        let mut n = 0;
        for round in 0..12 {
            for _ in 0..round % 4 {
                log.append_unread(&trace(&format!("t{n}"))).unwrap();
                n += 1;
            }
            let (got, bad) = log.read(2, |_| false);
            assert_eq!(bad, 0);
            for r in got {
                seen.push(r.seq);
                log.ack(r.seq);
            }
        }
        while let (got, 0) = log.read(10, |_| false) {
            if got.is_empty() {
                break;
            }
            seen.extend(got.iter().map(|r| r.seq));
        }
        assert!(log.segments.back().is_some_and(|s| s.first > 0), "small segments rotate");
        assert_eq!(seen, (0..n).collect::<Vec<u64>>(), "every record once, in order");
        let _ = fs::remove_dir_all(&d);
    }

    /// A frame as the previous version wrote it: the trace as JSON.
    fn json_frame(seq: u64, t: &TraceRecord) -> Vec<u8> {
        let payload = serde_json::to_vec(t).unwrap();
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(&seq.to_le_bytes());
        f.extend_from_slice(&checksum(&payload).to_le_bytes());
        f.extend_from_slice(&payload);
        f
    }

    #[test]
    fn json_records_left_by_the_previous_version_are_read_beside_binary_ones() {
        let d = dir("json");
        fs::create_dir_all(&d).unwrap();
        let mut seg = json_frame(0, &trace("old 0"));
        seg.extend(json_frame(1, &trace("old 1")));
        fs::write(d.join(segment_name(0)), seg).unwrap();
        let mut log = Log::open_with(&d, 1 << 20, 1 << 20).unwrap();
        assert!(log.has_unread());
        assert_eq!(log.append_unread(&trace("new 2")).unwrap(), 2, "appends follow the old records");
        let (got, bad) = log.read(10, |_| false);
        assert_eq!(bad, 0);
        assert_eq!(got.iter().map(|r| r.trace.name.as_str()).collect::<Vec<_>>(), ["old 0", "old 1", "new 2"]);
        let names: Vec<String> = peek(&d).unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["old 0", "old 1", "new 2"]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_record_that_does_not_decode_is_counted_not_delivered() {
        let d = dir("undecodable");
        {
            let mut log = Log::open_with(&d, 1 << 20, 1 << 20).unwrap();
            log.append(&trace("good")).unwrap();
        }
        // A frame whose checksum holds but whose payload is no record (an unknown version).
        let payload = [0x7fu8, 1, 2, 3];
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes());
        f.extend_from_slice(&checksum(&payload).to_le_bytes());
        f.extend_from_slice(&payload);
        fs::OpenOptions::new().append(true).open(d.join(segment_name(0))).unwrap().write_all(&f).unwrap();
        let mut log = Log::open_with(&d, 1 << 20, 1 << 20).unwrap();
        let (got, bad) = log.read(10, |_| false);
        assert_eq!((got.len(), bad), (1, 1));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn records_read_into_spare_ones_are_the_records_appended() {
        let d = dir("spare");
        let mut log = Log::open(&d, 1 << 20).unwrap();
        let mut big = record::tests::chain();
        big.name = "chain".into();
        for i in 0..4 {
            log.append(&trace(&format!("t{i}"))).unwrap();
        }
        log.append(&big).unwrap();
        // Spares of other shapes: a chain trace, and an empty one.
        let mut spare = vec![record::tests::chain(), trace("spare"), record::tests::chain()];
        let (got, bad) = log.read_reusing(10, u64::MAX, |_| false, &mut spare);
        assert_eq!(bad, 0);
        assert!(spare.is_empty(), "every spare was used");
        let names: Vec<&str> = got.iter().map(|r| r.trace.name.as_str()).collect();
        assert_eq!(names, ["t0", "t1", "t2", "t3", "chain"]);
        for r in &got[..4] {
            assert!(r.trace.spans.is_empty());
        }
        assert_eq!(serde_json::to_value(&got[4].trace).unwrap(), serde_json::to_value(&big).unwrap());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_cap_counts_bytes_on_disk() {
        let d = dir("cap");
        let mut log = Log::open_with(&d, 400, 1 << 20).unwrap();
        let mut n = 0;
        while log.append(&trace("x")).is_ok() {
            n += 1;
        }
        assert!(n > 0 && log.bytes() <= 400, "{n} records, {} bytes", log.bytes());
        assert!(matches!(log.append(&trace("x")), Err(AppendError::Full { .. })));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_holder_gets_a_folder_of_its_own_which_the_main_one_adopts() {
        let d = dir("lock");
        let mut first = Log::open(&d, 1 << 20).unwrap();
        let mut second = Log::open(&d, 1 << 20).unwrap();
        assert_ne!(first.dir(), second.dir());
        second.append(&trace("from the second")).unwrap();
        second.sync().unwrap();
        assert_eq!(first.adopt(), 0, "not while the second process holds it");
        drop(second);
        assert_eq!(first.adopt(), 1);
        let (got, _) = first.read(10, |_| false);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].trace.name, "from the second");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn records_held_in_memory_are_skipped_and_a_rewind_reads_the_rest_again() {
        let d = dir("skip");
        let mut log = Log::open(&d, 1 << 20).unwrap();
        for i in 0..4 {
            log.append(&trace(&format!("t{i}"))).unwrap();
        }
        let (got, _) = log.read(10, |s| s % 2 == 0);
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        assert!(!log.has_unread());
        log.ack(0);
        log.rewind();
        let (got, _) = log.read(10, |_| false);
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let _ = fs::remove_dir_all(&d);
    }
}
