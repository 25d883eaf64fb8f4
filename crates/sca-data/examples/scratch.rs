use sca_data::*;
struct Instant(u64);
impl Instant { fn now() -> Self { Instant(cpu()) } fn elapsed(&self) -> std::time::Duration { std::time::Duration::from_nanos(cpu() - self.0) } }
fn cpu() -> u64 { std::fs::read_to_string("/proc/thread-self/schedstat").unwrap().split_whitespace().next().unwrap().parse().unwrap() }
fn main() {
    let dir = std::path::Path::new("/tmp/jpegs/bench");
    if false {
    std::fs::create_dir_all(dir).unwrap();
    let mut total = 0;
    for i in 0..100 {
        let (img, _) = scenes::render_scene(500, 375, i % 10, i as u64 + 1000);
        let p = dir.join(format!("{i:04}.jpg"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 90).encode_image(&img).unwrap();
        drop(f);
        total += std::fs::metadata(&p).unwrap().len();
    }
    println!("avg jpeg {} KB", total / 100 / 1024);
    }
    let files: Vec<_> = (0..100).map(|i| std::fs::read(dir.join(format!("{i:04}.jpg"))).unwrap()).collect();
    let t = Instant::now();
    let imgs: Vec<_> = files.iter().map(|b| image_folder::decode_bytes(std::path::Path::new("x"), b).unwrap()).collect();
    let dt = t.elapsed().as_secs_f64() / 100.0;
    println!("decode {:.2} ms", dt * 1e3);
    let aug = AugmentConfig::default();
    let mut buf224 = vec![0f32; 3 * 224 * 224];
    let mut buf96 = vec![0f32; 3 * 96 * 96];
    let t = Instant::now();
    for (i, im) in imgs.iter().enumerate() {
        for v in 0..8 {
            let c = aug.crop_of_view(v);
            let b = if c.size == 224 { &mut buf224 } else { &mut buf96 };
            augment::augment_view(im, c, &aug, (i * 8 + v) as u64, b);
        }
    }
    let da = t.elapsed().as_secs_f64() / 100.0;
    println!("augment 8 views {:.2} ms; total {:.2} ms → {:.0} img/s", da * 1e3, (da + dt) * 1e3, 1.0 / (da + dt));
    // per stage for 224
    let im = &imgs[0];
    let mut rng = rng::rng_from_key(5);
    let t = Instant::now();
    for _ in 0..100 { let p = augment::sample_view_params(500, 375, &aug.crops[0], &aug, &mut rng); std::hint::black_box(transform::resized_crop(im, p.crop, 224, 224, false)); }
    println!("resample 224: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
    let mut p = transform::resized_crop(im, transform::CropRect{x:0.,y:0.,w:300.,h:300.}, 224, 224, false);
    let t = Instant::now();
    for _ in 0..100 { transform::adjust_hue(&mut p, 0.1); }
    println!("hue 224: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
    let t = Instant::now();
    for _ in 0..100 { transform::adjust_contrast(&mut p, 1.1); transform::adjust_saturation(&mut p, 0.9); transform::adjust_brightness(&mut p, 1.1); }
    println!("b+c+s 224: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
    let t = Instant::now();
    for _ in 0..100 { transform::gaussian_blur(&mut p, 23, 1.5); }
    println!("blur 224 s1.5: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
    let t = Instant::now();
    for _ in 0..100 { transform::normalise_into(&p, aug.mean, aug.std, &mut buf224); }
    println!("norm 224: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
}
