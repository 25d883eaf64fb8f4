use std::fs;
use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use sca_data::image_folder::{decode_bytes, jpeg_is_complete, ImageFolder, ImageFolderOptions, Verify};
use sca_data::loader::load_or_substitute;
use sca_data::{DataError, Dataset};

pub fn jpeg_bytes(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
    out
}

pub fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// cat: a.png (2×2), b.jpg (8×8), plus a hidden image and a text file; dog: C.PNG (grey),
/// sub/d.jpeg; a hidden class folder.
pub fn good_tree(root: &Path) {
    put(root, "cat/a.png", &png_bytes(&RgbImage::from_pixel(2, 2, Rgb([10, 20, 30]))));
    put(root, "cat/b.jpg", &jpeg_bytes(8, 8, 1));
    put(root, "cat/.hidden.png", &png_bytes(&RgbImage::new(2, 2)));
    put(root, "cat/notes.txt", b"not an image");
    let grey = GrayImage::from_pixel(3, 2, Luma([77]));
    let mut buf = std::io::Cursor::new(Vec::new());
    grey.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    put(root, "dog/C.PNG", buf.get_ref());
    put(root, "dog/sub/d.jpeg", &jpeg_bytes(16, 12, 2));
    put(root, ".git/x.png", &png_bytes(&RgbImage::new(2, 2)));
    put(root, "README.md", b"a file at the root is not a class");
}

fn opts(strict: bool, verify: Verify) -> ImageFolderOptions {
    ImageFolderOptions { strict, verify, progress: None }
}

fn names(ds: &ImageFolder) -> Vec<String> {
    (0..ds.len()).map(|i| ds.path(i).strip_prefix(ds.root()).unwrap().display().to_string()).collect()
}

#[test]
fn lists_classes_and_images_like_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    for verify in [Verify::None, Verify::Header, Verify::Decode] {
        let ds = ImageFolder::open(dir.path(), &opts(false, verify)).unwrap();
        assert_eq!(ds.class_names(), ["cat", "dog"]);
        assert_eq!(names(&ds), ["cat/a.png", "cat/b.jpg", "dog/C.PNG", "dog/sub/d.jpeg"]);
        assert_eq!((0..4).map(|i| ds.label(i)).collect::<Vec<_>>(), [0, 0, 1, 1]);
        assert!(ds.bad_files().is_empty());
        assert_eq!(ds.sizes().map(|s| s.to_vec()), (verify != Verify::None).then(|| vec![(2, 2), (8, 8), (3, 2), (16, 12)]));
    }
    let ds = ImageFolder::open(dir.path(), &opts(false, Verify::None)).unwrap();
    let a = ds.load(0).unwrap();
    assert_eq!((a.image.get_pixel(1, 1).0, a.label), ([10, 20, 30], 0));
    // Grey PNG → RGB with the value replicated.
    let c = ds.load(2).unwrap();
    assert_eq!((c.image.dimensions(), c.image.get_pixel(2, 1).0, c.label), ((3, 2), [77, 77, 77], 1));
    assert_eq!(ds.load(3).unwrap().image.dimensions(), (16, 12));
}

#[track_caller]
fn check_open_error(build: impl Fn(&Path), strict: bool, verify: Verify, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let err = ImageFolder::open(dir.path().join("root"), &opts(strict, verify)).err().expect("open should fail").to_string();
    for n in needles {
        assert!(err.contains(n), "{err:?} should contain {n:?}");
    }
}

#[test]
fn structural_problems_are_clear_errors() {
    let root = |d: &Path| good_tree(&d.join("root"));
    check_open_error(|_| {}, false, Verify::Header, &["dataset root", "root does not exist"]);
    check_open_error(|d| fs::write(d.join("root"), b"x").unwrap(), false, Verify::Header, &["root is not a directory"]);
    check_open_error(
        |d| put(&d.join("root"), "only-a-file.png", &png_bytes(&RgbImage::new(1, 1))),
        false,
        Verify::Header,
        &["contains no class folders"],
    );
    check_open_error(
        |d| {
            root(d);
            fs::create_dir(d.join("root/empty")).unwrap()
        },
        false,
        Verify::None,
        &["class \"empty\"", "root/empty", "contains no readable images"],
    );
    check_open_error(
        |d| {
            root(d);
            put(&d.join("root"), "texts/a.txt", b"x")
        },
        false,
        Verify::None,
        &["class \"texts\"", "no readable images"],
    );
    // A folder whose only image is corrupt is empty once the bad file is skipped.
    check_open_error(
        |d| {
            root(d);
            put(&d.join("root"), "junk/x.jpg", b"garbage")
        },
        false,
        Verify::Header,
        &["class \"junk\"", "no readable images"],
    );
}

#[test]
fn corrupt_files_are_skipped_and_counted_or_fatal_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    put(dir.path(), "cat/bad.jpg", b"this is not a jpeg");
    put(dir.path(), "dog/empty.png", b"");
    let ds = ImageFolder::open(dir.path(), &opts(false, Verify::Header)).unwrap();
    assert_eq!(names(&ds), ["cat/a.png", "cat/b.jpg", "dog/C.PNG", "dog/sub/d.jpeg"]);
    let bad: Vec<String> = ds.bad_files().iter().map(|p| Path::new(p).strip_prefix(dir.path()).unwrap().display().to_string()).collect();
    assert_eq!(bad, ["cat/bad.jpg", "dog/empty.png"]);

    let err = ImageFolder::open(dir.path(), &opts(true, Verify::Header)).err().unwrap();
    assert!(matches!(err, DataError::BadImage { .. }), "{err}");
    assert!(err.to_string().contains("cat/bad.jpg") && err.to_string().contains("corrupt or truncated image"), "{err}");
}

#[test]
fn truncated_jpeg_is_caught_by_decode_verification_or_at_load() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let full = jpeg_bytes(64, 64, 3);
    put(dir.path(), "cat/c_cut.jpg", &full[..full.len() / 2]);
    // Header verification passes a file cut in its scan data...
    let ds = ImageFolder::open(dir.path(), &opts(false, Verify::Header)).unwrap();
    assert_eq!(ds.len(), 5);
    let err = ds.load(2).err().unwrap();
    assert!(err.is_bad_image() && err.to_string().contains("c_cut.jpg") && err.to_string().contains("truncated JPEG"), "{err}");
    assert_eq!(ds.bad_files().len(), 1);
    // ...and the loader serves the next image in its place.
    let (used, s) = load_or_substitute(&ds, 2).unwrap();
    assert_eq!((used, s.label), (3, 1));
    // Decoding verification drops it at open.
    let ds = ImageFolder::open(dir.path(), &opts(false, Verify::Decode)).unwrap();
    assert_eq!((ds.len(), ds.bad_files().len()), (4, 1));
    // Strict: an error at open (decode) or at load (header).
    assert!(ImageFolder::open(dir.path(), &opts(true, Verify::Decode)).is_err());
    let strict = ImageFolder::open(dir.path(), &opts(true, Verify::Header)).unwrap();
    assert!(load_or_substitute(&strict, 2).is_err());
}

#[test]
fn val_root_uses_the_train_labels() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(&dir.path().join("train"));
    put(dir.path(), "val/dog/v.png", &png_bytes(&RgbImage::new(4, 4)));
    let (train, val) =
        ImageFolder::open_pair(dir.path().join("train"), Some(&dir.path().join("val")), &opts(false, Verify::Header)).unwrap();
    let val = val.unwrap();
    assert_eq!((train.len(), val.len(), val.num_classes(), val.label(0)), (4, 1, 2, 1));
    put(dir.path(), "val/bird/b.png", &png_bytes(&RgbImage::new(4, 4)));
    let err = ImageFolder::open_pair(dir.path().join("train"), Some(&dir.path().join("val")), &opts(false, Verify::Header))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("class \"bird\"") && err.contains("no counterpart in the train root"), "{err}");
}

#[test]
fn jpeg_completeness() {
    let full = jpeg_bytes(32, 32, 9);
    assert!(jpeg_is_complete(&full));
    assert!(!jpeg_is_complete(&full[..full.len() - 2]));
    assert!(!jpeg_is_complete(&full[..full.len() / 2]));
    assert!(!jpeg_is_complete(&full[..20]));
    let mut padded = full.clone();
    padded.extend_from_slice(&[0, 0, 0, 0]);
    assert!(jpeg_is_complete(&padded));
    let p = Path::new("x.jpg");
    assert!(decode_bytes(p, &full).is_ok());
    assert!(decode_bytes(p, &padded).is_ok());
    let err = decode_bytes(p, &[]).err().unwrap().to_string();
    assert!(err.contains("x.jpg") && err.contains("empty file"), "{err}");
}

#[test]
fn flat_folders_are_one_class() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(&dir.path().join("pics"));
    let ds = ImageFolder::open_flat(dir.path().join("pics"), &opts(false, Verify::Header)).unwrap();
    assert_eq!((ds.len(), ds.class_names(), ds.label(3)), (4, vec!["pics".to_string()], 0));
    assert!(ImageFolder::open_flat(dir.path().join("none"), &opts(false, Verify::Header)).is_err());
}
