//! The shared store: one concurrent map every node of a run reads and writes.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;
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

tokio::task_local! {
    /// Keys written while a traced `post` runs on this task, so its span can list them.
    static WRITES: RefCell<Vec<String>>;
}

/// Runs `fut` recording the keys it writes to any store; returns them with its output.
pub(crate) async fn record_writes<F: std::future::Future>(fut: F) -> (F::Output, Vec<String>) {
    WRITES
        .scope(RefCell::new(Vec::new()), async move {
            let out = fut.await;
            let keys = WRITES.with(|w| std::mem::take(&mut *w.borrow_mut()));
            (out, keys)
        })
        .await
}

tokio::task_local! {
    /// Entries read while a traced `prep` runs on this task: the key and the value as read
    /// (a reference count, serialised later, off the run's path).
    static READS: RefCell<Vec<(String, Arc<dyn StoreValue>)>>;
}

/// Runs `fut` recording the entries it reads from any store; returns them with its output.
pub(crate) async fn record_reads<F: std::future::Future>(fut: F) -> (F::Output, StoreSnapshot) {
    READS
        .scope(RefCell::new(Vec::new()), async move {
            let out = fut.await;
            let entries = READS.with(|r| std::mem::take(&mut *r.borrow_mut()));
            (out, StoreSnapshot { entries })
        })
        .await
}

/// At most this many entries are kept per phase: a summary, not a copy of the store.
const MAX_RECORDED: usize = 64;

fn note_read(key: &str, v: &Arc<dyn StoreValue>) {
    let _ = READS.try_with(|r| {
        let mut r = r.borrow_mut();
        if r.len() < MAX_RECORDED && !r.iter().any(|(k, _)| k == key) {
            r.push((key.to_owned(), Arc::clone(v)));
        }
    });
}

fn note_write(key: &str) {
    let _ = WRITES.try_with(|w| {
        let mut w = w.borrow_mut();
        if !w.iter().any(|k| k == key) {
            w.push(key.to_owned());
        }
    });
}

/// The shared store of a run: a concurrent string-keyed map of serialisable values.
///
/// Cloning a `SharedStore` gives another handle to the **same** map, as PocketFlow passes one
/// dict by reference: writes made by a run are visible to the caller afterwards. It is safe to
/// write from parallel branches (each key is locked on its own), and [`snapshot`](Self::snapshot)
/// is cheap because values are reference-counted and serialised only when a trace is exported.
///
/// ```
/// use flowtrace::SharedStore;
/// let shared = SharedStore::new();
/// shared.insert("current", 5_i64);
/// shared.update("current", || 0_i64, |v| *v += 3).unwrap();
/// assert_eq!(shared.get::<i64>("current").unwrap(), Some(8));
/// assert_eq!(shared.get::<f64>("current").unwrap(), Some(8.0)); // converts through JSON
/// ```
#[derive(Clone)]
pub struct SharedStore {
    map: Arc<DashMap<String, Arc<dyn StoreValue>>>,
}

impl Default for SharedStore {
    fn default() -> Self {
        // Four shards rather than DashMap's default (four per core, each cache-padded): a
        // store is made per run, and the default's 1 KiB+ shard table was a measurable part
        // of a short run's cost, for no gain at the handful of writers a run has.
        SharedStore { map: Arc::new(DashMap::with_shard_amount(4)) }
    }
}

impl SharedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding the entries of a JSON object (other values give an empty store).
    pub fn from_json(value: Value) -> Self {
        let store = Self::new();
        if let Value::Object(map) = value {
            for (k, v) in map {
                store.map.insert(k, stored(v));
            }
        }
        store
    }

    /// Sets `key` to `value`, replacing what was there.
    pub fn insert<T: Serialize + Any + Send + Sync>(&self, key: impl Into<String>, value: T) {
        let key = key.into();
        note_write(&key);
        self.map.insert(key, stored(value));
    }

    /// Removes `key`, returning whether it was present.
    pub fn remove(&self, key: &str) -> bool {
        note_write(key);
        self.map.remove(key).is_some()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.map.iter().map(|e| e.key().clone()).collect();
        keys.sort();
        keys
    }

    /// Reads `key` as a `T`: a clone when it was stored as a `T`, else a conversion through
    /// JSON (so an `i64` reads as `f64`, and a JSON object as a struct). `Ok(None)` when absent.
    pub fn get<T: DeserializeOwned + Clone + 'static>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let Some(v) = self.map.get(key).map(|e| Arc::clone(e.value())) else {
            return Ok(None);
        };
        note_read(key, &v);
        convert(key, &*v).map(Some)
    }

    /// Reads `key` as a `T`, failing with [`StoreError::Missing`] when it is absent.
    pub fn require<T: DeserializeOwned + Clone + 'static>(&self, key: &str) -> Result<T, StoreError> {
        self.get(key)?.ok_or_else(|| StoreError::Missing(key.to_owned()))
    }

    /// Reads `key` as JSON.
    pub fn get_json(&self, key: &str) -> Option<Value> {
        let v = self.map.get(key).map(|e| Arc::clone(e.value()))?;
        note_read(key, &v);
        Some(v.to_json().unwrap_or_else(|e| unserialisable(&*v, &e)))
    }

    /// Atomically updates `key`: reads it as a `T` (or `init()` when absent), applies `f`,
    /// and stores the result, holding the key's lock throughout so parallel writers don't
    /// lose each other's updates. Returns what `f` returned.
    pub fn update<T, R>(
        &self,
        key: &str,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, StoreError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        note_write(key);
        let mut entry = self.map.entry(key.to_owned()).or_insert_with(|| stored(init()));
        note_read(key, entry.value());
        let mut value: T = convert(key, &**entry.value())?;
        let out = f(&mut value);
        *entry.value_mut() = stored(value);
        Ok(out)
    }

    /// A point-in-time copy of the store, taken in O(keys) without serialising anything.
    pub fn snapshot(&self) -> StoreSnapshot {
        let mut entries: Vec<(String, Arc<dyn StoreValue>)> =
            self.map.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        StoreSnapshot { entries }
    }

    /// The current values of `keys` (a removed key as `null`), without serialising them.
    pub(crate) fn entries(&self, keys: &[String]) -> StoreSnapshot {
        let entries = keys
            .iter()
            .take(MAX_RECORDED)
            .map(|k| {
                let v = self.map.get(k).map(|e| Arc::clone(e.value())).unwrap_or_else(|| Arc::new(Value::Null));
                (k.clone(), v)
            })
            .collect();
        StoreSnapshot { entries }
    }

    /// The whole store as a JSON object (keys sorted).
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (k, v) in self.snapshot().entries {
            map.insert(k, v.to_json().unwrap_or_else(|e| unserialisable(&*v, &e)));
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
    entries: Vec<(String, Arc<dyn StoreValue>)>,
}

impl StoreSnapshot {
    /// The entries, sorted by key, as values to serialise.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &dyn erased_serde::Serialize, &'static str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.value(), v.type_name()))
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
        assert_eq!(keys, vec!["x", "y"]);
    }
}
