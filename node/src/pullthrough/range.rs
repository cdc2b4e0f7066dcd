//! Single byte ranges (`Range: bytes=..`) for blob requests.

use std::ops::Range;

/// A parsed single range, before the blob's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=first-last` (inclusive).
    FromTo(u64, u64),
    /// `bytes=first-`.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// A `Range` header Shoal will not serve: malformed, multi-range, or outside the blob. Answered
/// with `416` and `Content-Range: bytes */<len>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range not satisfiable")]
pub struct Unsatisfiable;

impl RangeSpec {
    /// Parses a `Range` header value. Only one `bytes` range is supported.
    pub fn parse(value: &str) -> Result<Self, Unsatisfiable> {
        if value.len() > 100 {
            return Err(Unsatisfiable);
        }
        let spec = value
            .trim()
            .strip_prefix("bytes=")
            .ok_or(Unsatisfiable)?
            .trim();
        if spec.contains(',') {
            return Err(Unsatisfiable);
        }
        let (first, last) = spec.split_once('-').ok_or(Unsatisfiable)?;
        let number = |s: &str| -> Result<u64, Unsatisfiable> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Unsatisfiable);
            }
            s.parse().map_err(|_| Unsatisfiable)
        };
        match (first.trim(), last.trim()) {
            ("", suffix) => Ok(Self::Suffix(number(suffix)?)),
            (first, "") => Ok(Self::From(number(first)?)),
            (first, last) => {
                let (first, last) = (number(first)?, number(last)?);
                if last < first {
                    return Err(Unsatisfiable);
                }
                Ok(Self::FromTo(first, last))
            }
        }
    }

    /// The half-open byte range this selects in a blob of `len` bytes.
    pub fn resolve(self, len: u64) -> Result<Range<u64>, Unsatisfiable> {
        let range = match self {
            Self::FromTo(first, last) => first..last.saturating_add(1).min(len),
            Self::From(first) => first..len,
            Self::Suffix(0) => return Err(Unsatisfiable),
            Self::Suffix(n) => len.saturating_sub(n)..len,
        };
        if range.start >= len || range.is_empty() {
            return Err(Unsatisfiable);
        }
        Ok(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn resolved_ranges_lie_inside_the_blob(value in "bytes=[0-9]{0,21}-[0-9]{0,21}", len in 1u64..1 << 40) {
            if let Ok(range) = RangeSpec::parse(&value).and_then(|spec| spec.resolve(len)) {
                proptest::prop_assert!(range.start < range.end && range.end <= len);
            }
        }

        #[test]
        fn any_header_parses_or_is_refused_without_panicking(value in "[ -~]{0,120}") {
            let _ = RangeSpec::parse(&value);
        }
    }

    #[test]
    fn parses_and_resolves() {
        assert_eq!(
            RangeSpec::parse("bytes=10-19").unwrap().resolve(100),
            Ok(10..20)
        );
        assert_eq!(
            RangeSpec::parse("bytes=10-").unwrap().resolve(100),
            Ok(10..100)
        );
        assert_eq!(
            RangeSpec::parse("bytes=-5").unwrap().resolve(100),
            Ok(95..100)
        );
        assert_eq!(
            RangeSpec::parse("bytes=-500").unwrap().resolve(100),
            Ok(0..100)
        );
        assert_eq!(
            RangeSpec::parse("bytes=90-1000").unwrap().resolve(100),
            Ok(90..100)
        );
        assert_eq!(
            RangeSpec::parse("bytes=999999999999-")
                .unwrap()
                .resolve(100),
            Err(Unsatisfiable)
        );
        assert_eq!(
            RangeSpec::parse("bytes=100-").unwrap().resolve(100),
            Err(Unsatisfiable)
        );
        assert_eq!(
            RangeSpec::parse("bytes=-0").unwrap().resolve(100),
            Err(Unsatisfiable)
        );
        for bad in [
            "bytes=5-2",
            "bytes=abc",
            "bytes=1-2,4-5",
            "items=1-2",
            "bytes=-",
            "bytes=99999999999999999999-",
            "bytes=+1-2",
        ] {
            assert_eq!(RangeSpec::parse(bad), Err(Unsatisfiable), "{bad}");
        }
    }
}
