//! Sharing the cores between handlers.
//!
//! Handlers run on the async tasks that deliver their events, so a handler
//! holds a core only while it is being polled: between epoch ticks, or until
//! it waits on I/O (an outbound request, a sleep). [`CpuSlots`] counts exactly
//! that, so a handler waiting a second for an API answer holds no CPU slot,
//! and a spinning one gives its slot back at every tick (1 ms) and queues for
//! it again behind whoever was waiting: fair, first come first served.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::sync::{AcquireError, Semaphore, SemaphorePermit};

/// A number of slots for handlers on CPU.
pub struct CpuSlots(Semaphore);

impl CpuSlots {
    pub fn new(slots: usize) -> Self {
        CpuSlots(Semaphore::new(slots))
    }

    /// Runs `future`, holding a slot only while it is polled.
    pub fn run<'a, F: Future + Send + 'a>(&'a self, future: F) -> OnCpu<'a, F> {
        OnCpu { slots: &self.0, waiting: None, future: Box::pin(future) }
    }
}

type Acquire<'a> = Pin<Box<dyn Future<Output = Result<SemaphorePermit<'a>, AcquireError>> + Send + 'a>>;

/// The future of [`CpuSlots::run`].
pub struct OnCpu<'a, F> {
    slots: &'a Semaphore,
    /// Set while queued for a slot (FIFO: a task that yielded goes behind
    /// the ones already waiting).
    waiting: Option<Acquire<'a>>,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for OnCpu<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let permit = if this.waiting.is_none()
            && let Ok(permit) = this.slots.try_acquire()
        {
            permit
        } else {
            let slots = this.slots;
            let acquire = this.waiting.get_or_insert_with(|| Box::pin(slots.acquire()));
            let permit = ready!(acquire.as_mut().poll(cx)).expect("CPU slots are never closed");
            this.waiting = None;
            permit
        };
        let output = this.future.as_mut().poll(cx);
        drop(permit);
        output
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_on_io_holds_no_slot() {
        let slots = Arc::new(CpuSlots::new(1));
        let started = Instant::now();
        let sleepers: Vec<_> = (0..8)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.run(tokio::time::sleep(Duration::from_millis(200))).await })
            })
            .collect();
        for sleeper in sleepers {
            sleeper.await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "eight sleeps shared one slot: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_slots_are_polled_at_once() {
        let slots = Arc::new(CpuSlots::new(1));
        let (polling, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let spinners: Vec<_> = (0..4)
            .map(|_| {
                let (slots, polling, most) = (slots.clone(), polling.clone(), most.clone());
                tokio::spawn(async move {
                    let spin = std::future::poll_fn(move |cx| {
                        let now = polling.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        polling.fetch_sub(1, Ordering::SeqCst);
                        cx.waker().wake_by_ref();
                        Poll::<()>::Pending
                    });
                    let _ = tokio::time::timeout(Duration::from_millis(100), slots.run(spin)).await;
                })
            })
            .collect();
        for spinner in spinners {
            spinner.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
