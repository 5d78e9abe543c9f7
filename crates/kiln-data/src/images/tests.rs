use super::*;
use image::{GrayImage, Luma, Rgb, RgbImage};

/// A `w x h` grayscale image whose pixel (x, y) is `f(x, y)`.
fn gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> DynamicImage {
    DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)])))
}

fn save(img: &DynamicImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// ROOT/{a,b}/ with two PNGs and a JPEG, plus a hidden file and folder and a text file.
fn folder(root: &Path) {
    let img = gray(6, 4, |x, y| (x * 40 + y) as u8);
    save(&img, &root.join("a/1.png"));
    save(&img, &root.join("a/2.JPG"));
    save(&img, &root.join("b/3.png"));
    save(&img, &root.join(".hidden/4.png"));
    std::fs::write(root.join("a/.5.png"), b"not an image").unwrap();
    std::fs::write(root.join("b/notes.txt"), b"text").unwrap();
}

#[test]
fn a_folder_of_class_folders_is_listed_in_order_without_hidden_or_other_files() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path());
    let f = ImageFolder::scan(dir.path()).unwrap();
    assert_eq!(f.classes, ["a", "b"]);
    let names: Vec<(String, u32)> = (f.train.iter())
        .map(|i| {
            (
                i.path.file_name().unwrap().to_string_lossy().into(),
                i.class,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("1.png".into(), 0),
            ("2.JPG".into(), 0),
            ("3.png".into(), 1)
        ]
    );
    assert_eq!((f.valid, f.test), (None, None));
}

#[test]
fn train_valid_and_test_sub_roots_share_the_training_classes() {
    let dir = tempfile::tempdir().unwrap();
    folder(&dir.path().join("train"));
    save(&gray(6, 4, |_, _| 9), &dir.path().join("test/b/9.png"));
    let f = ImageFolder::scan(dir.path()).unwrap();
    assert_eq!(f.train.len(), 3);
    assert_eq!(f.test.as_ref().unwrap()[0].class, 1);
    assert_eq!(f.valid, None);

    save(&gray(6, 4, |_, _| 9), &dir.path().join("test/c/9.png"));
    let e = format!("{:#}", ImageFolder::scan(dir.path()).unwrap_err());
    assert!(
        e.contains("test/c") && e.contains("class `c` is not one of the training classes (a, b)"),
        "{e}"
    );
}

#[test]
fn an_empty_class_folder_or_a_folder_without_classes_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path());
    std::fs::create_dir(dir.path().join("c")).unwrap();
    let e = format!("{:#}", ImageFolder::scan(dir.path()).unwrap_err());
    assert!(e.contains("class folder `c` holds no image"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = format!("{:#}", ImageFolder::scan(empty.path()).unwrap_err());
    assert!(e.contains("no class folders"), "{e}");
    let e = format!(
        "{:#}",
        ImageFolder::scan(&dir.path().join("nope")).unwrap_err()
    );
    assert!(e.contains("not a folder"), "{e}");
}

#[test]
fn images_become_planar_values_in_0_1_resized_or_refused_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    let rgb = RgbImage::from_fn(3, 2, |x, y| Rgb([(x * 100) as u8, (y * 255) as u8, 51]));
    DynamicImage::ImageRgb8(rgb).save(&path).unwrap();
    let spec = ImageSpec::decide(&path, None, None).unwrap();
    assert_eq!(spec.sample_shape(), [3, 2, 3]);
    let v = spec.read(&path, "hint").unwrap();
    // Channel planes: red rows [0, 100, 200], green rows of 0 then 1, blue 0.2 everywhere.
    assert_eq!(&v[..3], &[0.0, 100.0 / 255.0, 200.0 / 255.0]);
    assert_eq!(&v[6..12], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    assert!(v[12..].iter().all(|&b| b == 0.2));

    let luma = ImageSpec {
        channels: 1,
        ..spec
    };
    assert_eq!(luma.read(&path, "hint").unwrap().len(), 6);
    let other = dir.path().join("y.png");
    save(&gray(5, 5, |_, _| 0), &other);
    let e = format!("{:#}", spec.read(&other, "set it").unwrap_err());
    assert!(
        e.contains("y.png: the image is 5x5 (width x height), not 3x2; set it"),
        "{e}"
    );
    let resize = ImageSpec::decide(&path, Some([4, 4]), Some(1)).unwrap();
    assert_eq!(resize.read(&other, "").unwrap().len(), 16);
}

#[test]
fn exif_orientation_turns_a_jpeg_upright() {
    // 16x8: left half black, right half white; EXIF orientation 6 (rotate 90 degrees
    // clockwise) makes it 8x16 with the black half on top.
    let img = gray(16, 8, |x, _| if x < 8 { 0 } else { 255 });
    let mut jpeg = Vec::new();
    img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let mut app1 = vec![0xFF, 0xE1, 0, 34];
    app1.extend(b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0");
    jpeg.splice(2..2, app1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turned.jpg");
    std::fs::write(&path, &jpeg).unwrap();
    let upright = open(&path).unwrap();
    assert_eq!((upright.width(), upright.height()), (8, 16));
    let luma = upright.to_luma8();
    assert!(luma.get_pixel(4, 2)[0] < 30 && luma.get_pixel(4, 13)[0] > 225);
}

#[test]
fn a_truncated_jpeg_is_an_error_naming_the_file_and_what_to_do() {
    let mut jpeg = Vec::new();
    gray(32, 32, |x, y| (x * y) as u8)
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.jpg");
    std::fs::write(&path, &jpeg[..jpeg.len() / 2]).unwrap();
    let e = format!("{:#}", open(&path).unwrap_err());
    assert!(
        e.contains("cut.jpg: cannot decode the image") && e.contains("data.skip_bad_images"),
        "{e}"
    );
    // The whole file decodes; so does one with bytes after its end marker.
    std::fs::write(&path, [jpeg.as_slice(), b"trailer"].concat()).unwrap();
    assert!(open(&path).is_ok());
    std::fs::write(&path, &jpeg[..jpeg.len() / 2]).unwrap();
    let mut png = Vec::new();
    gray(32, 32, |x, y| (x * y) as u8)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let cut_png = dir.path().join("cut.png");
    std::fs::write(&cut_png, &png[..png.len() - 20]).unwrap();
    let e = format!("{:#}", open(&cut_png).unwrap_err());
    assert!(e.contains("cut.png: cannot decode the image"), "{e}");
    let mut files = vec![
        ImageFile {
            path: path.clone(),
            class: 0,
        },
        ImageFile {
            path: dir.path().join("fine.png"),
            class: 1,
        },
    ];
    save(&gray(32, 32, |_, _| 1), &files[1].path);
    let spec = ImageSpec::decide(&files[1].path, None, None).unwrap();
    let dropped = drop_unreadable(&mut files, &spec, 2);
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].0, path);
    assert_eq!(files.len(), 1);
}

#[test]
fn augmentation_is_a_function_of_seed_epoch_and_index() {
    let spec = ImageSpec {
        channels: 2,
        height: 5,
        width: 6,
        resize: false,
    };
    let base: Vec<f32> = (0..60).map(|i| i as f32 + 1.0).collect();
    let augment = Augment {
        crop_padding: 2,
        flip: true,
        seed: 7,
    };
    let run = |epoch, index| {
        let mut s = base.clone();
        augment.apply(&mut s, &spec, epoch, index);
        s
    };
    assert_eq!(run(3, 11), run(3, 11));
    let variants: std::collections::HashSet<Vec<u32>> = (0..20)
        .map(|e| run(e, 11).iter().map(|v| v.to_bits()).collect())
        .collect();
    assert!(
        variants.len() > 5,
        "only {} distinct augmentations",
        variants.len()
    );
    // Every value is a pixel of the same channel or padding.
    for e in 0..20 {
        let s = run(e, 4);
        assert!(s[..30]
            .iter()
            .all(|&v| v == 0.0 || (1.0..=30.0).contains(&v)));
        assert!(s[30..]
            .iter()
            .all(|&v| v == 0.0 || (31.0..=60.0).contains(&v)));
    }
    // A flip alone mirrors each row.
    let flip = Augment {
        crop_padding: 0,
        flip: true,
        seed: 1,
    };
    let flipped = (0..50)
        .map(|i| {
            let mut s = base.clone();
            flip.apply(&mut s, &spec, 0, i);
            s
        })
        .find(|s| *s != base)
        .expect("some sample is flipped");
    assert_eq!(&flipped[..6], &[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
}

#[test]
fn a_set_gathers_standardized_batches_and_its_channel_statistics() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path());
    let f = ImageFolder::scan(dir.path()).unwrap();
    let spec = ImageSpec::decide(&f.train[0].path, None, None).unwrap();
    let mut set = ImageSet {
        files: f.train.clone(),
        spec,
        classes: Arc::new(f.classes.clone()),
        standardizer: None,
        augment: None,
    };
    let raw = set.gather(&[2, 0]).unwrap();
    assert_eq!(raw.x_shape, [2, 1, 4, 6]);
    assert_eq!(raw.y, [1, 0]);
    let stats = set.channel_statistics(10, 2).unwrap();
    assert_eq!(stats.mean.len(), 24);
    set.standardizer = Some(stats);
    let b = set.gather(&[0, 1, 2]).unwrap();
    let mean = b.x.iter().sum::<f32>() / b.x.len() as f32;
    assert!(mean.abs() < 1e-4, "standardized mean {mean}");
}
