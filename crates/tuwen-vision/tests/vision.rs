//! Backbones on real photos and real weights, preprocessing, and clear errors.

use burn::tensor::Tensor;
use serde::Deserialize;
use tuwen_testkit::{devices, flex, skip_or_fail};
use tuwen_vision::mobilenet::MobileNetV2;
use tuwen_vision::patch::PatchEmbedding;
use tuwen_vision::resnet::{ResNet, ResNetDepth};
use tuwen_vision::{
    ImageError, MAX_DECODE_BYTES, MAX_IMAGE_SIDE, Preprocess, imagenet_classes, load_rgb, top_k,
};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    photo: String,
    top3: Vec<Ranked>,
}

#[derive(Deserialize)]
struct Ranked {
    index: usize,
    label: String,
    prob: f32,
}

#[test]
fn mobilenet_v2_top1_equals_torchvision_on_real_photos() {
    let test = "mobilenet_v2_top1_equals_torchvision_on_real_photos";
    let (weights, photos) = match (
        tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors"),
        tuwen_assets::locate("photos", "coffee.png"),
    ) {
        (Ok(w), Ok(p)) => (w, p.parent().unwrap().to_path_buf()),
        (Err(e), _) | (_, Err(e)) => return skip_or_fail(test, &e.to_string()),
    };
    let reference: Reference =
        serde_json::from_str(include_str!("fixtures/photo_reference.json")).unwrap();
    let classes = imagenet_classes();
    let paths: Vec<_> = reference
        .cases
        .iter()
        .map(|c| photos.join(&c.photo))
        .collect();
    for backend in devices(test) {
        let model = MobileNetV2::from_torchvision(&weights, 1000, &backend.device).unwrap();
        let pixels = Preprocess::default()
            .load_batch(&paths, &backend.device)
            .unwrap();
        let ranked = top_k(model.forward(pixels), 5);
        for (case, ours) in reference.cases.iter().zip(&ranked) {
            let (index, prob) = ours[0];
            let want = &case.top3[0];
            println!(
                "[{}] {}: {} ({prob:.3}); torchvision {} ({:.3})",
                backend.name, case.photo, classes[index], want.label, want.prob
            );
            assert_eq!(
                classes[want.index], want.label,
                "label list out of torchvision order"
            );
            assert_eq!(
                index, want.index,
                "{}: top-1 {} != torchvision's {}",
                case.photo, classes[index], want.label
            );
            // Resampling differs slightly from PIL's, so probabilities agree only closely.
            assert!(
                (prob - want.prob).abs() < 0.05,
                "{}: p={prob} vs {}",
                case.photo,
                want.prob
            );
        }
    }
}

#[test]
fn corrupt_and_missing_images_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.png");
    // A PNG signature and nothing else.
    std::fs::write(&truncated, [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]).unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "not an image").unwrap();
    for path in [&truncated, &text] {
        let err = load_rgb(path).unwrap_err();
        assert!(matches!(err, ImageError::Decode { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(path.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
    }
    let missing = dir.path().join("missing.png");
    let err = Preprocess::default()
        .load_batch(&[&missing], &flex())
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Io(_)) && err.to_string().contains("missing.png"),
        "{err}"
    );
}

/// A 32 x 16 picture: left half red, right half blue.
fn red_left_blue_right() -> image::RgbImage {
    image::RgbImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    })
}

fn jpeg_bytes(image: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out, 95,
        ))
        .unwrap();
    out
}

fn png_bytes(image: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
        .unwrap();
    out
}

/// A minimal big-endian TIFF structure holding one IFD entry: Orientation (0x0112, SHORT, 1).
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a".to_vec();
    tiff.extend(8u32.to_be_bytes()); // offset of the first IFD
    tiff.extend(1u16.to_be_bytes()); // one entry
    tiff.extend([0x01, 0x12, 0x00, 0x03]); // tag, type SHORT
    tiff.extend(1u32.to_be_bytes()); // count
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]); // value padding
    tiff.extend(0u32.to_be_bytes()); // no next IFD
    tiff
}

/// Mostly red and mostly blue pixels (JPEG blurs the boundary).
fn is_red(p: &image::Rgb<u8>) -> bool {
    p.0[0] > 200 && p.0[2] < 60
}

fn is_blue(p: &image::Rgb<u8>) -> bool {
    p.0[2] > 200 && p.0[0] < 60
}

#[test]
fn images_declaring_too_many_pixels_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let valid = jpeg_bytes(&red_left_blue_right());
    // The SOF0 segment: FF C0, length (2), precision (1), height (2), width (2).
    let sof = valid
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    // 2064 x 65535: the side limit (a fuzz case that used to cost 400 MB and ~8 s);
    // 16000 x 16000: each side allowed, but 768 MB decoded.
    for (name, width, height) in [("tall.jpg", 2064u16, 65535u16), ("huge.jpg", 16000, 16000)] {
        let mut bytes = valid.clone();
        bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        assert!(bytes.len() < 2000, "a small file: {} bytes", bytes.len());
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let start = std::time::Instant::now();
        let err = load_rgb(&path).unwrap_err();
        assert!(
            start.elapsed().as_secs_f64() < 1.0,
            "refused before decoding: {:?}",
            start.elapsed()
        );
        assert!(
            matches!(err, ImageError::TooLarge { width: w, height: h, .. }
                if w == width as u32 && h == height as u32),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("{width} x {height}")), "{text}");
        assert!(text.contains(&MAX_IMAGE_SIDE.to_string()), "{text}");
        assert!(
            text.contains(&format!("{} MiB", MAX_DECODE_BYTES >> 20)),
            "{text}"
        );
    }
    // The unpatched file still loads.
    let path = dir.path().join("valid.jpg");
    std::fs::write(&path, &valid).unwrap();
    assert_eq!(load_rgb(&path).unwrap().dimensions(), (32, 16));
}

#[test]
fn exif_orientation_is_applied_to_jpeg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let picture = red_left_blue_right();

    // JPEG with an APP1 Exif segment right after SOI: orientation 6 (rotate 90 degrees
    // clockwise to display), so the left half (red) ends up on top.
    let jpeg = jpeg_bytes(&picture);
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(exif_orientation(6));
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend((payload.len() as u16 + 2).to_be_bytes());
    app1.extend(payload);
    let mut rotated = jpeg[..2].to_vec();
    rotated.extend(&app1);
    rotated.extend(&jpeg[2..]);
    let plain_path = dir.path().join("plain.jpg");
    std::fs::write(&plain_path, &jpeg).unwrap();
    let plain = load_rgb(&plain_path).unwrap();
    assert_eq!(plain.dimensions(), (32, 16));
    assert!(is_red(plain.get_pixel(2, 8)) && is_blue(plain.get_pixel(29, 8)));
    let path = dir.path().join("phone.jpg");
    std::fs::write(&path, &rotated).unwrap();
    let upright = load_rgb(&path).unwrap();
    assert_eq!(
        upright.dimensions(),
        (16, 32),
        "orientation 6 swaps the sides"
    );
    assert!(
        is_red(upright.get_pixel(8, 2)) && is_blue(upright.get_pixel(8, 29)),
        "red on top, blue at the bottom: {:?} / {:?}",
        upright.get_pixel(8, 2),
        upright.get_pixel(8, 29)
    );

    // PNG with an eXIf chunk after IHDR: orientation 8 (rotate 90 degrees counter-clockwise),
    // so the left half (red) ends up at the bottom.
    let png = png_bytes(&picture);
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let data = exif_orientation(8);
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let mut typed = b"eXIf".to_vec();
    typed.extend(&data);
    chunk.extend(&typed);
    chunk.extend(crc32fast::hash(&typed).to_be_bytes());
    let mut rotated = png[..ihdr_end].to_vec();
    rotated.extend(&chunk);
    rotated.extend(&png[ihdr_end..]);
    let path = dir.path().join("phone.png");
    std::fs::write(&path, &rotated).unwrap();
    let upright = load_rgb(&path).unwrap();
    assert_eq!(upright.dimensions(), (16, 32));
    assert_eq!(
        upright.get_pixel(8, 2),
        &image::Rgb([0, 0, 255]),
        "blue on top"
    );
    assert_eq!(upright.get_pixel(8, 29), &image::Rgb([255, 0, 0]));
}

#[test]
fn preprocessing_is_rgb_resized_on_the_short_side_and_centre_cropped() {
    // 300x200 image: left half red, right half blue.
    let image = image::RgbImage::from_fn(300, 200, |x, _| {
        if x < 150 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let pre = Preprocess::default();
    let cropped = pre.resize_crop(&image);
    assert_eq!(cropped.dimensions(), (224, 224));
    let pixels = pre.batch(&[image], &flex());
    assert_eq!(pixels.dims(), [1, 3, 224, 224]);
    let values: Vec<f32> = pixels.into_data().try_into_vec_as().unwrap();
    let at = |c: usize, y: usize, x: usize| values[c * 224 * 224 + y * 224 + x];
    let red = (1.0 - 0.485) / 0.229;
    assert!(
        (at(0, 100, 10) - red).abs() < 1e-4,
        "channel 0 is red: {}",
        at(0, 100, 10)
    );
    assert!(
        at(2, 100, 10) < 0.0 && at(2, 100, 210) > 2.0,
        "channel 2 is blue"
    );
}

#[test]
fn resnet_stages_have_the_documented_geometry() {
    let device = flex();
    for (depth, channels) in [
        (ResNetDepth::R18, [64, 128, 256, 512]),
        (ResNetDepth::R50, [256, 512, 1024, 2048]),
    ] {
        let model = ResNet::new(depth, 7, &device);
        let maps = model.stages(Tensor::zeros([1, 3, 64, 96], &device));
        for ((map, stride), c) in maps.iter().zip([4, 8, 16, 32]).zip(channels) {
            assert_eq!(map.stride, stride);
            assert_eq!(map.tensor.dims(), [1, c, 64 / stride, 96 / stride]);
        }
        assert_eq!(depth.feature_channels(), channels[3]);
        assert_eq!(
            model.forward(Tensor::zeros([2, 3, 64, 64], &device)).dims(),
            [2, 7]
        );
    }
}

#[test]
fn a_checkpoint_of_another_depth_is_refused_with_the_tensor_names() {
    let test = "a_checkpoint_of_another_depth_is_refused_with_the_tensor_names";
    let weights = match tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors") {
        Ok(w) => w,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let err = ResNet::from_torchvision(ResNetDepth::R18, &weights, 1000, &flex()).unwrap_err();
    let msg = err.to_string();
    // Hundreds of tensors disagree: the report names the file and the model, lists the first
    // ones and counts the rest.
    assert!(
        msg.contains("mobilenet_v2.safetensors") && msg.contains("torchvision.resnet"),
        "{msg}"
    );
    assert!(
        msg.contains("missing from checkpoint: ") && msg.contains("... and "),
        "{msg}"
    );
    let err = MobileNetV2::from_torchvision(&weights, 10, &flex()).unwrap_err();
    assert!(err.to_string().contains("classifier.weight"), "{err}");
}

#[test]
fn patch_embedding_prepends_cls_and_adds_positions() {
    let device = flex();
    let embed = PatchEmbedding::new(32, 8, 12, &device);
    let tokens = embed.forward(Tensor::zeros([2, 3, 32, 32], &device));
    assert_eq!(tokens.dims(), [2, 17, 12]);
}
