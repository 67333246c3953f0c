//! CRC-64/NVME, the one checksum of a version's bytes from the close that
//! made it to every replica.
//!
//! S3 keeps it as a full-object checksum (`x-amz-checksum-crc64nvme`,
//! base64 of the 8 big-endian bytes) whatever the part layout: the CRC of a
//! multipart object is the parts' CRCs [`combine`]d, so a replica copied in
//! other parts, or in one request, carries the same value. That is why it,
//! and not the ETag, is what says two copies hold the same bytes.
//!
//! Nothing here reads a file: each CRC is taken from bytes while they are
//! sent (the SDK's trailer, or a store's answer), and parts are combined in
//! O(log length) without their bytes.

use base64::Engine;

/// A running CRC-64/NVME of bytes as they go by (`finalize` gives its 8
/// bytes, [`Crc64::from_be_bytes`] the value).
pub(crate) fn hasher() -> Box<dyn aws_smithy_checksums::http::HttpChecksum> {
    aws_smithy_checksums::ChecksumAlgorithm::Crc64Nvme.into_impl()
}

/// The polynomial, bit-reflected (CRC-64/NVME: init and xorout all ones).
const POLY: u64 = 0x9A6C_9329_AC4B_C9B5;

/// A CRC-64/NVME value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crc64(pub u64);

impl Crc64 {
    /// The CRC of `data`.
    pub fn of(data: &[u8]) -> Crc64 {
        let mut h = hasher();
        h.update(data);
        Crc64::from_be_bytes(&h.finalize()).expect("a CRC-64 is 8 bytes")
    }

    /// From the 8 bytes a checksum body or the SDK gives.
    pub(crate) fn from_be_bytes(b: &[u8]) -> Option<Crc64> {
        Some(Crc64(u64::from_be_bytes(b.try_into().ok()?)))
    }

    /// From S3's header form; `None` for anything that is not 8 bytes of base64.
    pub(crate) fn from_base64(s: &str) -> Option<Crc64> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .ok()?;
        Crc64::from_be_bytes(&b)
    }

    /// S3's header form (`x-amz-checksum-crc64nvme`).
    pub fn to_base64(self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.to_be_bytes())
    }

    /// For people: 16 hex digits.
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// `base64` (S3's form) as hex, for messages; unchanged when it is not a CRC-64.
pub(crate) fn hex_of_base64(base64: &str) -> String {
    Crc64::from_base64(base64)
        .map(Crc64::to_hex)
        .unwrap_or_else(|| base64.to_string())
}

fn times(mat: &[u64; 64], mut vec: u64) -> u64 {
    let mut sum = 0;
    let mut i = 0;
    while vec != 0 {
        if vec & 1 != 0 {
            sum ^= mat[i];
        }
        vec >>= 1;
        i += 1;
    }
    sum
}

fn square(mat: &[u64; 64]) -> [u64; 64] {
    let mut sq = [0u64; 64];
    for (n, row) in sq.iter_mut().enumerate() {
        *row = times(mat, mat[n]);
    }
    sq
}

/// The CRC of `a ‖ b` from the CRC of `a`, the CRC of `b` and `b`'s length:
/// `a`'s CRC is advanced over `len_b` zero bytes (the operator for one zero
/// bit, squared for 2, 4, 8 … bits, as zlib's `crc32_combine`), then
/// xored with `b`'s. The all-ones init and xorout cancel out.
pub(crate) fn combine(a: Crc64, b: Crc64, len_b: u64) -> Crc64 {
    if len_b == 0 {
        return a;
    }
    // The operator for one zero bit.
    let mut odd = [0u64; 64];
    odd[0] = POLY;
    for (n, row) in odd.iter_mut().enumerate().skip(1) {
        *row = 1 << (n - 1);
    }
    let mut even = square(&odd); // two zero bits
    odd = square(&even); // four
    let mut crc = a.0;
    let mut len = len_b;
    loop {
        even = square(&odd);
        if len & 1 != 0 {
            crc = times(&even, crc);
        }
        len >>= 1;
        if len == 0 {
            break;
        }
        odd = square(&even);
        if len & 1 != 0 {
            crc = times(&odd, crc);
        }
        len >>= 1;
        if len == 0 {
            break;
        }
    }
    Crc64(crc ^ b.0)
}

/// The whole object's CRC from its parts' (CRC, length), in order; `None`
/// when a part has none.
pub(crate) fn of_parts(parts: impl IntoIterator<Item = Option<(Crc64, u64)>>) -> Option<Crc64> {
    let mut whole: Option<Crc64> = None;
    for p in parts {
        let (crc, len) = p?;
        whole = Some(match whole {
            None => crc,
            Some(w) => combine(w, crc, len),
        });
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_check_value_is_crc64_nvme() {
        assert_eq!(Crc64::of(b"123456789").0, 0xae8b_1486_0a79_9888);
        assert_eq!(Crc64::of(b"").0, 0);
    }

    #[test]
    fn base64_is_s3s_header_form() {
        // What SeaweedFS answered for `hello world` × 1000.
        let c = Crc64::of(&b"hello world".repeat(1000));
        assert_eq!(c.to_base64(), "Fg5AiE8Eaws=");
        assert_eq!(Crc64::from_base64("Fg5AiE8Eaws="), Some(c));
        assert_eq!(Crc64::from_base64("not a crc"), None);
        assert_eq!(Crc64::from_base64("AAAA"), None);
        assert_eq!(hex_of_base64("Fg5AiE8Eaws="), c.to_hex());
    }

    #[test]
    fn parts_of_a_store_combine_to_its_full_object_checksum() {
        // SeaweedFS 4.48's full-object checksum of 5 MiB of `a` then 1000 `b`.
        let p1 = vec![b'a'; 5 << 20];
        let p2 = vec![b'b'; 1000];
        let whole = of_parts([
            Some((Crc64::of(&p1), p1.len() as u64)),
            Some((Crc64::of(&p2), p2.len() as u64)),
        ])
        .unwrap();
        assert_eq!(whole.to_base64(), "6kicW+ugDI8=");
        assert_eq!(of_parts([Some((whole, 1)), None]), None);
        assert_eq!(of_parts(std::iter::empty()), None);
    }

    proptest! {
        #[test]
        fn combining_two_crcs_is_the_crc_of_the_joined_bytes(
            a in proptest::collection::vec(any::<u8>(), 0..3000),
            b in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let joined = [a.as_slice(), b.as_slice()].concat();
            prop_assert_eq!(
                combine(Crc64::of(&a), Crc64::of(&b), b.len() as u64),
                Crc64::of(&joined)
            );
        }
    }
}
