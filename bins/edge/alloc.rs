//! edge's global allocator: mimalloc, entered the way Rust's own `System`
//! allocator enters malloc.
//!
//! The `mimalloc` crate's `GlobalAlloc` calls `mi_malloc_aligned` for every
//! allocation, whatever its alignment. In mimalloc 3 that call leaves its
//! fast path for any block above 1 KiB that is not a power of two (hyper's
//! 8 KiB read buffers, header tables, TLS records) and over-allocates to
//! align it: 9 such allocations per proxied request, about 3 000
//! instructions of the 51 000 a request costs (bench/instructions.sh,
//! callgrind). Plain `mi_malloc` already returns blocks aligned to 16 bytes
//! (mimalloc's `MI_MAX_ALIGN_SIZE`, `max_align_t`), so, as `System` does,
//! the aligned entry points are kept for alignments above that (or above the
//! size, where a small block might only be size-aligned).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment every `mi_malloc` block of at least this size has
/// (mimalloc's `MI_MAX_ALIGN_SIZE`): with 8-byte words mimalloc rounds every
/// size class above one word to an even number of words (`MI_ALIGN2W` in its
/// page-queue.c) and starts each page's first block 16-aligned. A block of
/// 8 bytes or less is word-aligned only, hence `align <= size` in `plain`.
const MIN_ALIGN: usize = 16;

/// mimalloc, with the plain entry points where they give the alignment asked.
pub(crate) struct MiMalloc;

/// Whether a plain block of `size` bytes has alignment `align`.
fn plain(size: usize, align: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// The `GlobalAlloc` contract is met by mimalloc's own: every pointer it
// returns is either null or a live block of at least the requested size
// with the requested alignment (plain entry points: 16 bytes, which `plain`
// checks covers the layout), and each pointer is freed or reallocated
// exactly once through mimalloc, which accepts blocks from either family.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new
        // block keeps that alignment (checked against the new size).
        unsafe {
            if plain(new_size, layout.align()) {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)] // calls the allocator directly, as the global allocator is called
    fn blocks_have_the_alignment_and_contents_asked_for() {
        let a = MiMalloc;
        for (size, align) in [
            (1, 1),
            (8, 8),
            (24, 8),
            (24, 16),
            (40, 16),
            (48, 16),
            (48, 32),
            (3000, 1),
            (8200, 8),
            (64, 64),
            (4, 16),
            (100_000, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // Many blocks of one size at once, so consecutive blocks of a
            // page are checked, not only one that happens to be aligned.
            // SAFETY: a non-zero-size layout; each block is freed once.
            unsafe {
                let live: Vec<*mut u8> = (0..64).map(|_| a.alloc(layout)).collect();
                for &p in &live {
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "block of size {size} align {align}");
                }
                for p in live {
                    a.dealloc(p, layout);
                }
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                assert!((0..size).all(|i| *p.add(i) == 0));
                p.write_bytes(0xAB, size);
                let q = a.realloc(p, layout, size * 3);
                assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                assert!((0..size).all(|i| *q.add(i) == 0xAB));
                a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
            }
        }
    }
}

/// Turns transparent huge pages off for this process and every worker it
/// starts (the flag survives fork and exec, so a worker's mimalloc starts
/// without them), before anything is allocated: the function is in
/// `.init_array`, which the loader runs before `main` and so before the
/// Rust runtime's first allocation.
///
/// mimalloc advises huge pages on its arenas (`MADV_HUGEPAGE`), and with
/// the kernel's THP setting at `madvise` (Debian's default) the first touch
/// of an arena then commits a whole 2 MiB page: an idle edge held 6 MiB of
/// huge pages in its master and 9-11 MiB in each worker. Without them, the
/// recipient walk's edge (master and 2 workers) took 11.7 MB PSS idle
/// instead of 29.7, and 20.4 MB instead of 45.3 after 5 s of load. Called
/// from `main` instead, the master kept the 4 MiB it had touched before.
#[allow(unsafe_code)]
#[used]
#[link_section = ".init_array"]
static NO_HUGE_PAGES: extern "C" fn() = no_huge_pages;

extern "C" fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches
    // no memory of this process; a kernel without it answers EINVAL, and
    // edge then runs as before.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(test)]
mod thp_tests {
    /// The constructor ran before this test: the flag is set.
    #[test]
    fn huge_pages_are_off_before_main() {
        // SAFETY: PR_GET_THP_DISABLE reads a flag; no memory is touched.
        #[allow(unsafe_code)]
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
