//! The shared store: one concurrent map every node of a run reads and writes.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A value held in the store: any serialisable type, kept as an `Arc` so that reading it
/// back as its own type is a downcast and a snapshot is a list of reference-count bumps.
pub(crate) trait StoreValue: Any + Send + Sync {
    fn to_json(&self) -> Result<Value, serde_json::Error>;
    /// The value to serialise, for a trace (which records it with its own depth limit).
    fn value(&self) -> &dyn erased_serde::Serialize;
    fn as_any(&self) -> &dyn Any;
    /// The value itself, to overwrite in place (`None` for a JSON value, whose drop must not
    /// recurse).
    fn as_any_mut(&mut self) -> Option<&mut dyn Any>;
    fn type_name(&self) -> &'static str;
}

impl<T: Serialize + Any + Send + Sync> StoreValue for T {
    fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }
    fn value(&self) -> &dyn erased_serde::Serialize {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

/// A JSON value in the store. Read back as a `Value` like any other; the difference is its
/// drop, which does not recurse: the last reference to a store value can be a trace snapshot,
/// dropped on the tracer's thread, and a value nested 100,000 deep would overflow its stack.
struct JsonValue(Value);

impl Drop for JsonValue {
    fn drop(&mut self) {
        drop_deep(std::mem::take(&mut self.0));
    }
}

impl StoreValue for JsonValue {
    fn to_json(&self) -> Result<Value, serde_json::Error> {
        Ok(self.0.clone())
    }
    fn value(&self) -> &dyn erased_serde::Serialize {
        &self.0
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Value>()
    }
}

/// Drops a value of any depth without recursion (the drop serde_json derives recurses, and a
/// value nested 100,000 deep overflows a thread's stack).
pub(crate) fn drop_deep(v: Value) {
    let mut stack = vec![v];
    while let Some(mut v) = stack.pop() {
        match &mut v {
            Value::Array(a) => stack.append(a),
            Value::Object(m) => stack.extend(std::mem::take(m).into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// `value` as the store keeps it (a JSON value in a [`JsonValue`]).
fn stored<T: Serialize + Any + Send + Sync>(value: T) -> Arc<dyn StoreValue> {
    let mut slot = Some(value);
    if let Some(json) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Value>>().and_then(Option::take) {
        return Arc::new(JsonValue(json));
    }
    match slot {
        Some(v) => Arc::new(v),
        None => Arc::new(Value::Null), // unreachable: only a `Value` is taken above
    }
}

/// Why a store value could not be read as the requested type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key holds a value that does not convert to the requested type.
    #[error("shared['{key}'] holds a {found}, which does not read as {wanted}: {reason}")]
    WrongType {
        /// The key read.
        key: String,
        /// The stored value's type.
        found: &'static str,
        /// The type asked for.
        wanted: &'static str,
        /// Why the conversion failed.
        reason: String,
    },
    /// A required key is absent.
    #[error("shared['{0}'] is missing")]
    Missing(String),
}

/// How many recording scopes ([`record_writes`], [`record_reads`]) are alive in the process.
/// While there are none, which is always so when nothing is traced, a store's reads and writes
/// skip looking for one in their task (a task-local look-up per access was a tenth of the
/// store's cost).
static RECORDING: AtomicUsize = AtomicUsize::new(0);

/// Counts a recording scope in [`RECORDING`] while alive (it lives in the scope's future, so a
/// dropped one is counted out too).
struct Recording;

impl Recording {
    fn on() -> Self {
        RECORDING.fetch_add(1, Ordering::Relaxed);
        Recording
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether any task may be recording what it reads or writes. A task's own scope is counted
/// before its future first runs, so a task inside one always sees a non-zero count.
#[inline]
fn any_recording() -> bool {
    RECORDING.load(Ordering::Relaxed) != 0
}

/// What a traced phase is recording on this thread, while its future is polled (see
/// [`Recorded::during`]). A thread-local set around each poll rather than a task-local
/// future around the phase: the same reach (what the phase's own task does while it runs),
/// without a future to wrap, and move, per phase.
enum Scope {
    /// The entries a `prep` read: the key and the value as read (a reference count,
    /// serialised later, off the run's path).
    Reads(Vec<(Key, Arc<dyn StoreValue>)>),
    /// The keys a `post` wrote, so its span can list them.
    Writes(Vec<Key>),
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// What one traced phase records of its store accesses, kept between the polls of its future.
pub(crate) struct Recorded {
    scope: Option<Scope>,
    _on: Recording,
}

impl Recorded {
    /// A recording of the entries read.
    pub(crate) fn reads() -> Self {
        Recorded { scope: Some(Scope::Reads(Vec::new())), _on: Recording::on() }
    }

    /// A recording of the keys written.
    pub(crate) fn writes() -> Self {
        Recorded { scope: Some(Scope::Writes(Vec::new())), _on: Recording::on() }
    }

    /// Runs `f` (a poll of the phase's future) with this recording in effect on this thread;
    /// whatever was in effect before (a recording further out) is back afterwards, even if
    /// `f` panics.
    #[inline]
    pub(crate) fn during<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Restore<'a> {
            mine: &'a mut Option<Scope>,
            outer: Option<Scope>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                *self.mine = SCOPE.with(|s| s.replace(outer));
            }
        }
        let outer = SCOPE.with(|s| s.replace(self.scope.take()));
        let _restore = Restore { mine: &mut self.scope, outer };
        f()
    }

    /// The entries read.
    pub(crate) fn into_reads(self) -> StoreSnapshot {
        match self.scope {
            Some(Scope::Reads(entries)) => StoreSnapshot { entries },
            _ => StoreSnapshot::default(),
        }
    }

    /// The keys written, in the order first written.
    pub(crate) fn into_writes(self) -> Vec<Key> {
        match self.scope {
            Some(Scope::Writes(keys)) => keys,
            _ => Vec::new(),
        }
    }
}

/// Runs `fut`, polled where it is, with `rec` in effect during each of its polls.
async fn recorded<F: std::future::Future>(fut: F, rec: &mut Recorded) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| rec.during(|| fut.as_mut().poll(cx))).await
}

/// Runs `fut` recording the keys it writes to any store; returns them with its output.
pub(crate) async fn record_writes<F: std::future::Future>(fut: F) -> (F::Output, Vec<Key>) {
    let mut rec = Recorded::writes();
    let out = recorded(fut, &mut rec).await;
    (out, rec.into_writes())
}

/// Runs `fut` recording the entries it reads from any store; returns them with its output.
pub(crate) async fn record_reads<F: std::future::Future>(fut: F) -> (F::Output, StoreSnapshot) {
    let mut rec = Recorded::reads();
    let out = recorded(fut, &mut rec).await;
    (out, rec.into_reads())
}

/// At most this many entries are kept per phase: a summary, not a copy of the store.
pub(crate) const MAX_RECORDED: usize = 64;

/// Whether a traced `prep` on this task records what it reads.
#[inline]
fn recording_reads() -> bool {
    any_recording() && in_read_scope()
}

#[cold]
fn in_read_scope() -> bool {
    SCOPE.with(|s| matches!(*s.borrow(), Some(Scope::Reads(_))))
}

#[inline]
fn note_read(map: &Map, key: &str, v: &Arc<dyn StoreValue>) {
    if any_recording() {
        note_read_slow(map, key, v);
    }
}

/// Notes a read of `key` (found in `map`, whose lock the caller holds): the key is the
/// map's own, by reference count (no copy of it to make here and free on the tracer's thread).
#[cold]
fn note_read_slow(map: &Map, key: &str, v: &Arc<dyn StoreValue>) {
    SCOPE.with(|s| {
        if let Some(Scope::Reads(r)) = &mut *s.borrow_mut() {
            if r.len() < MAX_RECORDED && !r.iter().any(|(k, _)| same_key(k, key)) {
                r.push((map.key_of(key), Arc::clone(v)));
            }
        }
    });
}

/// Notes a write of `key` to `map` (whose lock the caller holds).
#[inline]
fn note_write(map: &Map, key: &str) {
    if any_recording() {
        note_write_slow(map, key);
    }
}

#[cold]
fn note_write_slow(map: &Map, key: &str) {
    SCOPE.with(|s| {
        if let Some(Scope::Writes(w)) = &mut *s.borrow_mut() {
            if !w.iter().any(|k| same_key(k, key)) {
                w.push(map.key_of(key));
            }
        }
    });
}

/// The shared store of a run: a concurrent string-keyed map of serialisable values.
///
/// Cloning a `SharedStore` gives another handle to the **same** map, as PocketFlow passes one
/// dict by reference: writes made by a run are visible to the caller afterwards. It is safe to
/// write from parallel branches, and [`snapshot`](Self::snapshot) is cheap because values are
/// reference-counted and serialised only when a trace is exported.
///
/// ```
/// use flowtrace::SharedStore;
/// let shared = SharedStore::new();
/// shared.insert("current", 5_i64);
/// shared.update("current", || 0_i64, |v| *v += 3).unwrap();
/// assert_eq!(shared.get::<i64>("current").unwrap(), Some(8));
/// assert_eq!(shared.get::<f64>("current").unwrap(), Some(8.0)); // converts through JSON
/// ```
#[derive(Clone, Default)]
pub struct SharedStore {
    // One lock for the map, held only to look up or swap a reference count (values are
    // converted and dropped outside it): a run has a handful of writers, and a sharded map
    // (DashMap, measured) cost more to make per run and to hash into than it gained.
    map: Arc<RwLock<Map>>,
}

/// A store key. Shared, so that what a trace records of an entry (its key with its value)
/// is two reference counts, not a copy of the key.
pub(crate) type Key = Arc<str>;

/// One entry: a key and its value, by reference count.
type Entry = (Key, Arc<dyn StoreValue>);

/// The store's entries: each key's value, by reference count.
///
/// A store holds a handful of keys, and up to [`SCAN_MAX`] of them are found by a scan (a
/// length and a byte comparison each), which costs less than hashing the key and probing a
/// table did (a fifth of a chain node's cost went to the two look-ups of its read and its
/// write); a store that grows past that moves to a hash map, for good.
// The few entries are inline on purpose: boxed, they are the allocation `Few` saves, and a
// store is one per run, in the store's own `Arc`.
#[allow(clippy::large_enum_variant)]
enum Map {
    Few(Few),
    Many(HashMap<Key, Arc<dyn StoreValue>, KeyHash>),
}

/// The most keys a store finds by scanning.
const SCAN_MAX: usize = 8;

/// Up to [`SCAN_MAX`] entries, in the store's own allocation: a `Vec` of them was a second
/// allocation (and its release) for every store, about 200 instructions of a short run that
/// makes its store.
struct Few {
    len: usize,
    /// `Some` in `..len`, `None` after.
    slots: [Option<Entry>; SCAN_MAX],
}

impl Few {
    fn new() -> Self {
        Few { len: 0, slots: Default::default() }
    }

    #[inline(always)]
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots[..self.len].iter().flatten()
    }

    #[inline(always)]
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.slots[..self.len].iter_mut().flatten()
    }

    /// Adds `entry`; the caller has checked there is room.
    fn push(&mut self, entry: Entry) -> &mut Entry {
        let i = self.len;
        self.len += 1;
        self.slots[i].insert(entry)
    }

    /// Removes the entry at `i`, the last one taking its place.
    fn swap_remove(&mut self, i: usize) -> Option<Entry> {
        let last = self.len.checked_sub(1)?;
        self.slots.swap(i, last);
        self.len = last;
        self.slots[last].take()
    }

    /// Takes every entry out, leaving none.
    fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        let len = std::mem::take(&mut self.len);
        self.slots[..len].iter_mut().filter_map(Option::take)
    }
}

/// Whether key `k` is `key` (a store key, or an edge's action). Such keys are a handful of
/// bytes, and comparing them here costs a few instructions where `==` on strings calls
/// `memcmp` for every key a scan looks at. Longer keys still go to `memcmp`.
#[inline(always)]
pub(crate) fn same_key(k: &str, key: &str) -> bool {
    let (a, b) = (k.as_bytes(), key.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 16 {
        return a == b;
    }
    // An OR of the bytes' differences, not a loop that stops at the first: the compiler turns
    // the latter back into a call to `bcmp`.
    a.iter().zip(b).fold(0_u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Default for Map {
    fn default() -> Self {
        Map::Few(Few::new())
    }
}

impl Map {
    #[inline(always)]
    fn get(&self, key: &str) -> Option<&Arc<dyn StoreValue>> {
        match self {
            Map::Few(v) => v.iter().find(|(k, _)| same_key(k, key)).map(|(_, v)| v),
            Map::Many(m) => m.get(key),
        }
    }

    /// The map's own key equal to `key` (a reference count), or a new one when absent.
    fn key_of(&self, key: &str) -> Key {
        let found = match self {
            Map::Few(v) => v.iter().find(|(k, _)| same_key(k, key)).map(|(k, _)| k),
            Map::Many(m) => m.get_key_value(key).map(|(k, _)| k),
        };
        found.map_or_else(|| Arc::from(key), Arc::clone)
    }

    #[inline(always)]
    fn get_mut(&mut self, key: &str) -> Option<&mut Arc<dyn StoreValue>> {
        match self {
            Map::Few(v) => v.iter_mut().find(|(k, _)| same_key(k, key)).map(|(_, v)| v),
            Map::Many(m) => m.get_mut(key),
        }
    }

    /// Sets `key` (known to be absent) to `value`.
    fn insert_new(&mut self, key: Key, value: Arc<dyn StoreValue>) -> &mut Arc<dyn StoreValue> {
        if let Map::Few(v) = self {
            if v.len >= SCAN_MAX {
                let mut m = HashMap::with_capacity_and_hasher(2 * SCAN_MAX, KeyHash::default());
                m.extend(v.drain());
                *self = Map::Many(m);
            }
        }
        match self {
            Map::Few(v) => &mut v.push((key, value)).1,
            Map::Many(m) => m.entry(key).insert_entry(value).into_mut(),
        }
    }

    /// Sets `key` to `value`, returning the value it replaced.
    fn insert(&mut self, key: &str, value: Arc<dyn StoreValue>) -> Option<Arc<dyn StoreValue>> {
        match self.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                self.insert_new(Arc::from(key), value);
                None
            }
        }
    }

    /// The value at `key`, made with `init` when absent.
    fn get_or_insert_with(
        &mut self,
        key: &str,
        init: impl FnOnce() -> Arc<dyn StoreValue>,
    ) -> &mut Arc<dyn StoreValue> {
        // Looked up twice when absent: the borrow checker does not let a miss fall through.
        if self.get(key).is_some() {
            return self.get_mut(key).expect("just found");
        }
        self.insert_new(Arc::from(key), init())
    }

    fn remove(&mut self, key: &str) -> Option<Arc<dyn StoreValue>> {
        match self {
            Map::Few(v) => {
                let i = v.iter().position(|(k, _)| same_key(k, key))?;
                v.swap_remove(i).map(|(_, v)| v)
            }
            Map::Many(m) => m.remove(key),
        }
    }

    fn len(&self) -> usize {
        match self {
            Map::Few(v) => v.len,
            Map::Many(m) => m.len(),
        }
    }

    /// Every entry, in no particular order.
    fn iter(&self) -> Box<dyn Iterator<Item = (&Key, &Arc<dyn StoreValue>)> + '_> {
        match self {
            Map::Few(v) => Box::new(v.iter().map(|(k, v)| (k, v))),
            Map::Many(m) => Box::new(m.iter()),
        }
    }
}

/// The store's key hash: FxHash (rustc's). SipHash, std's default, was a sixth of a chain
/// node's whole cost for a one-letter key; its resistance to chosen collisions buys nothing
/// here, where the keys are the program's own and a store holds a handful of them.
type KeyHash = rustc_hash::FxBuildHasher;

impl SharedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding the entries of a JSON object (other values give an empty store).
    pub fn from_json(value: Value) -> Self {
        let store = Self::new();
        if let Value::Object(map) = value {
            let mut m = store.map.write();
            for (k, v) in map {
                m.insert(&k, stored(v));
            }
        }
        store
    }

    /// The value at `key`, a reference count taken under the lock, noted as read.
    fn value_noted(&self, key: &str) -> Option<Arc<dyn StoreValue>> {
        let map = self.map.read();
        let v = map.get(key).cloned()?;
        note_read(&map, key, &v);
        Some(v)
    }

    /// Sets `key` to `value`, replacing what was there.
    pub fn insert<T: Serialize + Any + Send + Sync>(&self, key: impl AsRef<str> + Into<String>, value: T) {
        let mut map = self.map.write();
        let Some(slot) = map.get_mut(key.as_ref()) else {
            map.insert_new(Arc::from(key.as_ref()), stored(value));
            note_write(&map, key.as_ref());
            return;
        };
        // An existing key is rewritten in place (no new key). A value of the same type that
        // nothing else holds (no snapshot, no reader) is overwritten where it is, without a
        // new allocation; anything else gets a new value, and holders keep the old one.
        if let Some(v) = Arc::get_mut(slot).and_then(|v| v.as_any_mut()).and_then(|v| v.downcast_mut::<T>()) {
            let old = std::mem::replace(v, value);
            note_write(&map, key.as_ref());
            drop(map);
            // The old value goes after the lock is released: its drop is the user type's.
            drop(old);
            return;
        }
        let old = std::mem::replace(slot, stored(value));
        note_write(&map, key.as_ref());
        drop(map);
        drop(old);
    }

    /// Removes `key`, returning whether it was present.
    pub fn remove(&self, key: &str) -> bool {
        let mut map = self.map.write();
        note_write(&map, key);
        let old = map.remove(key);
        drop(map);
        old.is_some()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.map.read().get(key).is_some()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.read().len() == 0
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.map.read().iter().map(|(k, _)| k.to_string()).collect();
        keys.sort();
        keys
    }

    /// Reads `key` as a `T`: a clone when it was stored as a `T`, else a conversion through
    /// JSON (so an `i64` reads as `f64`, and a JSON object as a struct). `Ok(None)` when absent.
    pub fn get<T: DeserializeOwned + Clone + 'static>(&self, key: &str) -> Result<Option<T>, StoreError> {
        if !recording_reads() {
            // A value stored as a `T` is cloned under the read lock (no reference count taken);
            // anything else is converted outside it.
            let map = self.map.read();
            let Some(v) = map.get(key) else {
                return Ok(None);
            };
            if let Some(t) = v.as_any().downcast_ref::<T>() {
                return Ok(Some(t.clone()));
            }
            let v = Arc::clone(v);
            drop(map);
            return convert(key, &*v).map(Some);
        }
        let Some(v) = self.value_noted(key) else {
            return Ok(None);
        };
        convert(key, &*v).map(Some)
    }

    /// Reads `key` as a `T`, failing with [`StoreError::Missing`] when it is absent.
    pub fn require<T: DeserializeOwned + Clone + 'static>(&self, key: &str) -> Result<T, StoreError> {
        self.get(key)?.ok_or_else(|| StoreError::Missing(key.to_owned()))
    }

    /// Reads `key` as JSON.
    pub fn get_json(&self, key: &str) -> Option<Value> {
        let v = self.value_noted(key)?;
        Some(v.to_json().unwrap_or_else(|e| unserialisable(&*v, &e)))
    }

    /// Atomically updates `key`: reads it as a `T` (or `init()` when absent), applies `f`,
    /// and stores the result, holding the store's write lock throughout so parallel writers
    /// don't lose each other's updates (`f` must not use the store). Returns what `f` returned.
    pub fn update<T, R>(
        &self,
        key: &str,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, StoreError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let mut map = self.map.write();
        let mut slot = map.get_or_insert_with(key, || stored(init()));
        if any_recording() {
            let v = Arc::clone(slot);
            note_write_slow(&map, key);
            note_read_slow(&map, key, &v);
            slot = map.get_mut(key).expect("just found");
        }
        let mut value: T = convert(key, &**slot)?;
        let out = f(&mut value);
        let old = std::mem::replace(slot, stored(value));
        drop(map);
        drop(old);
        Ok(out)
    }

    /// A point-in-time copy of the store, taken in O(keys) without serialising anything.
    pub fn snapshot(&self) -> StoreSnapshot {
        let mut entries: Vec<(Key, Arc<dyn StoreValue>)> =
            self.map.read().iter().map(|(k, v)| (Arc::clone(k), Arc::clone(v))).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        StoreSnapshot { entries }
    }

    /// The current values of `keys` (a removed key as `null`), without serialising them.
    pub(crate) fn entries<K: AsRef<str>>(&self, keys: &[K]) -> StoreSnapshot {
        let map = self.map.read();
        let entries = keys
            .iter()
            .take(MAX_RECORDED)
            .map(|k| {
                let k = k.as_ref();
                let v = map.get(k).cloned().unwrap_or_else(|| Arc::new(Value::Null));
                (map.key_of(k), v)
            })
            .collect();
        StoreSnapshot { entries }
    }

    /// [`entries`](Self::entries) of keys the caller hands over (at most [`MAX_RECORDED`]
    /// are kept): each entry holds its key as given, without a copy.
    pub(crate) fn entries_owned(&self, keys: Vec<Key>) -> StoreSnapshot {
        let map = self.map.read();
        let entries = keys
            .into_iter()
            .take(MAX_RECORDED)
            .map(|k| {
                let v = map.get(&k).cloned().unwrap_or_else(|| Arc::new(Value::Null));
                (k, v)
            })
            .collect();
        StoreSnapshot { entries }
    }

    /// The whole store as a JSON object (keys sorted).
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (k, v) in self.snapshot().entries {
            map.insert(k.to_string(), v.to_json().unwrap_or_else(|e| unserialisable(&*v, &e)));
        }
        Value::Object(map)
    }
}

fn convert<T: DeserializeOwned + Clone + 'static>(key: &str, v: &dyn StoreValue) -> Result<T, StoreError> {
    if let Some(t) = v.as_any().downcast_ref::<T>() {
        return Ok(t.clone());
    }
    let wrong = |reason: String| StoreError::WrongType {
        key: key.to_owned(),
        found: v.type_name(),
        wanted: std::any::type_name::<T>(),
        reason,
    };
    let json = match v.as_any().downcast_ref::<Value>() {
        Some(j) => j.clone(),
        None => v.to_json().map_err(|e| wrong(e.to_string()))?,
    };
    serde_json::from_value(json).map_err(|e| wrong(e.to_string()))
}

fn unserialisable(v: &dyn StoreValue, e: &serde_json::Error) -> Value {
    Value::String(format!("<unserialisable {}: {e}>", v.type_name()))
}

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.snapshot().entries.iter().map(|(k, v)| (k, v.type_name()))).finish()
    }
}

/// A point-in-time view of a [`SharedStore`], serialised only when it is needed.
#[derive(Clone, Default)]
pub struct StoreSnapshot {
    entries: Vec<(Key, Arc<dyn StoreValue>)>,
}

impl StoreSnapshot {
    /// The entries, sorted by key, as values to serialise.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &dyn erased_serde::Serialize, &'static str)> {
        self.entries.iter().map(|(k, v)| (&**k, v.value(), v.type_name()))
    }

    /// The number of keys captured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for StoreSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|(k, _)| k)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_grows_past_the_scanned_few_keeps_every_key() {
        let s = SharedStore::new();
        for i in 0..3 * SCAN_MAX as i64 {
            s.insert(format!("k{i}"), i);
            // Rewritten once in each form: the scan's slot and the hash map's.
            s.insert(format!("k{i}"), i * 10);
        }
        assert_eq!(s.len(), 3 * SCAN_MAX);
        for i in 0..3 * SCAN_MAX as i64 {
            assert_eq!(s.get::<i64>(&format!("k{i}")).unwrap(), Some(i * 10));
        }
        assert!(s.remove("k3"));
        assert!(!s.remove("k3"));
        assert!(!s.contains_key("k3"));
        s.update("k4", || 0_i64, |v| *v += 1).unwrap();
        assert_eq!(s.get::<i64>("k4").unwrap(), Some(41));
        s.update("new", || 7_i64, |v| *v += 1).unwrap();
        assert_eq!(s.get::<i64>("new").unwrap(), Some(8));
        let keys = s.keys();
        assert_eq!(keys.len(), 3 * SCAN_MAX);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys come sorted");
    }

    #[test]
    fn a_few_keys_are_removed_and_rewritten_in_place() {
        let s = SharedStore::new();
        s.insert("a", 1_i64);
        s.insert("b", 2_i64);
        s.insert("c", 3_i64);
        assert!(s.remove("a"));
        assert_eq!(s.keys(), vec!["b", "c"]);
        s.insert("a", 4_i64);
        assert_eq!(s.to_json(), serde_json::json!({"a": 4, "b": 2, "c": 3}));
        assert!(!s.is_empty());
    }

    #[test]
    fn snapshot_is_not_affected_by_later_writes() {
        let s = SharedStore::new();
        s.insert("a", 1);
        let snap = s.snapshot();
        s.insert("a", 2);
        s.insert("b", 3);
        assert_eq!(snap.to_json(), serde_json::json!({"a": 1}));
        assert_eq!(s.to_json(), serde_json::json!({"a": 2, "b": 3}));
    }

    #[test]
    fn wrong_type_is_a_clear_error() {
        let s = SharedStore::new();
        s.insert("name", "ada".to_string());
        let err = s.get::<i64>("name").unwrap_err();
        assert!(err.to_string().contains("shared['name']"), "{err}");
        assert!(matches!(s.require::<i64>("nope"), Err(StoreError::Missing(k)) if k == "nope"));
    }

    #[test]
    fn concurrent_updates_are_not_lost() {
        let s = SharedStore::new();
        std::thread::scope(|sc| {
            for _ in 0..4 {
                let s = s.clone();
                sc.spawn(move || {
                    for _ in 0..1000 {
                        s.update("n", || 0_u64, |v| *v += 1).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.get::<u64>("n").unwrap(), Some(4000));
    }

    #[tokio::test]
    async fn writes_are_recorded_per_task() {
        let s = SharedStore::new();
        let ((), keys) = record_writes(async {
            s.insert("x", 1);
            s.insert("y", 1);
            s.insert("x", 2);
        })
        .await;
        assert_eq!(keys, vec![Arc::from("x"), Arc::from("y")] as Vec<Key>);
    }
}
