//! What the fuzz targets share.
//!
//! [`Capped`]: the global allocator of every target. libFuzzer's `-malloc_limit_mb` needs a
//! sanitizer's allocator hooks, which a stable build has not, and `-rss_limit_mb` only sees
//! memory that was touched; this allocator aborts (a crash libFuzzer records) on any single
//! allocation over [`MAX_ALLOCATION`], which no input of at most 64 KiB may legitimately ask
//! for (the targets' decoding budgets are 64 MiB).

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation a target may make.
pub const MAX_ALLOCATION: usize = 256 << 20;

/// The system allocator, aborting on allocations over [`MAX_ALLOCATION`].
pub struct Capped;

fn too_big(layout: Layout) -> ! {
    // No allocation here: write the message with a fixed buffer.
    let mut msg = *b"fuzz: single allocation over 256 MiB (                    bytes)\n";
    let mut n = layout.size();
    let mut i = 56;
    loop {
        msg[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 38 {
            break;
        }
        i -= 1;
    }
    unsafe {
        libc_write(2, msg.as_ptr(), msg.len());
    }
    std::process::abort();
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_big(layout);
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_big(layout);
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            too_big(layout);
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}
