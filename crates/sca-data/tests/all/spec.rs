use std::path::PathBuf;

use sca_data::*;

#[track_caller]
fn check_parse(json: &str, want: DatasetSpec) {
    let got: DatasetSpec = serde_json::from_str(json).unwrap();
    assert_eq!(got, want);
    // And back.
    let again: DatasetSpec = serde_json::from_str(&serde_json::to_string(&got).unwrap()).unwrap();
    assert_eq!(again, want);
}

#[test]
fn json_forms() {
    check_parse(r#"{"kind":"builtin","image_size":64,"classes":10,"train":5000,"test":1000,"seed":0}"#, DatasetSpec::builtin());
    check_parse(r#"{"kind":"builtin"}"#, DatasetSpec::builtin());
    check_parse(
        r#"{"kind":"builtin","image_size":32,"seed":4}"#,
        DatasetSpec::Builtin { image_size: 32, classes: 10, train: 5000, test: 1000, seed: 4 },
    );
    check_parse(r#"{"kind":"fashion_mnist"}"#, DatasetSpec::fashion_mnist("/usr/share/datasets/fashion-mnist"));
    check_parse(r#"{"kind":"fashion_mnist","root":"/x"}"#, DatasetSpec::fashion_mnist("/x"));
    check_parse(
        r#"{"kind":"image_folder","train":"/d/train","val":"/d/val"}"#,
        DatasetSpec::image_folder("/d/train", Some(PathBuf::from("/d/val"))),
    );
    check_parse(
        r#"{"kind":"image_folder","train":"/d","strict":true,"verify":"decode"}"#,
        DatasetSpec::ImageFolder { train: "/d".into(), val: None, strict: true, verify: Verify::Decode },
    );
}

#[track_caller]
fn check_parse_error(json: &str, needle: &str) {
    let err = serde_json::from_str::<DatasetSpec>(json).unwrap_err().to_string();
    assert!(err.contains(needle), "{err:?} should contain {needle:?}");
}

#[test]
fn json_errors() {
    check_parse_error(r#"{"kind":"cifar"}"#, "unknown variant `cifar`");
    check_parse_error(r#"{"kind":"builtin","size":64}"#, "unknown field `size`");
    check_parse_error(r#"{"kind":"image_folder"}"#, "missing field `train`");
    check_parse_error(r#"{"train":"/d"}"#, "missing field `kind`");
}

#[test]
fn open_builtin_and_defaults() {
    let spec = DatasetSpec::builtin();
    let (train, test) = spec.open().unwrap();
    assert_eq!((train.len(), test.unwrap().len(), train.num_classes()), (5000, 1000, 10));
    assert_eq!(spec.image_size(), Some(64));
    assert_eq!(spec.mean_std(), (scenes::MEAN, scenes::STD));
    let aug = spec.default_augment();
    assert_eq!(aug.crops, vec![CropSpec::new(2, 64, 0.14, 1.0), CropSpec::new(6, 27, 0.05, 0.14)]);
    assert_eq!(aug.mean, scenes::MEAN);
    assert_eq!(spec.default_eval(), EvalTransform::identity(64, scenes::MEAN, scenes::STD));
    assert_eq!(class_names(&spec).unwrap().len(), 10);

    let folder = DatasetSpec::image_folder("/nonexistent/train", None);
    assert_eq!(folder.default_eval(), EvalTransform::imagenet());
    assert_eq!(folder.default_augment(), AugmentConfig::default());
    let err = folder.open().err().unwrap().to_string();
    assert!(err.contains("/nonexistent/train does not exist"), "{err}");
    assert!(class_names(&folder).is_err());

    let fm = DatasetSpec::fashion_mnist("/usr/share/datasets/fashion-mnist");
    assert_eq!(class_names(&fm).unwrap()[9], "Ankle boot");
    assert_eq!(fm.default_augment().crops[0].size, 28);
    assert_eq!(fm.default_augment().crops[1].size, 12);
}

#[test]
fn image_folder_spec_opens_train_and_val() {
    let dir = tempfile::tempdir().unwrap();
    crate::image_folder::good_tree(&dir.path().join("train"));
    crate::image_folder::good_tree(&dir.path().join("val"));
    let spec = DatasetSpec::image_folder(dir.path().join("train"), Some(dir.path().join("val")));
    let (train, val) = spec.open().unwrap();
    assert_eq!((train.len(), val.unwrap().len()), (4, 4));
    assert_eq!(class_names(&spec).unwrap(), ["cat", "dog"]);
}
