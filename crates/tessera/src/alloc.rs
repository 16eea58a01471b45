//! The process's allocator: mimalloc, asked the plain way whenever the
//! plain way is aligned enough.
//!
//! The `mimalloc` crate asks for every block through `mi_malloc_aligned`,
//! whose path for a block over 1 KiB whose size class is not a power of
//! two over-allocates through mimalloc's slow path: about 300 instructions
//! where `mi_malloc` takes 30, six times per proxied request (a request's
//! future, read buffers, header tables). The rule for when plain is enough
//! is std's `System` allocator's: `malloc` aligns every block for any type
//! that fits in it, up to 16 bytes.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `malloc` guarantees on the platforms we build for
/// (`max_align_t`).
const MALLOC_ALIGN: usize = 16;

pub struct Mimalloc;

/// Whether a block of `size` bytes from plain `malloc` meets `align`.
fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

type Plain = unsafe extern "C" fn(usize) -> *mut c_void;
type Aligned = unsafe extern "C" fn(usize, usize) -> *mut c_void;

/// A block for `layout` from `plain` if that is aligned enough, else from
/// `aligned`.
#[inline]
fn either(layout: Layout, plain_fn: Plain, aligned_fn: Aligned) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    // SAFETY: mimalloc's allocation functions take any size and a
    // power-of-two alignment, which a layout's is.
    unsafe {
        match plain(align, size) {
            true => plain_fn(size),
            false => aligned_fn(size, align),
        }
    }
    .cast()
}

// SAFETY: every block comes from mimalloc, aligned as the layout asks
// (plain calls only where malloc's own alignment covers it), and goes back
// to mimalloc's `mi_free`, which takes blocks of either kind.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        either(layout, mi::mi_malloc, mi::mi_malloc_aligned)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        either(layout, mi::mi_zalloc, mi::mi_zalloc_aligned)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from this allocator; the new block keeps the
        // layout's alignment, plain only where malloc's covers it.
        unsafe {
            match plain(align, new_size) {
                true => mi::mi_realloc(ptr.cast(), new_size),
                false => mi::mi_realloc_aligned(ptr.cast(), new_size, align),
            }
        }
        .cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_meet_their_alignment_on_either_path() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [align, 24, 48, 1000, 1500, 3840, 70_000] {
                let Ok(layout) = Layout::from_size_align(size.max(align), align) else {
                    continue;
                };
                // SAFETY: a non-zero layout; each block freed once, by the
                // allocator that gave it.
                unsafe {
                    let block = Mimalloc.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "{layout:?}");
                    let grown = Mimalloc.realloc(block, layout, layout.size() * 3);
                    assert_eq!(grown as usize % align, 0, "{layout:?} grown");
                    Mimalloc.dealloc(grown, layout);
                    let zeroed = Mimalloc.alloc_zeroed(layout);
                    assert!(
                        std::slice::from_raw_parts(zeroed, layout.size())
                            .iter()
                            .all(|&b| b == 0)
                    );
                    Mimalloc.dealloc(zeroed, layout);
                }
            }
        }
    }
}
