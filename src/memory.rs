//! Process-wide allocator settings (glibc only; elsewhere these do nothing).
//!
//! glibc serves blocks above a threshold with `mmap`, but raises that threshold to the
//! size of any such block freed (up to 32 MB). After the model loads, KV-cache buffers,
//! activations and logits then come from heap arenas, where freed ones linger as
//! fragmentation: serving 8 sequences of 1k tokens while the learner prepared peaked
//! about 70 MB higher. While serving, [`tune_for_serving`] fixes the threshold at
//! 64 KiB, so large blocks are unmapped when freed.
//!
//! Training allocates and frees megabytes per op; mapping each costs system time (a
//! step took about 1.5 times as long). A [`BulkWork`] guard, held by the learner for a
//! run, raises the threshold for its duration, then restores it and returns the
//! freed heap to the OS. `MALLOC_MMAP_THRESHOLD_` in the environment disables both.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Threshold while only serving.
const SERVING_THRESHOLD: i32 = 64 * 1024;
/// Threshold while some bulk work runs.
const BULK_THRESHOLD: i32 = 32 << 20;

static BULK: AtomicUsize = AtomicUsize::new(0);

fn overridden() -> bool {
    std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_threshold(bytes: i32) {
    // SAFETY: mallopt only changes allocator parameters; glibc serialises it with the
    // allocator's own lock, and it affects later allocations only.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) } != 1 {
        tracing::debug!("mallopt(M_MMAP_THRESHOLD, {bytes}) was refused");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_threshold(_bytes: i32) {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory back to the OS.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Sets the serving threshold (called once when the server starts).
pub fn tune_for_serving() {
    if !overridden() && BULK.load(Ordering::SeqCst) == 0 {
        set_threshold(SERVING_THRESHOLD);
    }
}

/// Raises the threshold while it lives (nested guards count); the last one dropped
/// restores the serving threshold and trims the heap.
#[must_use = "the setting lasts while the guard lives"]
pub struct BulkWork(());

impl BulkWork {
    /// Starts bulk work.
    pub fn begin() -> Self {
        if BULK.fetch_add(1, Ordering::SeqCst) == 0 && !overridden() {
            set_threshold(BULK_THRESHOLD);
        }
        Self(())
    }
}

impl Drop for BulkWork {
    fn drop(&mut self) {
        if BULK.fetch_sub(1, Ordering::SeqCst) == 1 && !overridden() {
            set_threshold(SERVING_THRESHOLD);
            trim();
        }
    }
}
