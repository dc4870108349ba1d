//! Bounded mutation testing for the parsers that read untrusted bytes
//! (deb822, InRelease, wheel names, METADATA, RECORD, MatchSpecs, kiln.toml,
//! OCI documents, docker-archive manifests): each crate's unit tests feed
//! thousands of mutants of valid inputs to its parsers and require an `Ok`
//! or an `Err`, never a panic. Deterministic (a fixed seed), so a failure
//! reproduces; bounded, so it runs in every `make test`.

/// Mutants of `seeds`: bytes flipped, inserted, deleted, duplicated and
/// spliced between seeds, `rounds` per seed.
pub fn mutants<'a>(seeds: &'a [&'a [u8]], rounds: usize) -> impl Iterator<Item = Vec<u8>> + 'a {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Bytes that tend to matter to text parsers.
    const SPECIAL: &[u8] = b"\n\r\t :,=[]{}\"'\\/.-_*<>!@#$%^&()|;\0\xff\xc3";
    seeds.iter().flat_map(move |seed| {
        let mut out = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut m = seed.to_vec();
            let edits = 1 + next() % 4;
            for _ in 0..edits {
                let len = m.len().max(1) as u64;
                let at = (next() % len) as usize;
                match next() % 6 {
                    0 if !m.is_empty() => {
                        let i = at.min(m.len() - 1);
                        m[i] = next() as u8;
                    }
                    1 => m.insert(
                        at.min(m.len()),
                        SPECIAL[(next() % SPECIAL.len() as u64) as usize],
                    ),
                    2 if !m.is_empty() => {
                        let start = at.min(m.len());
                        let end = (at + 1 + (next() % 16) as usize).min(m.len());
                        m.drain(start..end);
                    }
                    3 if !m.is_empty() => {
                        let start = at.min(m.len());
                        let end = (at + 1 + (next() % 32) as usize).min(m.len());
                        let piece = m[start..end].to_vec();
                        m.splice(start..start, piece);
                    }
                    4 => m.truncate(at),
                    _ => {
                        let other = seeds[(next() % seeds.len() as u64) as usize];
                        if !other.is_empty() {
                            let from = (next() % other.len() as u64) as usize;
                            m.extend_from_slice(&other[from..]);
                        }
                    }
                }
            }
            out.push(m);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mutants_are_many_varied_and_deterministic() {
        let a: Vec<Vec<u8>> = super::mutants(&[b"Package: x\nVersion: 1\n"], 500).collect();
        let b: Vec<Vec<u8>> = super::mutants(&[b"Package: x\nVersion: 1\n"], 500).collect();
        assert_eq!(a, b);
        let distinct: std::collections::BTreeSet<&Vec<u8>> = a.iter().collect();
        assert!(distinct.len() > 400, "{}", distinct.len());
    }
}
