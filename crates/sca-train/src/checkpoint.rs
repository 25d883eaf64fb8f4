//! The checkpoint container: named blobs behind a small JSON header, each with a CRC-32,
//! so a truncated or corrupted file is detected before anything is deserialised.
//!
//! Layout: `SCACKPT1` | header length (u64 LE) | header JSON | blobs in header order.
//! Pure bytes in, bytes out; the binary owns files (temp file + rename, fallback order).

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"SCACKPT1";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckpointError {
    #[error("not a checkpoint (bad magic bytes)")]
    Magic,
    #[error("checkpoint truncated: {0}")]
    Truncated(String),
    #[error("checkpoint header unreadable: {0}")]
    Header(String),
    #[error("checkpoint blob '{name}' is corrupt (CRC-32 {found:08x}, expected {expected:08x})")]
    Checksum { name: String, found: u32, expected: u32 },
    #[error("checkpoint has no blob '{0}'")]
    MissingBlob(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct BlobEntry {
    name: String,
    len: u64,
    crc32: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Header {
    meta: serde_json::Value,
    blobs: Vec<BlobEntry>,
}

/// A decoded checkpoint: free-form metadata plus named byte blobs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Container {
    pub meta: serde_json::Value,
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Container {
    pub fn blob(&self, name: &str) -> Result<&[u8], CheckpointError> {
        self.blobs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| CheckpointError::MissingBlob(name.to_string()))
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            meta: self.meta.clone(),
            blobs: self
                .blobs
                .iter()
                .map(|(name, b)| BlobEntry { name: name.clone(), len: b.len() as u64, crc32: crc32fast::hash(b) })
                .collect(),
        };
        let header = serde_json::to_vec(&header).expect("header is plain JSON");
        let mut out = Vec::with_capacity(16 + header.len() + self.blobs.iter().map(|(_, b)| b.len()).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for (_, b) in &self.blobs {
            out.extend_from_slice(b);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() < 16 {
            return Err(CheckpointError::Truncated(format!("{} bytes", bytes.len())));
        }
        if &bytes[..8] != MAGIC {
            return Err(CheckpointError::Magic);
        }
        let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let body = &bytes[16..];
        if body.len() < hlen {
            return Err(CheckpointError::Truncated(format!("header needs {hlen} bytes, file has {}", body.len())));
        }
        let header: Header = serde_json::from_slice(&body[..hlen]).map_err(|e| CheckpointError::Header(e.to_string()))?;
        let mut rest = &body[hlen..];
        let mut blobs = Vec::with_capacity(header.blobs.len());
        for e in header.blobs {
            let len = e.len as usize;
            if rest.len() < len {
                return Err(CheckpointError::Truncated(format!("blob '{}' needs {len} bytes, {} left", e.name, rest.len())));
            }
            let (b, tail) = rest.split_at(len);
            let found = crc32fast::hash(b);
            if found != e.crc32 {
                return Err(CheckpointError::Checksum { name: e.name, found, expected: e.crc32 });
            }
            blobs.push((e.name, b.to_vec()));
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(CheckpointError::Header(format!("{} trailing bytes after the last blob", rest.len())));
        }
        Ok(Container { meta: header.meta, blobs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Container {
        Container {
            meta: serde_json::json!({"epoch": 3, "step": 120}),
            blobs: vec![("model".into(), vec![1, 2, 3, 4, 5]), ("optim".into(), vec![9; 100])],
        }
    }

    fn check(edit: impl FnOnce(&mut Vec<u8>), expected: Result<(), CheckpointError>) {
        let mut bytes = sample().encode();
        edit(&mut bytes);
        assert_eq!(Container::decode(&bytes).map(|_| ()), expected);
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(Container::decode(&c.encode()).unwrap(), c);
        assert_eq!(c.blob("optim").unwrap().len(), 100);
        assert_eq!(c.blob("queue"), Err(CheckpointError::MissingBlob("queue".into())));
    }

    #[test]
    fn damage_is_detected() {
        check(|_| {}, Ok(()));
        check(|b| b[0] = b'X', Err(CheckpointError::Magic));
        check(|b| b.truncate(10), Err(CheckpointError::Truncated("10 bytes".into())));
        check(|b| b.truncate(b.len() - 1), Err(CheckpointError::Truncated("blob 'optim' needs 100 bytes, 99 left".into())));
        let crc_model = crc32fast::hash(&[1, 2, 3, 4, 5]);
        let crc_damaged = crc32fast::hash(&[1, 2, 3, 4, 6]);
        check(
            |b| {
                let n = b.len();
                b[n - 101] = 6; // last byte of the "model" blob
            },
            Err(CheckpointError::Checksum { name: "model".into(), found: crc_damaged, expected: crc_model }),
        );
        check(|b| b.push(0), Err(CheckpointError::Header("1 trailing bytes after the last blob".into())));
    }
}
