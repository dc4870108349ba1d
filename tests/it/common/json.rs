//! Digests, typed access to JSON values, and RFC 3339 timestamps.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

#[track_caller]
pub fn assert_digest(v: &Value) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("digest is not a string: {v}"));
    let hex = s
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {s:?} lacks sha256:"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "malformed digest {s:?}"
    );
    s.to_string()
}

#[track_caller]
pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `v[key]` as a string, panicking with context.
#[track_caller]
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key:?} is not a string in {v}"))
}

/// Strings of a JSON array.
#[track_caller]
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("not a string: {x}"))
                .to_string()
        })
        .collect()
}

/// Sorted keys of a JSON object (`{}` and null give an empty list).
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`) of a Unix time, for `created`
/// checks. GNU `date` computes it, so the oracle is not kiln's own arithmetic.
pub fn rfc3339(epoch: i64) -> String {
    let out = Command::new("date")
        .env("LC_ALL", "C")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("running date");
    assert!(out.status.success(), "date failed for {epoch}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Two RFC 3339 timestamps denote the same instant (tolerates `.000`, `+00:00`).
pub fn same_instant(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> String {
        let s = s.replace("+00:00", "Z");
        match (s.find('.'), s.ends_with('Z')) {
            (Some(dot), true) if s[dot + 1..s.len() - 1].bytes().all(|c| c == b'0') => {
                format!("{}Z", &s[..dot])
            }
            _ => s,
        }
    }
    norm(a) == norm(b)
}
