//! `tuwen extract-regions` throughput and memory: images/s and peak RSS after a few images and
//! after many, to show that memory does not grow with the number of images (the store writes
//! shard by shard and never holds more than one shard).
//!
//! Real photos from the assets (copied under many names), the real ImageNet MobileNetV2, Flex.
//! Run with `cargo xtask bench` (or `cargo test --workspace --benches -- --bench`).

use std::time::Instant;

use tuwen_cli::extract::{ExtractOptions, run};
use tuwen_regions::{ExtractorConfig, StoreDtype};
use tuwen_vision::Backbone;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` smoke mode: nothing to check here.
    }
    let (weights, photos) = match (
        tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors"),
        tuwen_assets::locate("photos", "coffee.png"),
    ) {
        (Ok(w), Ok(p)) => (w, p.parent().unwrap().to_path_buf()),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("extract_regions bench skipped: {e}");
            return;
        }
    };
    let sources = [
        "coffee.png",
        "chelsea.png",
        "motorcycle_left.png",
        "rocket.jpg",
    ];
    let images = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let device = burn::tensor::Device::flex();
    let mut total = 0;
    for (round, count) in [(0, 8), (1, 56)] {
        for i in 0..count {
            let src = sources[i % sources.len()];
            let ext = src.rsplit('.').next().unwrap();
            std::fs::copy(
                photos.join(src),
                images.path().join(format!("r{round}_{i:04}.{ext}")),
            )
            .unwrap();
        }
        total += count;
        let start = Instant::now();
        let summary = run(ExtractOptions {
            images: images.path(),
            out: store.path(),
            backbone: Backbone::from_torchvision("mobilenet_v2", &weights, 1000, &device).unwrap(),
            boxes: None,
            dtype: StoreDtype::F16,
            config: ExtractorConfig::default(),
            device: device.clone(),
        })
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "extract_regions/mobilenet_v2_flex: {total} images in store, {} new in {secs:.1} s = {:.2} images/s, peak RSS {:.0} MiB",
            summary.extracted,
            summary.extracted as f64 / secs,
            peak_rss_mib()
        );
    }
}
