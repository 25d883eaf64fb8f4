use std::fs;

use sca_data::subset_builder::{build_subset, choose_classes, LinkMode};
use sca_data::{Dataset, ImageFolder, ImageFolderOptions};

use crate::image_folder::{png_bytes, put};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn class_choice_is_reproducible_and_order_free() {
    let all = names(&["n01", "n02", "n03", "n04", "n05", "n06", "n07", "n08"]);
    let a = choose_classes(&all, 3, 42).unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted: {a:?}");
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(choose_classes(&reversed, 3, 42).unwrap(), a);
    assert_eq!(choose_classes(&all, 8, 1).unwrap(), all);
    let others: Vec<_> = (0..10).map(|s| choose_classes(&all, 3, s).unwrap()).collect();
    assert!(others.iter().any(|o| *o != a), "seeds change the choice");
    assert!(choose_classes(&all, 9, 0).unwrap_err().to_string().contains("cannot choose 9 classes out of 8"));
    assert!(choose_classes(&all, 0, 0).is_err());
}

fn imagenet_like(root: &std::path::Path) {
    for c in ["n01", "n02", "n03", "n04", "n05"] {
        for i in 0..3 {
            put(root, &format!("train/{c}/{c}_{i}.JPEG"), &png_bytes(&image::RgbImage::new(2, 2)));
        }
        put(root, &format!("val/{c}/val_{c}.JPEG"), &png_bytes(&image::RgbImage::new(2, 2)));
    }
    put(root, "train/n01/readme.txt", b"skipped");
}

#[test]
fn builds_copies_and_links() {
    for mode in [LinkMode::Copy, LinkMode::Symlink] {
        let src = tempfile::tempdir().unwrap();
        imagenet_like(src.path());
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("in3");
        let report = build_subset(src.path(), &dst, 3, 7, mode).unwrap();
        let all = names(&["n01", "n02", "n03", "n04", "n05"]);
        assert_eq!(report.classes, choose_classes(&all, 3, 7).unwrap());
        assert_eq!((report.train_files, report.val_files), (9, 3));
        assert_eq!(
            fs::read_to_string(dst.join("classes.txt")).unwrap(),
            report.classes.iter().map(|c| format!("{c}\n")).collect::<String>()
        );
        let c = &report.classes[0];
        let f = dst.join(format!("train/{c}/{c}_1.JPEG"));
        assert_eq!(fs::symlink_metadata(&f).unwrap().file_type().is_symlink(), mode == LinkMode::Symlink);
        let ds = ImageFolder::open(dst.join("train"), &ImageFolderOptions::default()).unwrap();
        assert_eq!((ds.len(), ds.class_names()), (9, report.classes.clone()));
        // A second run into the same folder refuses to mix subsets.
        let err = build_subset(src.path(), &dst, 3, 8, mode).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
    }
}

#[test]
fn missing_source_is_an_error() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = build_subset(&src.path().join("imagenet"), &out.path().join("x"), 3, 0, LinkMode::Copy).unwrap_err().to_string();
    assert!(err.contains("imagenet/train does not exist"), "{err}");
}
