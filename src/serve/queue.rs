//! The bounded queue between a source and its inference workers. A full queue applies
//! the source's drop policy and hands back what it dropped, so the caller can count it
//! (and answer an upload that will never be processed).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::config::DropPolicy;

pub enum Pushed<T> {
    Queued,
    /// Queued, after dropping the oldest waiting item.
    DroppedOldest(T),
    /// Not queued: the queue was full (drop-newest).
    Refused(T),
    /// Not queued: the queue is closed (the daemon is shutting down).
    Closed(T),
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

pub struct BoundedQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    policy: DropPolicy,
    not_empty: Condvar,
    not_full: Condvar,
}

impl<T> BoundedQueue<T> {
    pub fn new(capacity: usize, policy: DropPolicy) -> Self {
        BoundedQueue {
            state: Mutex::new(State { items: VecDeque::with_capacity(capacity), closed: false }),
            capacity: capacity.max(1),
            policy,
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A worker that panicked mid-push leaves a consistent VecDeque; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, item: T) -> Pushed<T> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Pushed::Closed(item);
            }
            if state.items.len() < self.capacity {
                state.items.push_back(item);
                self.not_empty.notify_one();
                return Pushed::Queued;
            }
            match self.policy {
                DropPolicy::DropOldest => {
                    let dropped = state.items.pop_front();
                    state.items.push_back(item);
                    self.not_empty.notify_one();
                    return match dropped {
                        Some(d) => Pushed::DroppedOldest(d),
                        None => Pushed::Queued,
                    };
                }
                DropPolicy::DropNewest => return Pushed::Refused(item),
                DropPolicy::Block => {
                    state = self.not_full.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// The next item; `None` once the queue is closed and drained, or after `timeout`.
    pub fn pop(&self, timeout: Duration) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                self.not_full.notify_one();
                return Some(item);
            }
            if state.closed {
                return None;
            }
            let (s, result) = self.not_empty.wait_timeout(state, timeout).unwrap_or_else(|p| p.into_inner());
            state = s;
            if result.timed_out() && state.items.is_empty() {
                return None;
            }
        }
    }

    /// No more pushes; workers drain what is queued, then see `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// What is still queued, taken out: at shutdown, what no worker is left to process.
    pub fn drain(&self) -> Vec<T> {
        self.lock().items.drain(..).collect()
    }

    pub fn is_closed_and_empty(&self) -> bool {
        let s = self.lock();
        s.closed && s.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_and_returns_the_dropped() {
        let q = BoundedQueue::new(2, DropPolicy::DropOldest);
        assert!(matches!(q.push(1), Pushed::Queued));
        assert!(matches!(q.push(2), Pushed::Queued));
        assert!(matches!(q.push(3), Pushed::DroppedOldest(1)));
        assert_eq!(q.pop(Duration::ZERO), Some(2));
        assert_eq!(q.pop(Duration::ZERO), Some(3));
        assert_eq!(q.pop(Duration::from_millis(1)), None);
    }

    #[test]
    fn drop_newest_refuses_when_full() {
        let q = BoundedQueue::new(1, DropPolicy::DropNewest);
        assert!(matches!(q.push(1), Pushed::Queued));
        assert!(matches!(q.push(2), Pushed::Refused(2)));
        assert_eq!(q.pop(Duration::ZERO), Some(1));
    }

    #[test]
    fn block_waits_for_room_and_close_drains() {
        let q = std::sync::Arc::new(BoundedQueue::new(1, DropPolicy::Block));
        q.push(1);
        let q2 = q.clone();
        let pusher = std::thread::spawn(move || matches!(q2.push(2), Pushed::Queued));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.len(), 1, "the second push must wait");
        assert_eq!(q.pop(Duration::from_secs(1)), Some(1));
        assert!(pusher.join().unwrap());
        q.close();
        assert!(matches!(q.push(3), Pushed::Closed(3)));
        assert_eq!(q.pop(Duration::from_secs(1)), Some(2));
        assert_eq!(q.pop(Duration::from_secs(1)), None);
        assert!(q.is_closed_and_empty());
    }

    #[test]
    fn close_releases_a_push_blocked_on_a_full_queue_nobody_reads() {
        let q = std::sync::Arc::new(BoundedQueue::new(1, DropPolicy::Block));
        q.push(1);
        let q2 = q.clone();
        let pusher = std::thread::spawn(move || q2.push(2));
        std::thread::sleep(Duration::from_millis(50));
        q.close();
        assert!(matches!(pusher.join().unwrap(), Pushed::Closed(2)));
        assert_eq!(q.drain(), [1]);
        assert!(q.is_closed_and_empty());
    }
}
