//! Fashion-MNIST from its IDX files (plain or gzip), as installed by Debian's
//! `dataset-fashion-mnist` under `/usr/share/datasets/fashion-mnist/`.
//!
//! IDX: a big-endian header (magic 2051 for images, 2049 for labels; then the count, and
//! rows and columns for images) followed by one unsigned byte per pixel or label.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::{DataError, Dataset, Sample};

pub const DEFAULT_ROOT: &str = "/usr/share/datasets/fashion-mnist";

pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Mean and std of the training pixels (scaled to [0, 1]), the same on all three channels.
pub const MEAN: [f32; 3] = [0.2860; 3];
pub const STD: [f32; 3] = [0.3530; 3];

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

/// Read a file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::BadFile { path: path.to_path_buf(), reason: format!("gzip stream is corrupt or truncated: {e}") })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn parse_header(path: &Path, bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>, DataError> {
    let bad = |reason: String| DataError::BadFile { path: path.to_path_buf(), reason };
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(bad(format!("truncated IDX header: {} bytes, expected at least {header}", bytes.len())));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(bad(format!("wrong IDX magic number {found}, expected {magic}")));
    }
    let shape: Vec<usize> = (0..dims).map(|d| be_u32(bytes, 4 + 4 * d) as usize).collect();
    let expected = shape.iter().product::<usize>();
    let have = bytes.len() - header;
    if have < expected {
        return Err(bad(format!("truncated IDX data: {have} bytes after the header, expected {expected} for shape {shape:?}")));
    }
    Ok(shape)
}

/// Images of an IDX3 file: (count, rows, cols, pixels row-major).
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let s = parse_header(path, &bytes, IMAGES_MAGIC, 3)?;
    let n = s[0] * s[1] * s[2];
    Ok((s[0], s[1], s[2], bytes[16..16 + n].to_vec()))
}

/// Labels of an IDX1 file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let s = parse_header(path, &bytes, LABELS_MAGIC, 1)?;
    Ok(bytes[8..8 + s[0]].to_vec())
}

/// `root/name` or `root/name.gz`, whichever exists.
fn find(root: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = root.join(name);
    let gz = root.join(format!("{name}.gz"));
    if plain.is_file() {
        Ok(plain)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(DataError::MissingFile { path: gz })
    }
}

/// One split of Fashion-MNIST, held in memory (47 MB for the training set).
pub struct FashionMnist {
    pixels: Arc<Vec<u8>>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl FashionMnist {
    /// Load one split from an images file and a labels file.
    pub fn from_files(images: &Path, labels: &Path) -> Result<FashionMnist, DataError> {
        let (n, rows, cols, pixels) = read_idx_images(images)?;
        let lab = read_idx_labels(labels)?;
        if lab.len() != n {
            return Err(DataError::BadFile {
                path: labels.to_path_buf(),
                reason: format!("{} labels for {n} images in {}", lab.len(), images.display()),
            });
        }
        if let Some(pos) = lab.iter().position(|&l| l as usize >= CLASS_NAMES.len()) {
            return Err(DataError::BadFile {
                path: labels.to_path_buf(),
                reason: format!("label {} at position {pos} is not a class (0-9)", lab[pos]),
            });
        }
        Ok(FashionMnist { pixels: Arc::new(pixels), labels: lab, rows, cols })
    }

    /// (train 60,000, test 10,000) from a folder holding the four standard files.
    pub fn open(root: &Path) -> Result<(FashionMnist, FashionMnist), DataError> {
        if !root.is_dir() {
            return Err(DataError::MissingRoot { path: root.to_path_buf() });
        }
        let train = Self::from_files(&find(root, "train-images-idx3-ubyte")?, &find(root, "train-labels-idx1-ubyte")?)?;
        let test = Self::from_files(&find(root, "t10k-images-idx3-ubyte")?, &find(root, "t10k-labels-idx1-ubyte")?)?;
        Ok((train, test))
    }

    pub fn image_size(&self) -> (usize, usize) {
        (self.cols, self.rows)
    }

    /// The raw grey pixels of sample `index`.
    pub fn grey(&self, index: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[index * n..(index + 1) * n]
    }
}

impl Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        CLASS_NAMES.len()
    }
    fn class_names(&self) -> Vec<String> {
        CLASS_NAMES.iter().map(|s| s.to_string()).collect()
    }
    fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }
    fn load(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.len() {
            return Err(DataError::Index { index, len: self.len() });
        }
        let grey = self.grey(index);
        let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v, v, v]).collect();
        let image = RgbImage::from_raw(self.cols as u32, self.rows as u32, rgb).expect("buffer matches the IDX shape");
        Ok(Sample { image, label: self.label(index), bbox: None })
    }
}
