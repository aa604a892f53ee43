//! Buffers lent to MPI's nonblocking calls. MPI may read or write a buffer until its request
//! completes, so the buffer is owned here, lent out as a `'static` reference, and handed back
//! only once the request is known to be complete; a request abandoned at a deadline keeps its
//! buffers for the rest of the process (they are leaked, never freed under MPI's feet).

/// A heap buffer currently lent to MPI. Dropping it without `reclaim` leaks the buffer on
/// purpose: its request may still be live inside MPI (an abandoned collective).
pub struct Lent<T: ?Sized + 'static> {
    raw: *mut T,
}

impl<T: ?Sized + 'static> Lent<T> {
    /// Takes ownership of `buf` and returns the reference to give MPI.
    pub fn new(buf: Box<T>) -> (Self, &'static mut T) {
        let raw = Box::into_raw(buf);
        // SAFETY: `raw` comes from `Box::into_raw`: valid, aligned and not aliased. The reference
        // is the only access to it until `reclaim`, whose contract requires MPI to be done with it;
        // if `reclaim` is never called the allocation is leaked, so the reference stays valid.
        let lent = unsafe { &mut *raw };
        (Lent { raw }, lent)
    }

    /// Takes the buffer back.
    ///
    /// # Safety
    /// The request the buffer was lent to must have completed (tested or waited successfully),
    /// and the reference returned by `new` must no longer be used.
    pub unsafe fn reclaim(self) -> Box<T> {
        // SAFETY: `raw` came from `Box::into_raw` and, per this function's contract, nothing
        // else uses the allocation any more.
        unsafe { Box::from_raw(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaim_returns_what_was_written_through_the_loan() {
        let (lent, view) = Lent::new(vec![0u8; 4].into_boxed_slice());
        view[2] = 7;
        // SAFETY: no request was involved; the view is not used after this.
        let back = unsafe { lent.reclaim() };
        assert_eq!(&*back, &[0, 0, 7, 0]);
    }
}
