//! Per-thread scratch buffers for the convolution kernels: reused across
//! calls, so large patch and transform matrices cost no page faults and no
//! zeroing.

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer, or on a fresh one when the
/// buffer is in use further up this thread's stack (rayon may run another
/// task on a thread that waits inside a parallel loop).
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut Vec::new()),
    })
}
