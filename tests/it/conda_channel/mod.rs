//! A conda channel made by the tests: small `.conda` and `.tar.bz2`
//! packages (info/index.json, info/paths.json with prefix placeholders,
//! info/link.json for noarch python) and a `repodata.json` per subdir.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use md5::Digest as _;
use serde_json::{json, Value};
use sha2::Sha256;

/// conda-build's placeholder prefix, replaced at install time.
pub const PLACEHOLDER: &str = "/opt/anaconda1anaconda2anaconda3";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Conda,
    TarBz2,
}

#[derive(Clone)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub exec: bool,
    /// `Some("text")` / `Some("binary")`: the file holds [`PLACEHOLDER`].
    pub placeholder: Option<&'static str>,
    pub symlink: Option<String>,
}

pub fn file(path: &str, data: &[u8]) -> File {
    File {
        path: path.into(),
        data: data.to_vec(),
        exec: false,
        placeholder: None,
        symlink: None,
    }
}

pub fn script(path: &str, data: &str) -> File {
    File {
        exec: true,
        placeholder: data.contains(PLACEHOLDER).then_some("text"),
        ..file(path, data.as_bytes())
    }
}

pub fn link(path: &str, target: &str) -> File {
    File {
        symlink: Some(target.into()),
        ..file(path, b"")
    }
}

/// A `python` package with just enough for kiln to find an interpreter:
/// `bin/python3.11` (a shell script), `bin/python` and `lib/python3.11/os.py`.
pub fn fake_python(version: &str) -> Pkg {
    pkg(
        "python",
        version,
        &[],
        vec![
            script("bin/python3.11", "#!/bin/sh\necho fake python\n"),
            link("bin/python", "python3.11"),
            file("lib/python3.11/os.py", b"# os\n"),
        ],
    )
}

/// `hello-py`, a noarch Python package needing `python`: one module
/// (`hello_mod`), which conda links into the environment's site-packages.
pub fn hello_py() -> Pkg {
    let mut hello = pkg(
        "hello-py",
        "0.1",
        &["python"],
        vec![file(
            "site-packages/hello_mod/__init__.py",
            b"def main():\n    print('hello')\n",
        )],
    );
    hello.subdir = "noarch".into();
    hello.build = "py_0".into();
    hello.noarch_python = true;
    hello
}

#[derive(Clone)]
pub struct Pkg {
    pub name: String,
    pub version: String,
    pub build: String,
    /// `linux-64`, `linux-aarch64` or `noarch`.
    pub subdir: String,
    pub depends: Vec<String>,
    pub files: Vec<File>,
    pub noarch_python: bool,
    pub entry_points: Vec<String>,
    pub format: Format,
}

pub fn pkg(name: &str, version: &str, depends: &[&str], files: Vec<File>) -> Pkg {
    Pkg {
        name: name.into(),
        version: version.into(),
        build: "h0_0".into(),
        subdir: "linux-64".into(),
        depends: depends.iter().map(|d| d.to_string()).collect(),
        files,
        noarch_python: false,
        entry_points: vec![],
        format: Format::Conda,
    }
}

impl Pkg {
    pub fn stem(&self) -> String {
        format!("{}-{}-{}", self.name, self.version, self.build)
    }

    pub fn filename(&self) -> String {
        match self.format {
            Format::Conda => format!("{}.conda", self.stem()),
            Format::TarBz2 => format!("{}.tar.bz2", self.stem()),
        }
    }

    fn index_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": 0,
            "depends": self.depends,
            "license": "MIT",
            "subdir": self.subdir,
        });
        if self.noarch_python {
            v["noarch"] = json!("python");
        } else if self.subdir != "noarch" {
            v["platform"] = json!("linux");
            v["arch"] = json!(if self.subdir == "linux-64" {
                "x86_64"
            } else {
                "aarch64"
            });
        }
        v
    }

    fn paths_json(&self) -> Value {
        let paths: Vec<Value> = self
            .files
            .iter()
            .map(|f| {
                let mut e = json!({
                    "_path": f.path,
                    "path_type": if f.symlink.is_some() { "softlink" } else { "hardlink" },
                    "sha256": hex::encode(Sha256::digest(&f.data)),
                    "size_in_bytes": f.data.len(),
                });
                if let Some(mode) = f.placeholder {
                    e["prefix_placeholder"] = json!(PLACEHOLDER);
                    e["file_mode"] = json!(mode);
                }
                e
            })
            .collect();
        json!({"paths": paths, "paths_version": 1})
    }

    fn info_files(&self) -> Vec<File> {
        let mut v = vec![
            file("info/index.json", self.index_json().to_string().as_bytes()),
            file("info/paths.json", self.paths_json().to_string().as_bytes()),
            file("info/about.json", b"{}"),
        ];
        if self.noarch_python {
            let link = json!({
                "noarch": {"type": "python", "entry_points": self.entry_points},
                "package_metadata_version": 1,
            });
            v.push(file("info/link.json", link.to_string().as_bytes()));
        }
        v
    }

    /// The archive's bytes.
    pub fn archive(&self) -> Vec<u8> {
        match self.format {
            Format::TarBz2 => {
                let mut all = self.files.clone();
                all.extend(self.info_files());
                let tar = tar_of(&all);
                let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                enc.write_all(&tar).unwrap();
                enc.finish().unwrap()
            }
            Format::Conda => {
                let pkg = zstd::encode_all(&tar_of(&self.files)[..], 3).unwrap();
                let info = zstd::encode_all(&tar_of(&self.info_files())[..], 3).unwrap();
                let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                let o = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored);
                z.start_file("metadata.json", o).unwrap();
                z.write_all(br#"{"conda_pkg_format_version": 2}"#).unwrap();
                z.start_file(format!("pkg-{}.tar.zst", self.stem()), o)
                    .unwrap();
                z.write_all(&pkg).unwrap();
                z.start_file(format!("info-{}.tar.zst", self.stem()), o)
                    .unwrap();
                z.write_all(&info).unwrap();
                z.finish().unwrap().into_inner()
            }
        }
    }
}

fn tar_of(files: &[File]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if let Some(t) = &f.symlink {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, &f.path, t).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(f.data.len() as u64);
            h.set_mode(if f.exec { 0o755 } else { 0o644 });
            b.append_data(&mut h, &f.path, &f.data[..]).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// Write the packages and `<subdir>/repodata.json` (for `linux-64`,
/// `linux-aarch64` and `noarch`, empty ones included) under `root`.
pub fn write_channel(root: &Path, pkgs: &[Pkg]) {
    for subdir in ["linux-64", "linux-aarch64", "noarch"] {
        let dir = root.join(subdir);
        fs::create_dir_all(&dir).unwrap();
        let mut tar_bz2 = serde_json::Map::new();
        let mut conda = serde_json::Map::new();
        for p in pkgs.iter().filter(|p| p.subdir == subdir) {
            let bytes = p.archive();
            fs::write(dir.join(p.filename()), &bytes).unwrap();
            let mut rec = p.index_json();
            rec["sha256"] = json!(hex::encode(Sha256::digest(&bytes)));
            rec["md5"] = json!(hex::encode(md5::Md5::digest(&bytes)));
            rec["size"] = json!(bytes.len());
            match p.format {
                Format::Conda => conda.insert(p.filename(), rec),
                Format::TarBz2 => tar_bz2.insert(p.filename(), rec),
            };
        }
        let repodata = json!({
            "info": {"subdir": subdir},
            "packages": tar_bz2,
            "packages.conda": conda,
            "repodata_version": 1,
        });
        fs::write(dir.join("repodata.json"), repodata.to_string()).unwrap();
    }
}
