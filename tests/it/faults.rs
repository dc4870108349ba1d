//! Registry faults: a loopback proxy in front of the real docker-registry
//! answers a share of requests with 503, with 429 + `Retry-After`, by
//! cutting the connection before the response, or by cutting it half-way
//! through the response after the registry acted on the request. Pushes and
//! pulls through it must all succeed, with the digests of a clean run. A
//! proxy that refuses one request for good shows what a failed push says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use crate::common::*;

/// Counts of what the proxy did.
#[derive(Default)]
pub struct FaultStats {
    pub requests: AtomicUsize,
    pub faults: AtomicUsize,
}

/// A loopback HTTP/1.1 proxy to `127.0.0.1:upstream` that injects faults
/// into `percent`% of requests. Every answer closes its connection, so each
/// request arrives on a fresh one (clients reconnect).
pub struct FaultProxy {
    pub port: u16,
    pub stats: Arc<FaultStats>,
}

impl FaultProxy {
    pub fn start(upstream: u16, percent: u64, seed: u64) -> FaultProxy {
        Self::with_refusal(upstream, percent, seed, None)
    }

    /// A proxy without random faults that answers every request whose
    /// request line starts with `refused` (`PUT /v2/REPO/manifests/TAG `)
    /// with a permanent 400 `TAG_INVALID`, as a registry with immutable
    /// tags does.
    pub fn refusing(upstream: u16, refused: &str) -> FaultProxy {
        Self::with_refusal(upstream, 0, 1, Some(refused.to_string()))
    }

    fn with_refusal(upstream: u16, percent: u64, seed: u64, refused: Option<String>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(FaultStats::default());
        let rng = Arc::new(AtomicU64::new(seed | 1));
        let s = stats.clone();
        let refused = Arc::new(refused);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, rng, refused) = (s.clone(), rng.clone(), refused.clone());
                thread::spawn(move || {
                    let _ = serve(conn, upstream, percent, &rng, &s, refused.as_deref());
                });
            }
        });
        FaultProxy { port, stats }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// xorshift64 over a shared state: which request gets which fault.
fn next(rng: &AtomicU64) -> u64 {
    let mut x = rng.load(Ordering::Relaxed);
    loop {
        let mut y = x;
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        match rng.compare_exchange(x, y, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return y,
            Err(cur) => x = cur,
        }
    }
}

/// One request: read it whole (head, then a Content-Length or chunked
/// body), then fault it or forward it.
fn serve(
    client: TcpStream,
    upstream: u16,
    percent: u64,
    rng: &AtomicU64,
    stats: &FaultStats,
    refused: Option<&str>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let end = line == b"\r\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let header = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size_line = Vec::new();
            reader.read_until(b'\n', &mut size_line)?;
            body.extend_from_slice(&size_line);
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&size_line)
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or("0"),
                16,
            )
            .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let mut client = client;
    if refused.is_some_and(|r| text.starts_with(r)) {
        stats.faults.fetch_add(1, Ordering::Relaxed);
        let body = br#"{"errors":[{"code":"TAG_INVALID","message":"tag is immutable"}]}"#;
        write!(
            client,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        client.write_all(body)?;
        return client.shutdown(Shutdown::Both);
    }
    let roll = next(rng);
    if roll % 100 < percent {
        stats.faults.fetch_add(1, Ordering::Relaxed);
        match (roll / 100) % 4 {
            0 => {
                client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return client.shutdown(Shutdown::Both);
            }
            1 => {
                client.write_all(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return client.shutdown(Shutdown::Both);
            }
            2 => return client.shutdown(Shutdown::Both),
            _ => {
                // The registry acts on the request; the client sees half
                // of the answer.
                let response = forward(&text, &body, upstream)?;
                client.write_all(&response[..response.len() / 2])?;
                return client.shutdown(Shutdown::Both);
            }
        }
    }
    let response = forward(&text, &body, upstream)?;
    client.write_all(&response)?;
    client.shutdown(Shutdown::Both)
}

/// Send the request upstream with `Connection: close` and read the whole
/// answer; the answer to the client also says `Connection: close`.
fn forward(head: &str, body: &[u8], upstream: u16) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(closing(head).as_bytes())?;
    up.write_all(body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(response);
    };
    let (resp_head, rest) = response.split_at(split + 4);
    let mut v = closing(&String::from_utf8_lossy(resp_head)).into_bytes();
    v.extend_from_slice(rest);
    Ok(v)
}

/// An HTTP head with its `Connection` header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for l in head.lines() {
        if l.is_empty() || l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// A small image with two file layers, pushed as `repo:tag` through `host`.
fn push_through(ws: &Workspace, host: &str, repo: &str) -> Run {
    ws.spec(&format!(
        "[image]\nname = \"{host}/{repo}\"\ntags = [\"v1\"]\n\n\
         [[files]]\nsrc = \"a.txt\"\ndst = \"/a.txt\"\n\n\
         [[files]]\nsrc = \"big.bin\"\ndst = \"/big.bin\"\n"
    ));
    ws.kiln()
        .env("KILN_RETRY_DEADLINE", "60")
        .args(["build", "--push", "--json"])
        .run()
}

fn fault_workspace(label: &str) -> Workspace {
    let ws = Workspace::new(label);
    ws.write("a.txt", "hello through a bad network\n");
    // Large enough that its upload is several requests' worth of work for
    // the registry and its response cut matters.
    let big: Vec<u8> = (0..(3 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    ws.write("big.bin", big);
    ws
}

#[test]
fn pushes_and_pulls_survive_a_faulty_registry() {
    let reg = Registry::shared();
    // The clean run: what every faulty run must reproduce.
    let clean_ws = fault_workspace("faults-clean");
    let clean = push_through(&clean_ws, &reg.host(), &unique_repo("faults-clean"));
    let clean = clean.ok().json();
    let want = s(&clean, "digest").to_string();

    let proxy = FaultProxy::start(reg.port, 20, 0x5eed);
    const PUSHES: usize = 50;
    const THREADS: usize = 5;
    let results: Vec<(bool, String, String)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let proxy = &proxy;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for i in (t..PUSHES).step_by(THREADS) {
                        let ws = fault_workspace(&format!("faults-push-{i}"));
                        let r = push_through(&ws, &proxy.host(), &unique_repo("faults"));
                        let ok = r.code() == Some(0);
                        let digest = if ok {
                            s(&r.json(), "digest").to_string()
                        } else {
                            String::new()
                        };
                        out.push((ok, digest, r.describe()));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let failed: Vec<&String> = results.iter().filter(|r| !r.0).map(|r| &r.2).collect();
    let faults = proxy.stats.faults.load(Ordering::Relaxed);
    let requests = proxy.stats.requests.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {PUSHES} pushes failed through the faulty proxy ({faults} faults in {requests} requests); first:\n{}",
        failed.len(),
        failed[0]
    );
    for (_, d, _) in &results {
        assert_eq!(d, &want, "a push through faults gives the clean digest");
    }
    assert!(
        faults * 10 >= requests,
        "the proxy injected faults: {faults}/{requests}"
    );
    eprintln!("faults: {PUSHES}/{PUSHES} pushes, {faults} faults in {requests} requests");

    // Pulls: build on the pushed image through the proxy, each with an
    // empty cache, so every base blob is fetched through the faults.
    let base_repo = unique_repo("faults-base");
    let ws = fault_workspace("faults-base");
    push_through(&ws, &reg.host(), &base_repo).ok();
    const PULLS: usize = 10;
    let mut pulled = Vec::new();
    for i in 0..PULLS {
        let ws = Workspace::new(&format!("faults-pull-{i}"));
        ws.write("c.txt", "on top\n");
        ws.spec(&format!(
            "[image]\nbase = \"{}/{base_repo}:v1\"\n\n[[files]]\nsrc = \"c.txt\"\ndst = \"/c.txt\"\n",
            proxy.host()
        ));
        let r = ws
            .kiln()
            .env("KILN_CACHE", unique_dir("faults-cache"))
            .env("KILN_RETRY_DEADLINE", "60")
            .args(["build", "--json", "-o", "oci:out"])
            .run();
        assert_eq!(r.code(), Some(0), "pull {i} failed:\n{}", r.describe());
        pulled.push(s(&r.json(), "digest").to_string());
    }
    pulled.dedup();
    assert_eq!(
        pulled.len(),
        1,
        "every pull through faults gives the same image"
    );
    eprintln!(
        "faults: {PULLS}/{PULLS} pulls; proxy total {} faults in {} requests",
        proxy.stats.faults.load(Ordering::Relaxed),
        proxy.stats.requests.load(Ordering::Relaxed)
    );
}

/// A registry that refuses one tag for good: the push fails, but only
/// after the blobs, the manifest and the SBOM referrer are in and the tags
/// before it written, and the error says exactly that.
#[test]
fn a_refused_tag_fails_the_push_naming_what_was_not_written() {
    let reg = Registry::shared();
    let repo = unique_repo("refused-tag");
    let proxy = FaultProxy::refusing(reg.port, &format!("PUT /v2/{repo}/manifests/latest "));
    let ws = Workspace::new("push-refused-tag");
    simple_push_spec(&ws, &format!("{}/{repo}", proxy.host()), &["1.0", "latest"]);
    let r = expect_failure(
        &ws,
        &["build", "--push", "--output", "oci:out"],
        3,
        &[
            &format!(
                "push to {}/{repo} incomplete: writing tags failed: ",
                proxy.host()
            ),
            "tag is immutable",
            "SBOM referrers: pushed (1)",
            "tags written: 1.0; tags not written: latest",
        ],
    );
    let (blobs_line, n, m) = blobs_in_registry(&r.stderr);
    assert_eq!(n, m, "every blob is in: {blobs_line}");
    assert!(
        r.stderr.contains("manifests pushed: sha256:"),
        "{}",
        r.stderr
    );

    // The registry agrees: 1.0 is there, latest is not.
    assert!(tag_exists(reg, &repo, "1.0"));
    assert!(
        !tag_exists(reg, &repo, "latest"),
        "latest must not be written"
    );
    // The order: manifests by digest and the SBOM referrer before any tag.
    let puts: Vec<String> = reg
        .log()
        .lines()
        .filter_map(|l| {
            let at = l.find(&format!("\"PUT /v2/{repo}/manifests/"))?;
            let rest = &l[at + format!("\"PUT /v2/{repo}/manifests/").len()..];
            Some(rest.split([' ', '"']).next()?.to_string())
        })
        .collect();
    let first_tag = puts.iter().position(|p| p == "1.0").expect("1.0 was put");
    assert!(
        puts[..first_tag]
            .iter()
            .filter(|p| p.starts_with("sha256:"))
            .count()
            >= 2,
        "the image manifest and its SBOM referrer go by digest before the tags: {puts:?}"
    );
    assert!(
        puts[first_tag..].iter().all(|p| !p.starts_with("sha256")),
        "{puts:?}"
    );

    // `--json` says the same, for CI scripts.
    let r = ws
        .kiln()
        .args(["build", "--push", "--output", "oci:out", "--json", "-q"])
        .run();
    assert_eq!(r.code(), Some(3), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect(&r.stdout);
    let push = &v["error"]["push"];
    assert_eq!(push["step"], "tags", "{v}");
    assert_eq!(
        push["tags_not_written"],
        serde_json::json!(["latest"]),
        "{v}"
    );
    assert_eq!(push["done"]["tags"], serde_json::json!(["1.0"]), "{v}");
}

/// With `--push` the layers go to the registry while the build runs. When
/// the push then fails at its manifests, every blob is in the registry
/// (each uploaded once: the layer early, the config by the push, none of
/// them again) and no tag was written.
#[test]
fn a_failed_push_after_early_uploads_sent_each_blob_once_and_no_tag() {
    let reg = Registry::shared();
    let repo = unique_repo("early-refused");
    let proxy = FaultProxy::refusing(reg.port, &format!("PUT /v2/{repo}/manifests/"));
    let ws = Workspace::new("push-early-refused");
    simple_push_spec(&ws, &format!("{}/{repo}", proxy.host()), &["1.0"]);
    let r = expect_failure(
        &ws,
        &["build", "--push"],
        3,
        &[
            &format!(
                "push to {}/{repo} incomplete: pushing manifests failed: ",
                proxy.host()
            ),
            "manifests pushed: none",
            "tags written: none; tags not written: 1.0",
        ],
    );
    let (blobs_line, n, m) = blobs_in_registry(&r.stderr);
    assert_eq!(n, m, "every blob is in: {blobs_line}");
    assert!(
        blobs_line.contains(&format!("({m} uploaded, 0 mounted, 0 already there)")),
        "{blobs_line}"
    );
    assert_eq!(
        reg.upload_posts(&repo).len(),
        m,
        "each blob uploaded once: {:#?}",
        reg.upload_posts(&repo)
    );
    // The layer went up before the push began: the push's first request
    // asks for the tag, and the early uploads are over by then.
    let log = reg.repo_requests(&repo);
    let tag_head = log
        .iter()
        .position(|l| l.contains(&format!("\"HEAD /v2/{repo}/manifests/1.0 ")))
        .unwrap_or_else(|| panic!("no HEAD of the tag: {log:#?}"));
    assert!(
        log[..tag_head].iter().any(|l| l.contains("\"POST ")),
        "an upload before the push: {log:#?}"
    );
    assert!(!tag_exists(reg, &repo, "1.0"), "1.0 must not be written");
}

/// A failed push's `blobs in the registry: N of M (…)` line, N and M.
fn blobs_in_registry(stderr: &str) -> (&str, usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("blobs in the registry: "))
        .unwrap_or_else(|| panic!("no blobs line:\n{stderr}"));
    let counts = line.split(':').nth(1).unwrap().trim();
    let (n, rest) = counts.split_once(" of ").unwrap();
    let m = rest.split_whitespace().next().unwrap();
    (line, n.parse().unwrap(), m.parse().unwrap())
}

/// Whether `tag` of `repo` is in the registry (skopeo reads its manifest).
fn tag_exists(reg: &Registry, repo: &str, tag: &str) -> bool {
    skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reg.docker_ref(repo, tag),
    ])
    .code()
        == Some(0)
}
