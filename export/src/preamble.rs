//! The 16-byte preamble that opens every `.lmn` file (FORMAT.md §2).

use crate::error::FormatError;

/// The four magic bytes at offset 0.
pub const MAGIC: [u8; 4] = *b"LMN\0";
/// Length of the preamble in bytes.
pub const PREAMBLE_LEN: usize = 16;
/// The format major version this crate reads and writes.
pub const FORMAT_MAJOR: u16 = 2;
/// The format minor version this crate writes.
pub const FORMAT_MINOR: u16 = 0;
/// Largest header accepted, in bytes (16 MiB).
pub const MAX_HEADER_LEN: u64 = 16 * 1024 * 1024;
/// Alignment of the data section and of every tensor in it, in bytes.
pub const DATA_ALIGNMENT: u64 = 64;

/// The decoded preamble of a `.lmn` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub major: u16,
    pub minor: u16,
    /// Length of the msgpack header that follows the preamble, in bytes.
    pub header_len: u64,
}

impl Preamble {
    /// A preamble of the current format version for a header of `header_len` bytes.
    pub fn new(header_len: u64) -> Result<Self, FormatError> {
        check_header_len(header_len)?;
        Ok(Preamble {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            header_len,
        })
    }

    /// Decodes and validates the preamble at the start of `file`.
    ///
    /// `file` is the whole file (or at least its first `16 + header_len`
    /// bytes); its length is checked against the declared header length
    /// before anything trusts it.
    pub fn parse(file: &[u8]) -> Result<Self, FormatError> {
        let available = file.len() as u64;
        let bytes: &[u8; PREAMBLE_LEN] = file
            .get(..PREAMBLE_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(FormatError::Truncated {
                what: "the preamble",
                needed: PREAMBLE_LEN as u64,
                available,
            })?;
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let major = u16::from_le_bytes([bytes[4], bytes[5]]);
        let minor = u16::from_le_bytes([bytes[6], bytes[7]]);
        if major != FORMAT_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                major,
                minor,
                supported: FORMAT_MAJOR,
            });
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&bytes[8..16]);
        let header_len = u64::from_le_bytes(len_bytes);
        check_header_len(header_len)?;
        let preamble = Preamble {
            major,
            minor,
            header_len,
        };
        let header_end = preamble.header_end()?;
        if available < header_end {
            return Err(FormatError::Truncated {
                what: "the header",
                needed: header_end,
                available,
            });
        }
        Ok(preamble)
    }

    /// The 16 bytes of this preamble.
    pub fn to_bytes(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.major.to_le_bytes());
        out[6..8].copy_from_slice(&self.minor.to_le_bytes());
        out[8..].copy_from_slice(&self.header_len.to_le_bytes());
        out
    }

    /// Offset one past the last header byte.
    pub fn header_end(&self) -> Result<u64, FormatError> {
        (PREAMBLE_LEN as u64)
            .checked_add(self.header_len)
            .ok_or(FormatError::Overflow { what: "the header end" })
    }

    /// Offset of the data section: the header end rounded up to 64 bytes.
    pub fn data_offset(&self) -> Result<u64, FormatError> {
        align_up(self.header_end()?, DATA_ALIGNMENT)
            .ok_or(FormatError::Overflow { what: "the data offset" })
    }
}

fn check_header_len(header_len: u64) -> Result<(), FormatError> {
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(FormatError::HeaderLength {
            len: header_len,
            max: MAX_HEADER_LEN,
        });
    }
    Ok(())
}

/// Smallest multiple of `alignment` (a power of two) that is ≥ `offset`, or
/// `None` on overflow.
pub fn align_up(offset: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    offset
        .checked_add(alignment - 1)
        .map(|n| n & !(alignment - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(preamble: [u8; 16], total_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; total_len.max(16)];
        f[..16].copy_from_slice(&preamble);
        f
    }

    #[test]
    fn layout_matches_the_spec_byte_for_byte() {
        let p = Preamble::new(0x0102).unwrap();
        let expected = [
            b'L', b'M', b'N', 0, 2, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(p.to_bytes(), expected);
    }

    #[test]
    fn round_trip() {
        let p = Preamble::new(100).unwrap();
        let file = file_with(p.to_bytes(), 16 + 100);
        assert_eq!(Preamble::parse(&file).unwrap(), p);
    }

    #[test]
    fn data_offset_is_header_end_rounded_to_64() {
        for (len, offset) in [(1u64, 64u64), (48, 64), (49, 128), (112, 128), (113, 192)] {
            assert_eq!(Preamble::new(len).unwrap().data_offset().unwrap(), offset);
        }
    }

    #[test]
    fn align_up_overflow_is_none() {
        assert_eq!(align_up(u64::MAX, 64), None);
        assert_eq!(align_up(u64::MAX - 63, 64), Some(u64::MAX - 63));
        assert_eq!(align_up(0, 64), Some(0));
    }

    #[test]
    fn rejects_short_files() {
        for n in 0..16 {
            let err = Preamble::parse(&vec![0u8; n]).unwrap_err();
            assert!(matches!(err, FormatError::Truncated { needed: 16, .. }), "{err}");
        }
    }

    #[test]
    fn rejects_bad_magic() {
        let mut b = Preamble::new(8).unwrap().to_bytes();
        b[..4].copy_from_slice(b"GGUF");
        let err = Preamble::parse(&file_with(b, 64)).unwrap_err();
        assert_eq!(err, FormatError::BadMagic { found: *b"GGUF" });
        assert!(err.to_string().contains("[47, 47, 55, 46]"), "{err}");
    }

    #[test]
    fn rejects_other_major_accepts_any_minor() {
        let mut b = Preamble::new(8).unwrap().to_bytes();
        for major in [1u8, 3] {
            b[4] = major;
            let err = Preamble::parse(&file_with(b, 64)).unwrap_err();
            assert!(matches!(err, FormatError::UnsupportedVersion { major: m, .. } if m == u16::from(major)));
        }
        let mut b = Preamble::new(8).unwrap().to_bytes();
        b[6] = 7;
        assert_eq!(Preamble::parse(&file_with(b, 64)).unwrap().minor, 7);
    }

    #[test]
    fn rejects_zero_and_oversized_header_before_trusting_it() {
        for len in [0u64, MAX_HEADER_LEN + 1, u64::MAX] {
            let mut b = Preamble::new(8).unwrap().to_bytes();
            b[8..].copy_from_slice(&len.to_le_bytes());
            let err = Preamble::parse(&file_with(b, 64)).unwrap_err();
            assert!(matches!(err, FormatError::HeaderLength { .. }), "{len}: {err}");
        }
        assert!(Preamble::new(MAX_HEADER_LEN).is_ok());
    }

    #[test]
    fn rejects_header_past_end_of_file() {
        let b = Preamble::new(100).unwrap().to_bytes();
        let err = Preamble::parse(&file_with(b, 16 + 99)).unwrap_err();
        assert_eq!(
            err,
            FormatError::Truncated {
                what: "the header",
                needed: 116,
                available: 115
            }
        );
    }
}
