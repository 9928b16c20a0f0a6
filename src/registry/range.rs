//! Single-range `Range: bytes=...` parsing (RFC 9110 §14).

/// What to do with a `Range` header for a body of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// Serve the whole body (no header, or a header we may ignore: invalid
    /// syntax, several ranges, or a unit other than bytes).
    Full,
    /// Serve bytes `start..end` (end exclusive) with 206.
    Partial {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// 416: the range starts past the end.
    Unsatisfiable,
}

/// Decides how to answer `header` for a body of `size` bytes.
pub fn decide(header: Option<&str>, size: u64) -> RangeDecision {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (parse(a), parse(b)) {
        (Some(start), end) if b.is_empty() || end.is_some() => {
            let last = end.unwrap_or(u64::MAX);
            if last < start {
                return RangeDecision::Full;
            }
            if start >= size {
                return RangeDecision::Unsatisfiable;
            }
            RangeDecision::Partial {
                start,
                end: last.saturating_add(1).min(size),
            }
        }
        (None, Some(suffix)) if a.is_empty() => {
            if suffix == 0 || size == 0 {
                return RangeDecision::Unsatisfiable;
            }
            RangeDecision::Partial {
                start: size.saturating_sub(suffix),
                end: size,
            }
        }
        _ => RangeDecision::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeDecision::*;
    use super::*;

    #[test]
    fn table() {
        let cases = [
            (None, 10, Full),
            (Some("bytes=0-4"), 10, Partial { start: 0, end: 5 }),
            (Some("bytes=5-"), 10, Partial { start: 5, end: 10 }),
            (Some("bytes=5-100"), 10, Partial { start: 5, end: 10 }),
            (Some("bytes=-3"), 10, Partial { start: 7, end: 10 }),
            (Some("bytes=-30"), 10, Partial { start: 0, end: 10 }),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=4-2"), 10, Full),
            (Some("bytes=0-1,3-4"), 10, Full),
            (Some("items=0-1"), 10, Full),
            (Some("bytes=x-1"), 10, Full),
            (Some("bytes=-"), 10, Full),
            (Some("bytes=18446744073709551615-"), 10, Unsatisfiable),
            (
                Some("bytes=0-18446744073709551615"),
                10,
                Partial { start: 0, end: 10 },
            ),
        ];
        for (h, size, want) in cases {
            assert_eq!(decide(h, size), want, "{h:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn in_bounds(h in "\\PC{0,40}", size in 0u64..1000) {
            if let Partial { start, end } = decide(Some(&h), size) {
                proptest::prop_assert!(start < end && end <= size);
            }
        }
    }
}
