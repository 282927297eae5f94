//! Node actors: where a run's concurrent work executes.
//!
//! A parallel batch's items and a parallel batch flow's runs are split among a crew of node
//! actors, one per runtime worker thread (fewer when there is less work), each spawned linked
//! to the run's supervisor actor. Each node actor runs its share concurrently in its own task,
//! so async items overlap as PocketFlow's `gather` does and CPU-bound items spread over every
//! worker thread. Results come back to the visit in the supervisor over one channel.
//!
//! Supervision: the supervisor runs its run in `post_start`, so it cannot handle supervision
//! events while the run is in flight. The crew reports its own end instead: every node
//! actor's state holds a guard that reports "stopped" when the actor ends, whichever way it
//! ends (done, panicked, killed). A node actor that stops with items unfinished ends the batch
//! with an error naming the node and the first unfinished item. Because the node actors are
//! linked to the supervisor, killing the supervisor (cancelling the run) kills them too; the
//! run's trace waits for them (see [`Crew::alive`]) so that their open spans end as cancelled
//! inside the trace.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::error::Error;

/// What a run's visits need to start node actors: the supervisor they link to, and the count
/// of the run's node actors still alive.
#[derive(Clone)]
pub(crate) struct Crew {
    pub(crate) supervisor: Option<ActorCell>,
    pub(crate) alive: Arc<Alive>,
}

impl Crew {
    #[cfg(test)]
    pub(crate) fn new(supervisor: Option<ActorCell>) -> Self {
        Crew { supervisor, alive: Arc::new(Alive::default()) }
    }
}

/// How many node actors of a run are alive, and a way to wait until none is.
#[derive(Default)]
pub(crate) struct Alive {
    count: AtomicUsize,
    zero: Notify,
    /// Whether the run has started any node actor.
    linked: std::sync::atomic::AtomicBool,
}

impl Alive {
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether any node actor was started for the run (linked to its supervisor, if it has one).
    pub(crate) fn linked(&self) -> bool {
        self.linked.load(Ordering::Relaxed)
    }

    /// Waits until no node actor of the run is alive, or `limit` passes; true when none is.
    pub(crate) async fn wait_none(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.zero.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// What a node actor reports to its visit.
enum Report<T> {
    /// Tasks ended: their indices and results (sent in batches, so that a share of quick
    /// tasks wakes the visit once rather than once per task).
    Done(Vec<(usize, Result<T, Error>)>),
    /// Node actor `slot` ended (after its last `Done`, when it finished its share).
    Stopped(usize),
}

/// Held in a node actor's state (and, before it starts, in its arguments): reports the actor's
/// end and counts it out of the run's live node actors, whichever way it ends.
struct StopGuard<T: Send + 'static> {
    slot: usize,
    tx: UnboundedSender<Report<T>>,
    alive: Arc<Alive>,
}

impl<T: Send + 'static> StopGuard<T> {
    fn new(slot: usize, tx: UnboundedSender<Report<T>>, alive: Arc<Alive>) -> Self {
        alive.count.fetch_add(1, Ordering::SeqCst);
        alive.linked.store(true, Ordering::Relaxed);
        StopGuard { slot, tx, alive }
    }
}

impl<T: Send + 'static> Drop for StopGuard<T> {
    fn drop(&mut self) {
        let _ = self.tx.send(Report::Stopped(self.slot));
        if self.alive.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.alive.zero.notify_waiters();
        }
    }
}

/// Builds task `i`'s future. A node actor builds each of its tasks only when it starts it, in
/// its own task: a batch's futures are neither stored nor moved between threads in advance.
type Make<F> = Arc<dyn Fn(usize) -> F + Send + Sync>;

/// A node actor's start: its share of the work (tasks `first`, `first + step`, … below
/// `count`), how many of them may run at once, and the visit's `tracing` span.
struct Share<T: Send + 'static, F> {
    guard: StopGuard<T>,
    make: Make<F>,
    first: usize,
    step: usize,
    count: usize,
    limit: usize,
    span: tracing::Span,
}

/// Results not yet reported; reported when dropped too, so that a node actor that dies (a
/// panic, a kill) still reports what it finished, and the visit names what it did not.
struct Ready<'a, T: Send + 'static> {
    results: Vec<(usize, Result<T, Error>)>,
    tx: &'a UnboundedSender<Report<T>>,
}

impl<T: Send + 'static> Ready<'_, T> {
    fn flush(&mut self) {
        if !self.results.is_empty() {
            let _ = self.tx.send(Report::Done(std::mem::take(&mut self.results)));
        }
    }
}

impl<T: Send + 'static> Drop for Ready<'_, T> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A share as its node actor holds it once started: the builder, the indices, the limit and
/// the span.
type Started<F> = (Make<F>, std::iter::StepBy<std::ops::Range<usize>>, usize, tracing::Span);

struct NodeState<T: Send + 'static, F> {
    share: Option<Started<F>>,
    guard: StopGuard<T>,
}

/// A node actor: runs its share of a batch concurrently, reports each result, then stops.
struct NodeActor<T, F>(std::marker::PhantomData<fn() -> (T, F)>);

/// A node actor takes no messages: its share runs in `post_start`, under its kill signal.
enum NodeMsg {}

impl<T, F> Actor for NodeActor<T, F>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    type Msg = NodeMsg;
    type State = NodeState<T, F>;
    type Arguments = Share<T, F>;

    async fn pre_start(
        &self,
        _me: ActorRef<NodeMsg>,
        share: Share<T, F>,
    ) -> Result<NodeState<T, F>, ActorProcessingErr> {
        let indices = (share.first..share.count).step_by(share.step);
        Ok(NodeState { share: Some((share.make, indices, share.limit, share.span)), guard: share.guard })
    }

    async fn post_start(&self, me: ActorRef<NodeMsg>, state: &mut NodeState<T, F>) -> Result<(), ActorProcessingErr> {
        if let Some((make, indices, limit, span)) = state.share.take() {
            let tx = &state.guard.tx;
            run_share(tx, make, indices, limit).instrument(span).await;
        }
        me.stop(None);
        Ok(())
    }
}

/// Runs a node actor's share, at most `limit` tasks at once, reporting results in batches.
async fn run_share<T, F>(
    tx: &UnboundedSender<Report<T>>,
    make: Make<F>,
    pending: impl Iterator<Item = usize>,
    limit: usize,
) where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    let limit = limit.max(1);
    let mut pending = pending.peekable();
    let mut running = FuturesUnordered::new();
    // What `make` holds (the batch's items, among others) must be let go before the last
    // result is reported: the visit's `post` takes the items back by value.
    let mut make = Some(make);
    if pending.peek().is_none() {
        make = None;
    }
    let mut ready = Ready { results: Vec::with_capacity(pending.size_hint().0.min(4096)), tx };
    loop {
        // Start tasks, in order, while there is room. Each is polled once where it is made;
        // only one that has to wait goes to the running set (a task done at once, like a
        // CPU-bound item, costs no slot there and no allocation for it).
        while running.len() < limit {
            let Some(m) = &make else { break };
            let Some(i) = pending.next() else { break };
            let mut fut = Box::pin(m(i));
            if pending.peek().is_none() {
                make = None;
            }
            match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                Poll::Ready(res) => {
                    let failed = res.is_err();
                    ready.results.push((i, res));
                    if failed {
                        // The first error ends the batch: report it at once.
                        ready.flush();
                    }
                }
                // The running set polls it again, with its own waker.
                Poll::Pending => running.push(async move { (i, fut.await) }),
            }
        }
        if running.is_empty() {
            if make.is_none() {
                break;
            }
            continue;
        }
        // Collect every result ready now; report them when the next one must be waited for.
        let next = match running.next().now_or_never() {
            Some(next) => next,
            None => {
                ready.flush();
                running.next().await
            }
        };
        let Some((i, res)) = next else { continue };
        let failed = res.is_err();
        ready.results.push((i, res));
        if failed {
            ready.flush();
        }
    }
}

/// Kills the crew's node actors when the visit ends early (an error, a cancel, a timeout):
/// their tasks are dropped, so nothing keeps running after the node has failed.
struct CrewGuard {
    actors: Vec<ActorCell>,
}

impl Drop for CrewGuard {
    fn drop(&mut self) {
        for a in &self.actors {
            a.kill();
        }
    }
}

/// The number of node actors for `count` tasks at most `limit` at once: one per worker
/// thread of the runtime, never more than there is work for.
fn crew_size(count: usize, limit: usize) -> usize {
    let workers = tokio::runtime::Handle::try_current().map(|h| h.metrics().num_workers()).unwrap_or(1);
    workers.min(count).min(limit).max(1)
}

/// Runs `count` tasks (`make(i)` builds task `i`) in node actors linked to the run's
/// supervisor, at most `limit` at once, and returns their results in input order. The first
/// error ends the batch: the other tasks are cancelled, and awaited, before it returns.
pub(crate) async fn run_concurrently<T, F>(
    crew: &Crew,
    node: &str,
    what: &str,
    count: usize,
    limit: Option<usize>,
    make: impl Fn(usize) -> F + Send + Sync + 'static,
) -> Result<Vec<T>, Error>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    if count == 0 {
        return Ok(Vec::new());
    }
    let limit = limit.unwrap_or(usize::MAX).max(1);
    let k = crew_size(count, limit);
    let (tx, mut rx) = unbounded_channel::<Report<T>>();
    // Item i goes to node actor i % k: each actor's share is spread over the whole batch, so
    // with a limit the items still start roughly in input order.
    let make: Make<F> = Arc::new(make);
    let mut outstanding: Vec<usize> = (0..k).map(|slot| (slot..count).step_by(k).len()).collect();
    let mut guard = CrewGuard { actors: Vec::with_capacity(k) };
    let mut joins = Vec::with_capacity(k);
    for slot in 0..k {
        let per_actor = limit / k + usize::from(slot < limit % k);
        let share = Share {
            guard: StopGuard::new(slot, tx.clone(), Arc::clone(&crew.alive)),
            make: Arc::clone(&make),
            first: slot,
            step: k,
            count,
            limit: per_actor,
            span: tracing::Span::current(),
        };
        let spawned = match &crew.supervisor {
            Some(sup) => Actor::spawn_linked(None, NodeActor(std::marker::PhantomData), share, sup.clone()).await,
            None => Actor::spawn(None, NodeActor(std::marker::PhantomData), share).await,
        };
        match spawned {
            Ok((actor, join)) => {
                guard.actors.push(actor.get_cell());
                joins.push(join);
            }
            Err(e) => return Err(Error::Engine(format!("could not start a node actor for '{node}': {e}"))),
        }
    }
    drop(tx);
    let mut results: Vec<Option<T>> = Vec::with_capacity(count);
    results.resize_with(count, || None);
    let mut done = 0;
    let failure = loop {
        if done == count {
            break None;
        }
        match rx.recv().await {
            Some(Report::Done(batch)) => {
                let mut failed = None;
                for (i, res) in batch {
                    match res {
                        Ok(v) => {
                            results[i] = Some(v);
                            outstanding[i % k] -= 1;
                            done += 1;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    break failed;
                }
            }
            Some(Report::Stopped(slot)) if outstanding[slot] > 0 => {
                let first = (slot..count).step_by(k).find(|&i| results[i].is_none()).unwrap_or(slot);
                break Some(Error::Batch {
                    node: node.to_owned(),
                    message: format!("{what} {first}: its node actor stopped (killed or panicked) before it finished"),
                });
            }
            Some(Report::Stopped(_)) => {}
            None => {
                break Some(Error::Engine(format!("the node actors of '{node}' ended without reporting every {what}")))
            }
        }
    };
    if let Some(e) = failure {
        // Cancel the siblings and wait until they are gone, so that their spans have ended
        // (as cancelled) and none of them still runs when the error reaches the caller.
        drop(guard);
        for j in joins {
            let _ = tokio::time::timeout(Duration::from_secs(5), j).await;
        }
        return Err(e);
    }
    // Every actor stops itself after its share; nothing to kill.
    guard.actors.clear();
    Ok(results.into_iter().map(|r| r.expect("every task reported")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;

    fn boxed<T: Send + 'static>(
        f: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, Error>> {
        Box::pin(f)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_back_in_input_order() {
        let crew = Crew::new(None);
        let out = run_concurrently(&crew, "N", "item", 100, None, |i| {
            boxed(async move {
                tokio::time::sleep(Duration::from_micros((100 - i as u64) * 10)).await;
                Ok(i * 2)
            })
        })
        .await
        .unwrap();
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert!(crew.alive.wait_none(Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_run_on_more_than_one_thread() {
        let crew = Crew::new(None);
        let threads = run_concurrently(&crew, "N", "item", 64, None, |_| {
            boxed(async move {
                // Long enough that one thread cannot take every item before the other starts.
                std::thread::sleep(Duration::from_millis(2));
                Ok(std::thread::current().id())
            })
        })
        .await
        .unwrap();
        let distinct: std::collections::HashSet<_> = threads.into_iter().collect();
        assert_eq!(distinct.len(), 2, "a crew spreads over both worker threads");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_node_actor_ends_its_item_with_an_error_naming_node_and_item() {
        let crew = Crew::new(None);
        let err = run_concurrently(&crew, "Fanout", "item", 4, None, |i| {
            boxed(async move {
                if i == 3 {
                    // Not contained by a visit: it takes the node actor down.
                    panic!("escaped");
                }
                Ok(i)
            })
        })
        .await
        .unwrap_err();
        match err {
            Error::Batch { node, message } => {
                assert_eq!(node, "Fanout");
                assert!(message.starts_with("item 3:"), "{message}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    /// Stands in for a run supervisor.
    struct Sup;
    impl Actor for Sup {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_node_actor_ends_its_item_with_an_error() {
        let (sup, _join) = Actor::spawn(None, Sup, ()).await.unwrap();
        let crew = Crew::new(Some(sup.get_cell()));
        let started = Arc::new(tokio::sync::Semaphore::new(0));
        let s2 = Arc::clone(&started);
        let killer = tokio::spawn(async move {
            s2.acquire_many(2).await.unwrap().forget();
            let children = sup.get_children();
            assert_eq!(children.len(), 2, "the node actors are linked to the supervisor");
            for c in children {
                c.kill();
            }
        });
        let err = run_concurrently(&crew, "Fanout", "item", 2, None, move |i| {
            let started = Arc::clone(&started);
            boxed(async move {
                started.add_permits(1);
                std::future::pending::<()>().await;
                Ok(i)
            })
        })
        .await
        .unwrap_err();
        killer.await.unwrap();
        assert!(
            matches!(&err, Error::Batch { node, message } if node == "Fanout" && message.starts_with("item ")),
            "{err}"
        );
        assert!(crew.alive.wait_none(Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_error_cancels_the_siblings_before_returning() {
        let crew = Crew::new(None);
        let err = run_concurrently(&crew, "N", "item", 6, None, |i| {
            boxed(async move {
                if i == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    return Err(Error::Engine("boom".into()));
                }
                std::future::pending::<()>().await;
                Ok(i)
            })
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Engine(m) if m == "boom"));
        assert_eq!(crew.alive.count(), 0, "the siblings' actors are gone when the error returns");
    }
}
