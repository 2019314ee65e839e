//! Span batch buffers, handed back from the exporter to the batcher once encoded into the export
//! request. A batch is ~400 KiB: allocated fresh for every batch, each one landed on memory the
//! allocator had just returned to the kernel, and the telemetry thread paid a page fault (and the
//! zeroing of a huge page) for writing spans into it (perf: a sixth of that thread's time). A few
//! buffers going round keep their pages.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Buffers waiting to be reused; more are dropped (freed).
const KEPT: usize = 4;

/// The exporter's end: gives spent buffers back.
#[derive(Clone)]
pub struct Recycler(SyncSender<Vec<u8>>);

/// The batcher's end: takes a spent buffer when there is one.
pub struct Recycled(Receiver<Vec<u8>>);

pub fn recycling() -> (Recycler, Recycled) {
    let (tx, rx) = sync_channel(KEPT);
    (Recycler(tx), Recycled(rx))
}

impl Recycler {
    /// Never waits: with `KEPT` buffers already waiting, this one is freed.
    pub fn give_back(&self, buffer: Vec<u8>) {
        let _ = self.0.try_send(buffer);
    }
}

impl Recycled {
    /// An empty buffer with room for `room` bytes: a spent one if any came back, else a new one.
    pub fn take(&self, room: usize) -> Vec<u8> {
        match self.0.try_recv() {
            Ok(mut buffer) => {
                buffer.clear();
                buffer.reserve(room);
                buffer
            }
            Err(_) => Vec::with_capacity(room),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_and_the_pool_is_bounded() {
        let (recycler, recycled) = recycling();
        let mut spent = Vec::with_capacity(4096);
        spent.extend_from_slice(b"spans");
        let at = spent.as_ptr();
        recycler.give_back(spent);
        let again = recycled.take(100);
        assert!(again.is_empty() && again.capacity() >= 4096);
        assert_eq!(again.as_ptr(), at, "the same allocation");
        assert!(recycled.take(100).capacity() >= 100, "none waiting: a new one");
        for _ in 0..KEPT + 3 {
            recycler.give_back(vec![0; 8]);
        }
        let waiting = std::iter::from_fn(|| recycled.0.try_recv().ok()).count();
        assert_eq!(waiting, KEPT);
    }
}
