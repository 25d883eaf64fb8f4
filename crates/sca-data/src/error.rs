//! The one error type of the crate. Every message names the file, folder or class at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset root {} does not exist", .path.display())]
    MissingRoot { path: PathBuf },
    #[error("required file {} does not exist", .path.display())]
    MissingFile { path: PathBuf },
    #[error("dataset root {} is not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    #[error("dataset root {} contains no class folders", .path.display())]
    EmptyRoot { path: PathBuf },
    #[error("class folder {} (class {class:?}) contains no readable images", .path.display())]
    EmptyClass { class: String, path: PathBuf },
    #[error("class folder {} (class {class:?}) has no counterpart in the train root", .path.display())]
    UnknownClass { class: String, path: PathBuf },
    #[error("{}: corrupt or truncated image: {reason}", .path.display())]
    BadImage { path: PathBuf, reason: String },
    #[error("{}: {reason}", .path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index {index} is out of range for a dataset of {len} samples")]
    Index { index: usize, len: usize },
    #[error("positive sampler returned {got} positives for source index {index}; expected {expected} (the count of the first source of the batch)")]
    Positives { index: usize, got: usize, expected: usize },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl DataError {
    /// A single unreadable image (as opposed to a missing root or a bad configuration):
    /// the loader may skip it when the dataset allows.
    pub fn is_bad_image(&self) -> bool {
        matches!(self, DataError::BadImage { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}
