//! Admission: when an event's handler may start an instance, and how running
//! instances share the cores. Four limits, kept in one place:
//!
//! - `max_concurrency`: instances of one handler alive at once (running or
//!   waiting on I/O), which bounds its memory;
//! - `queue`: events waiting for one of those; when it is full the event is
//!   retried (503 + Retry-After), never held in unbounded memory. A delivery
//!   enters through its own [`DeliveryGate`], and its events never count
//!   against it, only other deliveries' do: its events are in memory already,
//!   so a delivery of 5,000 events runs in one attempt (in arrival order,
//!   like every other event), and the queue bounds what concurrent
//!   deliveries add, not the size of one;
//! - the pool: instances alive at once, all handlers together, which is what
//!   the pooling allocator has room for ([`crate::sandbox::MAX_INSTANCES`]);
//! - the CPU share: instances of one handler being *polled* at once.
//!
//! The async runtime has tokio's default of one worker thread per core, and
//! the CPU share is counted in cores. (Until 2026-12-01 it had two per core,
//! with the share counted in those threads: when a delivery's calls all ran
//! on its own task, a permit handed back waited for that task to wake and
//! left a core idle meanwhile. Since each call got a task of its own, the
//! second thread per core only added context switches: side by side, one
//! per core gave 4-15 % more events/s at batch 1 with 8-16 % less CPU per
//! event, 2-6 % more at batch 100, the same at batch 10, and a replay of
//! 200,000 events took 4.2 s instead of 4.7-4.9 s.)
//!
//! Each admitted call runs on an async task of its own (see
//! `Pipeline::admitted`), so a handler holds a core only while it is
//! polled: between epoch ticks, or until it waits on I/O (an outbound
//! request, a sleep). The CPU share counts exactly
//! that, so a handler waiting a second for an API answer holds no CPU slot,
//! and a spinning one gives its slot back at every tick (1 ms) and queues for
//! it again behind whoever was waiting: fair, first come first served. With
//! several handlers, one handler's share is every core but one, so no
//! handler, however busy or hostile, can take every core from the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// One handler's gates, in the order an event passes them.
pub struct Admission {
    /// `max_concurrency` permits.
    slots: Arc<Semaphore>,
    /// Events waiting for a permit, at most `queue`.
    waiting: AtomicUsize,
    queue: usize,
    /// Shared by every handler: the pooling allocator's instances.
    pool: Arc<Semaphore>,
    /// Instances of this handler on CPU at once.
    on_cpu: Arc<Semaphore>,
}

/// The event cannot even wait: the handler's queue is full.
#[derive(Debug)]
pub struct QueueFull {
    pub queue: usize,
}

impl QueueFull {
    /// How long the sender should wait before trying again.
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);
}

/// The right to run one instance; its limits are given back when dropped
/// (also when the delivery is cancelled). Owned, so that the call it admits
/// can run on a task of its own and keep it until that task ends.
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    _instance: OwnedSemaphorePermit,
    on_cpu: Arc<Semaphore>,
}

impl Admission {
    pub fn new(max_concurrency: usize, queue: usize, cpu_share: usize, pool: Arc<Semaphore>) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            waiting: AtomicUsize::new(0),
            queue,
            pool,
            on_cpu: Arc::new(Semaphore::new(cpu_share)),
        }
    }

    /// The CPU share of each of `handlers` handlers on this machine, in
    /// cores: every one, or every one but one when other handlers need a
    /// core too.
    pub fn cpu_share(handlers: usize) -> usize {
        if handlers > 1 { cores().saturating_sub(1).max(1) } else { cores() }
    }

    /// Waits for one of the handler's instances (in its bounded queue), then
    /// for room in the pool.
    pub async fn admit(&self) -> Result<Admitted, QueueFull> {
        self.admit_beside(None).await
    }

    /// [`Admission::admit`], where `own` counts the places in the queue the
    /// caller's delivery holds, which do not count against it.
    async fn admit_beside(&self, own: Option<&AtomicUsize>) -> Result<Admitted, QueueFull> {
        let never_closed = "admission semaphores are never closed";
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let _place = QueuePlace::take(&self.waiting, own, self.queue).ok_or(QueueFull { queue: self.queue })?;
                self.slots.clone().acquire_owned().await.expect(never_closed)
            }
        };
        let instance = self.pool.clone().acquire_owned().await.expect(never_closed);
        Ok(Admitted { _slot: slot, _instance: instance, on_cpu: self.on_cpu.clone() })
    }

    /// The gate one delivery's events (or batch calls) for this handler
    /// pass instead of [`Admission::admit`].
    pub fn for_delivery(&self) -> DeliveryGate<'_> {
        DeliveryGate { admission: self, own: AtomicUsize::new(0) }
    }
}

/// One delivery's way to a handler: its events wait in the handler's queue
/// like any other (first come, first served), but the places they hold do
/// not count against the delivery itself, only against other deliveries. A
/// delivery is never refused for its own size (its events are in memory
/// already), and the queue still bounds what other deliveries add meanwhile.
pub struct DeliveryGate<'a> {
    admission: &'a Admission,
    /// Places in the queue this delivery's events hold now.
    own: AtomicUsize,
}

impl DeliveryGate<'_> {
    /// As [`Admission::admit`], the delivery's own waiting events aside.
    pub async fn admit(&self) -> Result<Admitted, QueueFull> {
        self.admission.admit_beside(Some(&self.own)).await
    }
}

impl Admitted {
    /// Runs `future` (the handler's call), holding a CPU slot only while it
    /// is polled, and the admission until it is done.
    pub fn run<F: Future + Send>(self, future: F) -> OnCpu<F> {
        OnCpu { slots: self.on_cpu.clone(), waiting: None, _admitted: self, future }
    }
}

/// A place in a handler's queue, given back when dropped.
struct QueuePlace<'a> {
    waiting: &'a AtomicUsize,
    /// The delivery's own count, when it came through a [`DeliveryGate`].
    own: Option<&'a AtomicUsize>,
}

impl<'a> QueuePlace<'a> {
    /// A place, if fewer than `queue` are held by others than `own`'s delivery.
    fn take(waiting: &'a AtomicUsize, own: Option<&'a AtomicUsize>, queue: usize) -> Option<Self> {
        let mine = own.map_or(0, |own| own.load(Ordering::Acquire));
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n - mine.min(n) < queue).then_some(n + 1))
            .ok()?;
        if let Some(own) = own {
            own.fetch_add(1, Ordering::AcqRel);
        }
        Some(QueuePlace { waiting, own })
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        if let Some(own) = self.own {
            own.fetch_sub(1, Ordering::AcqRel);
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`Admitted::run`]. The handler's call is held in place,
    /// not boxed: it is large, and this runs once per event. `waiting` is set
    /// while queued for a slot (FIFO: a task that yielded goes behind the
    /// ones already waiting).
    pub struct OnCpu<F> {
        // First: fields drop in order, so what the call holds (the in-flight
        // count) is gone before the admission is given back.
        #[pin]
        future: F,
        slots: Arc<Semaphore>,
        waiting: Option<Acquire>,
        _admitted: Admitted,
    }
}

impl<F: Future> Future for OnCpu<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.waiting.is_none()
            && let Ok(permit) = this.slots.try_acquire()
        {
            let output = this.future.poll(cx);
            drop(permit);
            return output;
        }
        let slots = &*this.slots;
        let acquire = this.waiting.get_or_insert_with(|| Box::pin(slots.clone().acquire_owned()));
        let permit = ready!(acquire.as_mut().poll(cx)).expect("CPU slots are never closed");
        *this.waiting = None;
        let output = this.future.poll(cx);
        drop(permit);
        output
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    fn admission(max_concurrency: usize, queue: usize, cpu_share: usize, pool: &Arc<Semaphore>) -> Arc<Admission> {
        Arc::new(Admission::new(max_concurrency, queue, cpu_share, pool.clone()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_on_io_holds_no_cpu_slot() {
        let admission = admission(8, 0, 1, &Arc::new(Semaphore::new(8)));
        let started = Instant::now();
        let sleepers: Vec<_> = (0..8)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move {
                    let admitted = admission.admit().await.unwrap();
                    admitted.run(tokio::time::sleep(Duration::from_millis(200))).await
                })
            })
            .collect();
        for sleeper in sleepers {
            sleeper.await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "eight sleeps shared one CPU slot: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_cpu_share_is_polled_at_once() {
        let admission = admission(4, 0, 1, &Arc::new(Semaphore::new(4)));
        let (polling, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let spinners: Vec<_> = (0..4)
            .map(|_| {
                let (admission, polling, most) = (admission.clone(), polling.clone(), most.clone());
                tokio::spawn(async move {
                    let spin = std::future::poll_fn(move |cx| {
                        let now = polling.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        polling.fetch_sub(1, Ordering::SeqCst);
                        cx.waker().wake_by_ref();
                        Poll::<()>::Pending
                    });
                    let admitted = admission.admit().await.unwrap();
                    let _ = tokio::time::timeout(Duration::from_millis(100), admitted.run(spin)).await;
                })
            })
            .collect();
        for spinner in spinners {
            spinner.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn beyond_max_concurrency_events_queue_and_beyond_the_queue_they_are_refused() {
        let admission = admission(1, 1, 1, &Arc::new(Semaphore::new(8)));
        let running = admission.admit().await.unwrap();
        let queued = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(admission.admit().await, Err(QueueFull { queue: 1 })), "the queue of one is taken");
        drop(running);
        assert!(queued.await.unwrap(), "the queued event runs once the instance is free");
        assert!(admission.admit().await.is_ok(), "and the queue place is given back");
    }

    #[tokio::test]
    async fn a_delivery_larger_than_the_queue_runs_whole_while_others_meet_the_queue() {
        let admission = admission(2, 1, 1, &Arc::new(Semaphore::new(8)));
        let gate = admission.for_delivery();
        let (finish, admitted) = (Semaphore::new(0), AtomicUsize::new(0));
        // 50 events of one delivery, far more than max_concurrency + queue.
        let events = (0..50).map(|_| async {
            let run = gate.admit().await.expect("a delivery's own events never overflow the queue");
            admitted.fetch_add(1, Ordering::SeqCst);
            run.run(finish.acquire()).await.unwrap().forget();
        });
        let others = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(admitted.load(Ordering::SeqCst), 2, "two run, 48 wait in the queue of 1");
            let refused = matches!(admission.admit().await, Err(QueueFull { queue: 1 }));
            finish.add_permits(50);
            refused
        };
        let (_, refused) = tokio::join!(futures::future::join_all(events), others);
        assert_eq!(admitted.load(Ordering::SeqCst), 50);
        assert!(refused, "an event from another delivery meets the full queue meanwhile");
        assert!(admission.admit().await.is_ok(), "and every place is given back");
    }

    #[tokio::test]
    async fn the_pool_is_shared_by_every_handler() {
        let pool = Arc::new(Semaphore::new(1));
        let (first, second) = (admission(4, 4, 1, &pool), admission(4, 4, 1, &pool));
        let held = first.admit().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), second.admit()).await;
        assert!(waiting.is_err(), "the other handler waits for room in the pool");
        drop(held);
        assert!(second.admit().await.is_ok());
    }
}
