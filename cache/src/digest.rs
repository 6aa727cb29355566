//! Digests: the sha256 names of objects and action keys.
//!
//! [`ObjectDigest`] (what an artifact *is*) and [`ActionKey`] (what a stage *was asked to do*) are both sha256
//! values but distinct types, so neither can be passed where the other is meant. Humans see a 12-hex short
//! form ([`ObjectDigest::short`]); JSON and file names carry the full 64 hex digits.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Size of the read buffer used when streaming files through sha256. Large enough that syscall overhead is
/// negligible next to the hashing itself (sha2 picks the SHA-NI path at run time where the CPU has it).
pub const HASH_BUF: usize = 1 << 20;

/// A parse failure of a hex digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a sha256 digest (expected 64 lowercase hex digits, e.g. `9f86d081884c7d65…`)")]
pub struct ParseDigestError(pub String);

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw sha256 bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }
            /// The raw sha256 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Full lowercase hex, as used in file names and JSON.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 12 hex digits, for people.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
            /// sha256 of `bytes`.
            pub fn of_bytes(bytes: &[u8]) -> Self {
                $name(Sha256::digest(bytes).into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseDigestError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(ParseDigestError(s.to_string()));
                }
                hex::decode_to_slice(s, &mut out).map_err(|_| ParseDigestError(s.to_string()))?;
                Ok($name(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_type!(
    /// The sha256 of an object's bytes: a file's content, or a tree's canonical manifest.
    ObjectDigest
);
digest_type!(
    /// The sha256 of a stage's canonical pre-image: equal keys mean "the same work".
    ActionKey
);

/// Streams `reader` through sha256, returning the digest and the number of bytes read.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<(ObjectDigest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((ObjectDigest(hasher.finalize().into()), total))
}

/// Streams the file at `path` through sha256.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<(ObjectDigest, u64)> {
    hash_reader(std::fs::File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_round_trip() {
        let d = ObjectDigest::of_bytes(b"test");
        assert_eq!(d.to_hex(), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!(d.short(), "9f86d081884c");
        assert_eq!(d.to_hex().parse::<ObjectDigest>().unwrap(), d);
        let (streamed, n) = hash_reader(&b"test"[..]).unwrap();
        assert_eq!((streamed, n), (d, 4));
    }

    #[test]
    fn rejects_bad_hex() {
        for bad in ["", "abc", &"G".repeat(64), &"A".repeat(64), &"a".repeat(63)] {
            assert!(bad.parse::<ActionKey>().is_err(), "{bad}");
        }
        let err = "xyz".parse::<ActionKey>().unwrap_err().to_string();
        assert!(err.contains("64 lowercase hex digits"), "{err}");
    }
}
