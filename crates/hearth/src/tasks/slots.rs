//! Run slots: at most N tasks hold one at a time, and waiters get theirs strictly in the order
//! they asked (a tokio `Semaphore` is fair too, but a waiter joins its queue only when first
//! polled, so spawned tasks could overtake each other).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// A fixed number of run slots with a FIFO of waiters.
#[derive(Debug)]
pub struct Slots {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free: usize,
    waiting: VecDeque<oneshot::Sender<Slot>>,
}

/// One held slot; dropping it hands the slot to the oldest live waiter, or frees it.
#[derive(Debug)]
pub struct Slot {
    slots: Option<Arc<Slots>>,
}

impl Slots {
    pub fn new(count: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: count,
                waiting: VecDeque::new(),
            }),
        })
    }

    /// A slot now, or a place in the queue: the receiver gets a slot when one frees. Dropping
    /// the receiver leaves the queue.
    pub fn take(self: &Arc<Self>) -> Result<Slot, oneshot::Receiver<Slot>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.free > 0 {
            state.free -= 1;
            return Ok(Slot {
                slots: Some(Arc::clone(self)),
            });
        }
        let (sender, receiver) = oneshot::channel();
        state.waiting.push_back(sender);
        Err(receiver)
    }

    /// Waiters still queued (those that left are skipped when a slot frees).
    pub fn waiting(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting.iter().filter(|w| !w.is_closed()).count()
    }

    fn release(self: &Arc<Self>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(waiter) = state.waiting.pop_front() {
            let slot = Slot {
                slots: Some(Arc::clone(self)),
            };
            match waiter.send(slot) {
                Ok(()) => return,
                // That waiter left; disarm the returned slot (its drop would re-enter here).
                Err(mut unsent) => drop(unsent.slots.take()),
            }
        }
        state.free += 1;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_and_leaving_waiters_are_skipped() {
        let slots = Slots::new(1);
        let first = slots.take().expect("a free slot");
        let second = slots.take().expect_err("full");
        let third = slots.take().expect_err("full");
        let fourth = slots.take().expect_err("full");
        assert_eq!(slots.waiting(), 3);
        drop(third);
        drop(first);
        let held = second.await.expect("the oldest waiter gets the slot");
        drop(held);
        let last = fourth.await.expect("the one that left is skipped");
        drop(last);
        assert!(slots.take().is_ok(), "the slot is free again");
    }
}
