//! Redis' long double arithmetic for `INCRBYFLOAT` and `HINCRBYFLOAT` (csrc/long_double.c).

use bytes::Bytes;

use super::StoreError;

unsafe extern "C" {
    fn tandem_ld_add(
        current: *const u8,
        current_len: usize,
        increment: *const u8,
        increment_len: usize,
        out: *mut u8,
        out_len: usize,
    ) -> std::ffi::c_long;
    fn tandem_ld_valid(text: *const u8, len: usize) -> std::ffi::c_int;
    fn tandem_parse_double(
        text: *const u8,
        len: usize,
        strict: std::ffi::c_int,
        out: *mut f64,
    ) -> std::ffi::c_int;
}

/// `text` as Redis reads a score or `ZADD` increment (C's `strtod`, whole, no leading
/// space, not NaN, no overflow).
pub fn parse_score(text: &[u8]) -> Option<f64> {
    parse_double(text, true)
}

/// `text` as Redis reads a bound of a score range (after any `(`): whatever C's `strtod`
/// reads to the end, not NaN.
pub fn parse_bound(text: &[u8]) -> Option<f64> {
    parse_double(text, false)
}

fn parse_double(text: &[u8], strict: bool) -> Option<f64> {
    let mut value = 0.0;
    // SAFETY: the pointer and length describe `text`, which the C side only reads; it
    // writes one double to `value`.
    let ok = unsafe {
        tandem_parse_double(
            text.as_ptr(),
            text.len(),
            std::ffi::c_int::from(strict),
            &mut value,
        )
    };
    (ok == 1).then_some(value)
}

/// Whether `text` is a float Redis' `INCRBYFLOAT` accepts.
pub fn is_valid(text: &[u8]) -> bool {
    // SAFETY: the pointer and length describe `text`, which the C side only reads.
    unsafe { tandem_ld_valid(text.as_ptr(), text.len()) == 1 }
}

/// `current` (absent: 0) plus `increment`, printed as Redis prints the result.
///
/// # Errors
/// `not_float` when `current` does not parse, [`StoreError::NotFloat`] when `increment`
/// does not, [`StoreError::NanOrInfinity`] for such a sum.
pub fn add(
    current: Option<&[u8]>,
    increment: &[u8],
    not_float: StoreError,
) -> Result<Bytes, StoreError> {
    // "%.17Lf" of the largest long double has about 4,950 digits.
    let mut out = vec![0u8; 6 * 1024];
    let (current_ptr, current_len) =
        current.map_or((std::ptr::null(), 0), |c| (c.as_ptr(), c.len()));
    // SAFETY: each pointer and length describe a live buffer; the C side reads the inputs
    // and writes at most `out.len()` bytes to `out`.
    let written = unsafe {
        tandem_ld_add(
            current_ptr,
            current_len,
            increment.as_ptr(),
            increment.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    };
    match written {
        -1 => Err(not_float),
        -2 => Err(StoreError::NotFloat),
        -3 => Err(StoreError::NanOrInfinity),
        n if n < 0 => Err(StoreError::NanOrInfinity),
        n => {
            out.truncate(n as usize);
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_print_as_redis_prints_them() {
        let add = |current: Option<&str>, increment: &str| {
            add(
                current.map(str::as_bytes),
                increment.as_bytes(),
                StoreError::NotFloat,
            )
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
        };
        // Replies of redis-server 7.0 on x86-64.
        assert_eq!(add(None, "1000.1").unwrap(), "1000.09999999999999998");
        assert_eq!(add(Some("0.1"), "0.2").unwrap(), "0.3");
        assert_eq!(add(Some("10.5"), "0.1").unwrap(), "10.6");
        assert_eq!(add(None, "3.0e3").unwrap(), "3000");
        assert_eq!(add(None, "-0.0").unwrap(), "0");
        assert_eq!(add(None, "1.5e-5").unwrap(), "0.000015");
        assert_eq!(add(None, " 1"), Err(StoreError::NotFloat));
        assert_eq!(add(Some("x"), "1"), Err(StoreError::NotFloat));
        assert_eq!(
            add(Some("abc"), "1").map_err(|_| ()),
            Err(()),
            "the current value is checked"
        );
        assert!(
            add(None, "1e4000")
                .unwrap()
                .starts_with("99999999999999999999654")
        );
        assert!(!is_valid(b"nan"));
        assert!(is_valid(b"0x10"));
    }

    #[test]
    fn scores_and_bounds_parse_as_strtod_reads_them() {
        assert_eq!(parse_score(b"1.5"), Some(1.5));
        assert_eq!(parse_score(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_score(b"+inf"), Some(f64::INFINITY));
        assert_eq!(parse_score(b"0x10"), Some(16.0));
        for refused in [&b"nan"[..], b"", b" 1", b"1 ", b"1e400", b"1e-400", b"abc"] {
            assert_eq!(parse_score(refused), None, "{refused:?}");
        }
        // Range bounds are looser, as in Redis.
        assert_eq!(parse_bound(b" 1"), Some(1.0));
        assert_eq!(parse_bound(b""), Some(0.0));
        assert_eq!(parse_bound(b"1e400"), Some(f64::INFINITY));
        assert_eq!(parse_bound(b"nan"), None);
        assert_eq!(parse_bound(b"1x"), None);
    }
}
