use sca_data::scenes::{self, Scenes, Split};
use sca_data::{class_counts, Dataset};

fn small(len: usize, seed: u64, split: Split) -> Scenes {
    Scenes::new(64, 10, len, seed, split).unwrap()
}

#[test]
fn counts_and_balanced_labels() {
    let train = small(5000, 0, Split::Train);
    assert_eq!((train.len(), train.num_classes()), (5000, 10));
    assert_eq!(class_counts(&train), vec![500; 10]);
    assert_eq!(small(1000, 0, Split::Test).len(), 1000);
    assert_eq!((train.label(0), train.label(13), train.label(4999)), (0, 3, 9));
    assert_eq!(train.class_names()[..3], ["circle-hstripes", "square-checker", "triangle-dots"]);
    let three = Scenes::new(32, 3, 7, 0, Split::Train).unwrap();
    assert_eq!(class_counts(&three), vec![3, 2, 2]);
}

#[test]
fn boxes_lie_inside_and_cover_5_to_40_percent() {
    let ds = small(1000, 0, Split::Train);
    let mut shares = Vec::new();
    for i in 0..1000 {
        let b = ds.bbox(i).unwrap();
        assert!(b.x0 >= 0.0 && b.y0 >= 0.0 && b.x1 <= 64.0 && b.y1 <= 64.0 && b.x0 < b.x1 && b.y0 < b.y1, "{i}: {b:?}");
        let share = b.area() / (64.0 * 64.0);
        assert!((0.05..=0.40).contains(&share), "{i}: share {share}");
        shares.push(share);
    }
    // Sizes spread over the whole range.
    assert!(shares.iter().any(|&s| s < 0.1) && shares.iter().any(|&s| s > 0.33));
}

#[test]
fn loaded_sample_matches_cheap_label_and_box() {
    let ds = small(40, 3, Split::Train);
    for i in 0..20 {
        let s = ds.load(i).unwrap();
        assert_eq!((s.image.width(), s.image.height()), (64, 64));
        assert_eq!(s.label, ds.label(i));
        assert_eq!(s.bbox, ds.bbox(i));
    }
    assert!(ds.load(40).is_err());
}

#[test]
fn the_object_is_drawn_in_its_class_colour_inside_the_box() {
    // Class 3 (cross, solid, hue 0.3 = green): the box centre is a solid green pixel.
    let ds = small(40, 0, Split::Train);
    for i in [3, 13, 23, 33] {
        let s = ds.load(i).unwrap();
        let b = s.bbox.unwrap();
        let px = s.image.get_pixel(((b.x0 + b.x1) / 2.0) as u32, ((b.y0 + b.y1) / 2.0) as u32);
        assert!(px[1] > px[0] && px[1] > px[2], "index {i}: centre pixel {px:?} is not green");
    }
}

#[test]
fn generation_is_deterministic_per_seed_split_and_index() {
    let a = small(10, 0, Split::Train).load(7).unwrap().image;
    assert_eq!(a, small(10, 0, Split::Train).load(7).unwrap().image);
    assert_ne!(a, small(10, 1, Split::Train).load(7).unwrap().image);
    assert_ne!(a, small(10, 0, Split::Test).load(7).unwrap().image);
    assert_ne!(a, small(10, 0, Split::Train).load(6).unwrap().image);
}

#[test]
fn stored_statistics_match_the_generator() {
    let ds = small(200, 0, Split::Train);
    let (mut s, mut s2, mut n) = ([0f64; 3], [0f64; 3], 0f64);
    for i in 0..200 {
        for p in ds.load(i).unwrap().image.pixels() {
            for c in 0..3 {
                let v = p[c] as f64 / 255.0;
                s[c] += v;
                s2[c] += v * v;
            }
            n += 1.0;
        }
    }
    for c in 0..3 {
        let mean = s[c] / n;
        let std = (s2[c] / n - mean * mean).sqrt();
        assert!((mean - scenes::MEAN[c] as f64).abs() < 0.015, "channel {c}: mean {mean}");
        assert!((std - scenes::STD[c] as f64).abs() < 0.015, "channel {c}: std {std}");
    }
}

#[test]
fn bad_settings_are_errors() {
    assert!(Scenes::new(64, 11, 10, 0, Split::Train).unwrap_err().to_string().contains("1 to 10 classes"));
    assert!(Scenes::new(64, 0, 10, 0, Split::Train).is_err());
    assert!(Scenes::new(8, 10, 10, 0, Split::Train).unwrap_err().to_string().contains("at least 16 px"));
}

#[test]
fn large_scenes_for_benchmarks() {
    let (img, b) = scenes::render_scene(500, 375, 4, 1);
    assert_eq!(img.dimensions(), (500, 375));
    assert!(b.x1 <= 500.0 && b.y1 <= 375.0);
    let share = b.area() / (500.0 * 375.0);
    assert!((0.05..=0.40).contains(&share), "share {share}");
}

#[test]
fn generation_speed() {
    if !crate::slow_tests() {
        eprintln!("skipped: set SCA_SLOW_TESTS=1 (and build with --release) to time scene generation");
        return;
    }
    let ds = small(2000, 0, Split::Train);
    let t = std::time::Instant::now();
    for i in 0..2000 {
        std::hint::black_box(ds.load(i).unwrap());
    }
    let rate = 2000.0 / t.elapsed().as_secs_f64();
    eprintln!("built-in scenes: {rate:.0} images/s on one core");
    assert!(rate >= 2000.0, "{rate:.0} images/s < 2,000");
}
