//! Wheels made by the tests: zip members plus a RECORD that lists each of
//! them with its sha256 and size, as a wheel builder writes it.

use std::io::Write;

use sha2::{Digest as _, Sha256};

use super::base64;

/// A wheel (zip bytes) of `members` (`path`, content, unix mode); the
/// `.dist-info/RECORD` is written last, for the `.dist-info` that holds
/// `METADATA`.
pub fn wheel_zip(members: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let dist_info = members
        .iter()
        .find_map(|(p, _, _)| {
            p.strip_suffix("/METADATA")
                .filter(|d| d.ends_with(".dist-info"))
        })
        .expect("a wheel needs a .dist-info/METADATA")
        .to_string();
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut record = String::new();
    for (path, data, mode) in members {
        let o = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        z.start_file(path.as_str(), o).unwrap();
        z.write_all(data).unwrap();
        record.push_str(&format!("{path},{},{}\n", record_hash(data), data.len()));
    }
    let record_path = format!("{dist_info}/RECORD");
    record.push_str(&format!("{record_path},,\n"));
    let o = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    z.start_file(record_path.as_str(), o).unwrap();
    z.write_all(record.as_bytes()).unwrap();
    z.finish().unwrap().into_inner()
}

/// `sha256=<urlsafe base64, no padding>`, RECORD's form.
pub fn record_hash(data: &[u8]) -> String {
    let b64 = base64(&Sha256::digest(data));
    format!(
        "sha256={}",
        b64.trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    )
}

/// `tinywheel-V-py3-none-any.whl`: a pure-Python wheel whose module says
/// its version (`V = "1.0"`).
pub fn tinywheel(v: &str) -> Vec<u8> {
    wheel_zip(&[
        (
            "tinywheel/__init__.py".into(),
            format!("V = {v:?}\n").into_bytes(),
            0o644,
        ),
        (
            format!("tinywheel-{v}.dist-info/METADATA"),
            format!("Metadata-Version: 2.1\nName: tinywheel\nVersion: {v}\n").into_bytes(),
            0o644,
        ),
        (
            format!("tinywheel-{v}.dist-info/WHEEL"),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ])
}

/// A Python environment folder REL in WS: a requirements.txt that installs
/// `tinywheel==1.0` from the `wheels/` folder beside it (`--no-index
/// --find-links wheels`), and that wheel.
pub fn tinywheel_env(ws: &super::Workspace, rel: &str) {
    ws.write(
        &format!("{rel}/requirements.txt"),
        "--no-index\n--find-links wheels\ntinywheel==1.0\n",
    );
    let di = "tinywheel-1.0.dist-info";
    let wheel = wheel_zip(&[
        (
            "tinywheel/__init__.py".into(),
            b"VERSION = 1\n".to_vec(),
            0o644,
        ),
        (
            format!("{di}/METADATA"),
            b"Metadata-Version: 2.1\nName: tinywheel\nVersion: 1.0\n".to_vec(),
            0o644,
        ),
        (
            format!("{di}/WHEEL"),
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
            0o644,
        ),
    ]);
    ws.write(
        &format!("{rel}/wheels/tinywheel-1.0-py3-none-any.whl"),
        wheel,
    );
}
