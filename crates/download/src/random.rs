//! Random bytes for CSP nonces, CSRF secrets, trace ids and the local
//! document API's signing key.
//!
//! They come from the operating system's generator or not at all: when
//! `getrandom` fails, its error goes to the caller as it is, and the request
//! (or the start) fails. No fallback: anything else a process can reach (its
//! hash keys, a counter, the clock) is guessable, and a guessable CSRF secret,
//! nonce or signing key is worse than an error page.

/// Why no random bytes: the OS generator's error, untouched.
pub(crate) type Error = getrandom::Error;

/// `N` bytes from the operating system's generator.
pub(crate) fn bytes<const N: usize>() -> Result<[u8; N], Error> {
    fill_with(os_fill)
}

/// Lower-case hex of `N` random bytes.
pub(crate) fn hex<const N: usize>() -> Result<String, Error> {
    bytes::<N>().map(|b| to_hex(&b))
}

/// `N` bytes filled by `fill`, or its error: never a buffer `fill` did not
/// fill.
fn fill_with<const N: usize>(
    fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
) -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    fill(&mut buf)?;
    Ok(buf)
}

#[cfg(not(test))]
fn os_fill(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::getrandom(buf)
}

/// In this crate's unit tests, [`tests::failing`] and [`tests::fail_after`]
/// make the generator fail (as the kernel would, `EIO`) on this thread.
#[cfg(test)]
fn os_fill(buf: &mut [u8]) -> Result<(), Error> {
    let fail = tests::FAIL_AFTER.with(|left| match left.get() {
        Some(0) => true,
        Some(n) => {
            left.set(Some(n - 1));
            false
        }
        None => false,
    });
    if fail {
        return Err(tests::eio());
    }
    getrandom::getrandom(buf)
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;
    use std::num::NonZeroU32;

    use super::Error;

    thread_local! {
        /// How many more fills succeed on this thread before they all fail;
        /// `None`: the OS generator, untouched.
        pub(crate) static FAIL_AFTER: Cell<Option<u32>> = const { Cell::new(None) };
    }

    /// `EIO`, as `getrandom` reports the kernel's error.
    pub(crate) fn eio() -> Error {
        Error::from(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN))
    }

    /// From now on this thread's generator gives `successes` more fills, then
    /// fails; `None` restores it.
    pub(crate) fn fail_after(successes: Option<u32>) {
        FAIL_AFTER.with(|c| c.set(successes));
    }

    /// Runs `f` with the generator failing on this thread.
    pub(crate) fn failing<T>(f: impl FnOnce() -> T) -> T {
        fail_after(Some(0));
        let out = f();
        fail_after(None);
        out
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(super::bytes::<16>().unwrap(), super::bytes::<16>().unwrap());
        assert_eq!(super::hex::<8>().unwrap().len(), 16);
    }

    #[test]
    fn a_failing_source_gives_its_error_never_bytes() {
        let mut called = false;
        let result = super::fill_with::<32>(|buf| {
            called = true;
            buf[0] = 1; // half-filled, then failed: still no bytes
            Err(eio())
        });
        assert!(called);
        assert_eq!(result.unwrap_err().raw_os_error(), Some(5));
        assert_eq!(failing(super::bytes::<18>).unwrap_err(), eio());
        assert!(failing(super::hex::<8>).is_err());
        fail_after(Some(1));
        assert!(super::bytes::<8>().is_ok());
        assert!(super::bytes::<8>().is_err());
        fail_after(None);
        // Back to the OS generator once the failure ends.
        assert!(super::bytes::<18>().is_ok());
    }
}
