//! Backbones on real photos and real weights, preprocessing, and clear errors.

use burn::tensor::Tensor;
use serde::Deserialize;
use tuwen_testkit::{devices, flex, skip_or_fail};
use tuwen_vision::mobilenet::MobileNetV2;
use tuwen_vision::patch::PatchEmbedding;
use tuwen_vision::resnet::{ResNet, ResNetDepth};
use tuwen_vision::{ImageError, Preprocess, imagenet_classes, load_rgb, top_k};

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
        matches!(err, ImageError::Io { .. }) && err.to_string().contains("missing.png"),
        "{err}"
    );
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
