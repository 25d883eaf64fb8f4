use std::io::Write;
use std::path::{Path, PathBuf};

use sca_data::fashion_mnist::{self, read_idx_images, read_idx_labels, FashionMnist};
use sca_data::{class_counts, Dataset};

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) -> PathBuf {
    let path = dir.join(if gz { format!("{name}.gz") } else { name.to_string() });
    let mut f = std::fs::File::create(&path).unwrap();
    if gz {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    } else {
        f.write_all(bytes).unwrap();
    }
    path
}

/// Three 2×2 images with pixels 0..12 and labels 0, 9, 3.
fn tiny_split(dir: &Path, prefix: &str, gz: bool) {
    write(dir, &format!("{prefix}-images-idx3-ubyte"), &idx(2051, &[3, 2, 2], &(0..12).collect::<Vec<u8>>()), gz);
    write(dir, &format!("{prefix}-labels-idx1-ubyte"), &idx(2049, &[3], &[0, 9, 3]), gz);
}

#[test]
fn reads_plain_and_gzip_idx() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        tiny_split(dir.path(), "train", gz);
        tiny_split(dir.path(), "t10k", gz);
        let (train, test) = FashionMnist::open(dir.path()).unwrap();
        assert_eq!((train.len(), test.len(), train.num_classes()), (3, 3, 10));
        assert_eq!((0..3).map(|i| train.label(i)).collect::<Vec<_>>(), [0, 9, 3]);
        let s = train.load(1).unwrap();
        assert_eq!(s.image.dimensions(), (2, 2));
        // Grey replicated to RGB: image 1 holds 4, 5, 6, 7 row-major.
        assert_eq!(s.image.get_pixel(1, 0).0, [5, 5, 5]);
        assert_eq!(s.image.get_pixel(0, 1).0, [6, 6, 6]);
        assert_eq!((s.label, s.bbox), (9, None));
        assert!(train.load(3).is_err());
    }
}

#[track_caller]
fn check_bad(images: Vec<u8>, labels: Vec<u8>, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ip = write(dir.path(), "i", &images, false);
    let lp = write(dir.path(), "l", &labels, false);
    let err = FashionMnist::from_files(&ip, &lp).err().expect("should fail").to_string();
    assert!(err.contains(needle), "{err:?} should contain {needle:?}");
    assert!(err.contains(&dir.path().display().to_string()), "{err:?} should name the file");
}

#[test]
fn bad_idx_files_are_clear_errors() {
    let good_images = idx(2051, &[3, 2, 2], &[0; 12]);
    let good_labels = idx(2049, &[3], &[0, 1, 2]);
    check_bad(idx(2049, &[3, 2, 2], &[0; 12]), good_labels.clone(), "wrong IDX magic number 2049, expected 2051");
    check_bad(good_images.clone(), idx(2051, &[3], &[0, 1, 2]), "wrong IDX magic number 2051, expected 2049");
    check_bad(
        idx(2051, &[3, 2, 2], &[0; 7]),
        good_labels.clone(),
        "truncated IDX data: 7 bytes after the header, expected 12 for shape [3, 2, 2]",
    );
    check_bad(vec![0, 0, 8], good_labels.clone(), "truncated IDX header: 3 bytes, expected at least 16");
    check_bad(good_images.clone(), idx(2049, &[2], &[0, 1]), "2 labels for 3 images");
    check_bad(good_images.clone(), idx(2049, &[3], &[0, 10, 2]), "label 10 at position 1 is not a class");
    check_bad(vec![0x1F, 0x8B, 8, 0, 0], good_labels, "gzip stream is corrupt or truncated");
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny_split(dir.path(), "train", true);
    let err = FashionMnist::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("t10k-images-idx3-ubyte.gz") && err.contains("does not exist"), "{err}");
    let err = FashionMnist::open(&dir.path().join("nope")).err().unwrap().to_string();
    assert!(err.contains("nope") && err.contains("does not exist"), "{err}");
    assert!(read_idx_labels(&dir.path().join("x")).is_err());
    assert!(read_idx_images(&dir.path().join("x")).is_err());
}

#[test]
fn the_real_dataset() {
    let root = Path::new(fashion_mnist::DEFAULT_ROOT);
    if !root.join("train-images-idx3-ubyte.gz").exists() && !root.join("train-images-idx3-ubyte").exists() {
        eprintln!("skipped: Fashion-MNIST is not installed under {} (apt-get install dataset-fashion-mnist)", root.display());
        return;
    }
    let (train, test) = FashionMnist::open(root).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.image_size(), (28, 28));
    assert_eq!(class_counts(&train), vec![6000; 10]);
    assert_eq!(class_counts(&test), vec![1000; 10]);
    // The first training image is an ankle boot, the first test image too.
    assert_eq!((train.label(0), test.label(0), test.label(1)), (9, 9, 2));
    let s = train.load(0).unwrap();
    assert_eq!(s.image.dimensions(), (28, 28));
    assert!(s.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    // Stored statistics match the training pixels (integer sums keep this quick in debug).
    let (mut s1, mut s2) = (0u64, 0u64);
    for i in 0..60_000 {
        for &v in train.grey(i) {
            s1 += v as u64;
            s2 += (v as u64) * (v as u64);
        }
    }
    let n = 60_000.0 * 784.0;
    let mean = s1 as f64 / n / 255.0;
    let std = (s2 as f64 / n / 65025.0 - mean * mean).sqrt();
    assert!((mean - fashion_mnist::MEAN[0] as f64).abs() < 1e-3 && (std - fashion_mnist::STD[0] as f64).abs() < 1e-3, "{mean} {std}");
}
