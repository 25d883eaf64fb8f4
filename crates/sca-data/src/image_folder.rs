//! ImageFolder datasets (torchvision convention `root/<class>/<image>`), and image decoding.
//!
//! Classes are the non-hidden sub-folders of the root, sorted by name; images are the
//! files under each class folder (recursively) whose extension is jpg, jpeg or png (any
//! case). Hidden entries (names starting with '.') and other files are ignored. A file
//! that cannot be decoded is skipped with one warning on stderr naming it and counted in
//! `bad_files()`, or is an error in strict mode.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::dataset::Progress;
use crate::{DataError, Dataset, Sample};

pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// How much of each file to check when a folder is opened.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Only list the files (fastest; bad files are found while loading).
    None,
    /// Read each header: catches empty files and non-images with an image extension.
    #[default]
    Header,
    /// Decode every image: also catches corrupt and truncated data (slow on big sets).
    Decode,
}

#[derive(Clone, Default)]
pub struct ImageFolderOptions {
    /// A bad image is an error instead of a skipped file.
    pub strict: bool,
    pub verify: Verify,
    /// Called once per file checked while opening.
    pub progress: Option<Progress>,
}

pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<PathBuf>,
    labels: Vec<u32>,
    sizes: Option<Vec<(u32, u32)>>,
    strict: bool,
    bad: Mutex<BTreeSet<PathBuf>>,
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn has_image_extension(path: &Path) -> bool {
    path.extension().map(|e| IMAGE_EXTENSIONS.iter().any(|x| e.to_string_lossy().eq_ignore_ascii_case(x))).unwrap_or(false)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>, DataError> {
    let mut entries = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        if !is_hidden(&e.file_name()) {
            entries.push((e.file_name(), e.path()));
        }
    }
    entries.sort();
    Ok(entries)
}

/// The class folders of `root`, sorted by name.
pub fn list_classes(root: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    if !root.exists() {
        return Err(DataError::MissingRoot { path: root.to_path_buf() });
    }
    if !root.is_dir() {
        return Err(DataError::NotADirectory { path: root.to_path_buf() });
    }
    let classes: Vec<_> =
        read_dir_sorted(root)?.into_iter().filter(|(_, p)| p.is_dir()).map(|(n, p)| (n.to_string_lossy().into_owned(), p)).collect();
    if classes.is_empty() {
        return Err(DataError::EmptyRoot { path: root.to_path_buf() });
    }
    Ok(classes)
}

/// Image files under `dir`, recursively, in sorted order.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for (_, p) in read_dir_sorted(dir)? {
        if p.is_dir() {
            out.extend(list_images(&p)?);
        } else if p.is_file() && has_image_extension(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether a JPEG stream has its end-of-image marker after the first scan header: a file
/// cut short does not. (A marker inside an embedded thumbnail comes before the main scan.)
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut pos = 2;
    // Walk the marker segments up to the first start-of-scan.
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            pos += 1;
            continue;
        }
        let m = bytes[pos + 1];
        if m == 0xFF || m == 0x01 || (0xD0..=0xD8).contains(&m) {
            pos += if m == 0xFF { 1 } else { 2 };
            continue;
        }
        if m == 0xD9 {
            return false;
        }
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        pos += 2 + len;
        if m == 0xDA {
            return pos <= bytes.len() && bytes[pos..].windows(2).rev().any(|w| w == [0xFF, 0xD9]);
        }
    }
    false
}

/// Decode an image file's bytes to 8-bit RGB (grey and alpha images converted).
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage, DataError> {
    let bad = |reason: String| DataError::BadImage { path: path.to_path_buf(), reason };
    if bytes.is_empty() {
        return Err(bad("empty file".into()));
    }
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(bytes) {
        return Err(bad("truncated JPEG (no end-of-image marker after the scan data)".into()));
    }
    let img = image::load_from_memory(bytes).map_err(|e| bad(e.to_string()))?;
    Ok(match img {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

pub fn decode_file(path: &Path) -> Result<RgbImage, DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_bytes(path, &bytes)
}

/// Width and height from the file header only.
pub fn read_dimensions(path: &Path) -> Result<(u32, u32), DataError> {
    let bad = |reason: String| DataError::BadImage { path: path.to_path_buf(), reason };
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io(path, e))?;
    if reader.format().is_none() {
        return Err(bad("not a recognised image format".into()));
    }
    reader.into_dimensions().map_err(|e| bad(e.to_string()))
}

fn warn_bad(err: &DataError) {
    eprintln!("warning: skipping {err}");
}

impl ImageFolder {
    /// Open `root`, with classes taken from its sub-folders.
    pub fn open(root: impl AsRef<Path>, opts: &ImageFolderOptions) -> Result<ImageFolder, DataError> {
        let root = root.as_ref();
        let classes = list_classes(root)?;
        let names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
        Self::build(root, names, classes.into_iter().enumerate().map(|(i, (n, p))| (i, n, p)).collect(), opts)
    }

    /// Open `root` labelled with a given class list (a val root labelled like its train
    /// root). A folder whose name is not in `classes` is an error; a class without a folder
    /// simply has no samples here.
    pub fn open_with_classes(root: impl AsRef<Path>, classes: &[String], opts: &ImageFolderOptions) -> Result<ImageFolder, DataError> {
        let root = root.as_ref();
        let mut found = Vec::new();
        for (name, path) in list_classes(root)? {
            match classes.iter().position(|c| *c == name) {
                Some(i) => found.push((i, name, path)),
                None => return Err(DataError::UnknownClass { class: name, path }),
            }
        }
        Self::build(root, classes.to_vec(), found, opts)
    }

    /// Every image under `dir` (recursively) as a single class named after the folder: an
    /// unlabelled collection, such as benchmark files.
    pub fn open_flat(dir: impl AsRef<Path>, opts: &ImageFolderOptions) -> Result<ImageFolder, DataError> {
        let dir = dir.as_ref();
        if !dir.exists() {
            return Err(DataError::MissingRoot { path: dir.to_path_buf() });
        }
        if !dir.is_dir() {
            return Err(DataError::NotADirectory { path: dir.to_path_buf() });
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "images".into());
        Self::build(dir, vec![name.clone()], vec![(0, name, dir.to_path_buf())], opts)
    }

    /// A train root and, optionally, a val root labelled with the train classes.
    pub fn open_pair(
        train: impl AsRef<Path>,
        val: Option<&Path>,
        opts: &ImageFolderOptions,
    ) -> Result<(ImageFolder, Option<ImageFolder>), DataError> {
        let train = Self::open(train, opts)?;
        let val = val.map(|v| Self::open_with_classes(v, &train.classes, opts)).transpose()?;
        Ok((train, val))
    }

    fn build(
        root: &Path,
        classes: Vec<String>,
        folders: Vec<(usize, String, PathBuf)>,
        opts: &ImageFolderOptions,
    ) -> Result<ImageFolder, DataError> {
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (label, name, path) in &folders {
            let imgs = list_images(path)?;
            if imgs.is_empty() {
                return Err(DataError::EmptyClass { class: name.clone(), path: path.clone() });
            }
            labels.extend(std::iter::repeat_n(*label as u32, imgs.len()));
            files.extend(imgs);
        }
        let mut folder = ImageFolder {
            root: root.to_path_buf(),
            classes,
            files,
            labels,
            sizes: None,
            strict: opts.strict,
            bad: Mutex::new(BTreeSet::new()),
        };
        if opts.verify != Verify::None {
            folder.verify(opts, &folders)?;
        }
        Ok(folder)
    }

    fn verify(&mut self, opts: &ImageFolderOptions, folders: &[(usize, String, PathBuf)]) -> Result<(), DataError> {
        let checked: Vec<Result<(u32, u32), DataError>> = self
            .files
            .par_iter()
            .map(|p| {
                let r = match opts.verify {
                    Verify::Decode => decode_file(p).map(|img| img.dimensions()),
                    _ => read_dimensions(p),
                };
                if let Some(cb) = &opts.progress {
                    cb();
                }
                r
            })
            .collect();
        let mut keep_files = Vec::with_capacity(self.files.len());
        let mut keep_labels = Vec::with_capacity(self.files.len());
        let mut sizes = Vec::with_capacity(self.files.len());
        let bad = self.bad.get_mut().unwrap();
        for ((path, label), r) in self.files.drain(..).zip(self.labels.drain(..)).zip(checked) {
            match r {
                Ok(dims) => {
                    keep_files.push(path);
                    keep_labels.push(label);
                    sizes.push(dims);
                }
                Err(e) if e.is_bad_image() && !opts.strict => {
                    warn_bad(&e);
                    bad.insert(path);
                }
                Err(e) => return Err(e),
            }
        }
        // A folder whose every image was bad is as empty as one with none.
        let mut count = vec![0usize; self.classes.len()];
        keep_labels.iter().for_each(|&l| count[l as usize] += 1);
        for (label, name, path) in folders {
            if count[*label] == 0 {
                return Err(DataError::EmptyClass { class: name.clone(), path: path.clone() });
            }
        }
        self.files = keep_files;
        self.labels = keep_labels;
        self.sizes = Some(sizes);
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, index: usize) -> &Path {
        &self.files[index]
    }

    /// Image sizes (width, height) per sample, when the folder was opened with verification.
    pub fn sizes(&self) -> Option<&[(u32, u32)]> {
        self.sizes.as_deref()
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }
    fn load(&self, index: usize) -> Result<Sample, DataError> {
        let path = self.files.get(index).ok_or(DataError::Index { index, len: self.files.len() })?;
        match decode_file(path) {
            Ok(image) => Ok(Sample { image, label: self.labels[index] as usize, bbox: None }),
            Err(e) => {
                if e.is_bad_image() && !self.strict && self.bad.lock().unwrap().insert(path.clone()) {
                    warn_bad(&e);
                }
                Err(e)
            }
        }
    }
    fn skip_bad_images(&self) -> bool {
        !self.strict
    }
    fn bad_files(&self) -> Vec<String> {
        self.bad.lock().unwrap().iter().map(|p| p.display().to_string()).collect()
    }
}
