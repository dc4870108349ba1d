//! OpenSSL's subject-name hash (`openssl x509 -hash`), which names the
//! `/etc/ssl/certs/<hash>.0` links `update-ca-certificates` makes and
//! OpenSSL's CA directory lookup uses.
//!
//! The hash is the first four bytes (little-endian) of the SHA-1 of the
//! subject's canonical encoding: every RDN's SET, one after another, with
//! string values converted to UTF-8, trimmed, inner whitespace collapsed to
//! one space, ASCII lowercased, and re-encoded as UTF8String. Written here
//! (on x509-cert's parser) because no crate exposes OpenSSL's canonical form.

use base64::Engine;
use sha1::{Digest, Sha1};
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::Certificate;

/// The subject hash of the first certificate in a PEM file.
pub fn subject_hash(pem: &[u8]) -> Option<u32> {
    let der = pem_to_der(pem)?;
    let cert = Certificate::from_der(&der).ok()?;
    let mut canon = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        let mut avas: Vec<Vec<u8>> = Vec::new();
        for atv in rdn.0.iter() {
            let value = match canonical_text(atv.value.tag(), atv.value.value()) {
                Some(text) => tlv(0x0c, &text),
                None => atv.value.to_der().ok()?,
            };
            let mut body = tlv(0x06, atv.oid.as_bytes());
            body.extend(value);
            avas.push(tlv(0x30, &body));
        }
        avas.sort();
        canon.extend(tlv(0x31, &avas.concat()));
    }
    let h = Sha1::digest(&canon);
    Some(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + text[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = text[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A string value as canonical UTF-8; `None` for non-string values.
fn canonical_text(tag: Tag, bytes: &[u8]) -> Option<Vec<u8>> {
    let utf8: Vec<u8> = match tag {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            bytes.to_vec()
        }
        // Latin-1.
        Tag::TeletexString => bytes
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .into_bytes(),
        Tag::BmpString => {
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16_lossy(&units).into_bytes()
        }
        _ => return None,
    };
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let trimmed = {
        let s = utf8.iter().position(|&b| !space(b)).unwrap_or(utf8.len());
        let e = utf8.iter().rposition(|&b| !space(b)).map_or(s, |e| e + 1);
        &utf8[s..e]
    };
    let mut out = Vec::with_capacity(trimmed.len());
    let mut i = 0;
    while i < trimmed.len() {
        let b = trimmed[i];
        if !b.is_ascii() {
            out.push(b);
            i += 1;
        } else if space(b) {
            out.push(b' ');
            while i < trimmed.len() && space(trimmed[i]) {
                i += 1;
            }
        } else {
            out.push(b.to_ascii_lowercase());
            i += 1;
        }
    }
    Some(out)
}

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_strings() {
        assert_eq!(
            canonical_text(Tag::PrintableString, b"  Foo   Bar\tBAZ ").unwrap(),
            b"foo bar baz"
        );
        assert_eq!(
            canonical_text(Tag::Utf8String, "ÉCOLE  x".as_bytes()).unwrap(),
            "Écolex".replace("x", " x").as_bytes()
        );
        assert!(canonical_text(Tag::Integer, b"\x01").is_none());
        assert_eq!(tlv(0x04, &[0u8; 200])[..3], [0x04, 0x81, 200]);
    }
}
