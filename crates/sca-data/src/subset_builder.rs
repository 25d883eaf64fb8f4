//! Build an ImageFolder subset of a larger one (the paper's "ImageNet-50"): a reproducible
//! choice of classes, copied or symlinked, train and val.

use std::fs;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;

use crate::image_folder::{list_classes, list_images};
use crate::rng::{self, domain};
use crate::DataError;

/// `n` of the given class names, chosen by `seed` alone (the input order does not matter),
/// returned sorted.
pub fn choose_classes(all: &[String], n: usize, seed: u64) -> Result<Vec<String>, DataError> {
    if n == 0 || n > all.len() {
        return Err(DataError::Config(format!("cannot choose {n} classes out of {}", all.len())));
    }
    let mut sorted = all.to_vec();
    sorted.sort();
    sorted.shuffle(&mut rng::rng_from_key(rng::key(&[domain::CLASSES, seed])));
    let mut chosen = sorted[..n].to_vec();
    chosen.sort();
    Ok(chosen)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Copy,
    Symlink,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubsetReport {
    pub classes: Vec<String>,
    pub train_files: usize,
    pub val_files: usize,
}

/// From `src/train/<class>/...` (and `src/val/<class>/...` where present) write the chosen
/// classes' images under `out/train` and `out/val`, plus `out/classes.txt`. Refuses to
/// write into a non-empty `out`.
pub fn build_subset(src: &Path, out: &Path, n_classes: usize, seed: u64, mode: LinkMode) -> Result<SubsetReport, DataError> {
    let train_src = src.join("train");
    let val_src = src.join("val");
    let all: Vec<String> = list_classes(&train_src)?.into_iter().map(|(n, _)| n).collect();
    let classes = choose_classes(&all, n_classes, seed)?;
    if out.exists() && fs::read_dir(out).map_err(|e| DataError::io(out, e))?.next().is_some() {
        return Err(DataError::Config(format!("output folder {} is not empty", out.display())));
    }
    let train_files = place_classes(&train_src, &out.join("train"), &classes, mode, true)?;
    let val_files = if val_src.is_dir() { place_classes(&val_src, &out.join("val"), &classes, mode, false)? } else { 0 };
    let list: String = classes.iter().map(|c| format!("{c}\n")).collect();
    fs::write(out.join("classes.txt"), list).map_err(|e| DataError::io(out.join("classes.txt"), e))?;
    Ok(SubsetReport { classes, train_files, val_files })
}

fn place_classes(src: &Path, dst: &Path, classes: &[String], mode: LinkMode, required: bool) -> Result<usize, DataError> {
    let mut count = 0;
    for class in classes {
        let from = src.join(class);
        if !from.is_dir() {
            if required {
                return Err(DataError::MissingRoot { path: from });
            }
            continue;
        }
        let images = list_images(&from)?;
        if images.is_empty() {
            return Err(DataError::EmptyClass { class: class.clone(), path: from });
        }
        for img in images {
            let rel = img.strip_prefix(&from).expect("listed under the class folder");
            let to = dst.join(class).join(rel);
            place(&img, &to, mode)?;
            count += 1;
        }
    }
    Ok(count)
}

fn place(from: &Path, to: &Path, mode: LinkMode) -> Result<(), DataError> {
    let parent: PathBuf = to.parent().expect("a file inside the output").to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    match mode {
        LinkMode::Copy => fs::copy(from, to).map(|_| ()),
        LinkMode::Symlink => {
            let abs = fs::canonicalize(from).map_err(|e| DataError::io(from, e))?;
            symlink(&abs, to)
        }
    }
    .map_err(|e| DataError::io(to, e))
}

#[cfg(unix)]
fn symlink(from: &Path, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(from, to)
}

#[cfg(not(unix))]
fn symlink(from: &Path, to: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(from, to)
}
