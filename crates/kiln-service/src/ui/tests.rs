use super::*;
use crate::http::Tokens;
use crate::store::{JobBrief, SpecSummary, Store};

const ADMIN: &str = "admin-secret-token-123";
const VIEWER: &str = "viewer-secret-token-456";

fn admin() -> Who {
    Who {
        role: Role::Admin,
        csrf: Some("c".repeat(64)),
        session: Some("s".repeat(64)),
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn pages_escape_names_and_package_lines() {
    let evil = "<script>alert(\"x\")</script>&'";
    let s = SpecSummary {
        name: evil.into(),
        revision: 1,
        current_image: Some(format!("h/{evil}")),
        latest_job: Some(JobBrief {
            id: 3,
            state: "<b>".into(),
        }),
    };
    let html = pages::index(&admin(), std::slice::from_ref(&s));
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<b>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"),
        "{html}"
    );

    let f = SpecForm {
        name: evil.into(),
        base: "\"><script>x</script>".into(),
        pip: "pkg<script>&\"quoted\"".into(),
        env: "A=</textarea><script>".into(),
        ..SpecForm::default()
    };
    let html = pages::spec_form(&admin(), &f, false, Some("bad <script> & \"msg\""));
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("</textarea><"), "{html}");
    assert!(
        html.contains("pkg&lt;script&gt;&amp;&quot;quoted&quot;"),
        "{html}"
    );
    assert!(
        html.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""),
        "{html}"
    );
    assert!(
        html.contains("bad &lt;script&gt; &amp; &quot;msg&quot;"),
        "{html}"
    );
    let html = pages::confirm_delete(&admin(), evil);
    assert!(!html.contains("<script>"), "{html}");
    let html = pages::message(None, "<t>", "<m>");
    assert!(!html.contains("<t>") && !html.contains("<m>"), "{html}");
}

#[test]
fn the_form_offers_every_type_and_keeps_the_choice() {
    let body = b"name=app&type=dockerfile&source=https%3A%2F%2Fgit.example.com%2Forg%2Frepo%2Ftree%2Fmain%2Fapp&base=scratch";
    let f = SpecForm::from_form(&super::form::Form::parse(body));
    let input = f.to_input().unwrap();
    assert_eq!(input.kind(), "dockerfile");
    assert_eq!(
        input.source.as_deref(),
        Some("https://git.example.com/org/repo/tree/main/app")
    );
    assert!(input.render(None).is_ok());
    let html = pages::spec_form(&admin(), &f, false, None);
    for t in ["packages", "image", "python-env", "dockerfile"] {
        assert!(html.contains(&format!("<option value=\"{t}\"")), "{html}");
    }
    assert!(
        html.contains("<option value=\"dockerfile\" selected>"),
        "{html}"
    );
    // Editing keeps the type and source the revision had.
    let back = SpecForm::from_input("app", &input);
    assert_eq!(back.kind, "dockerfile");
    assert_eq!(back.source, f.source);
    // The packages type stays the default (no `type` in the JSON).
    let plain = SpecForm::from_form(&super::form::Form::parse(b"name=p&base=scratch"));
    assert_eq!(plain.to_input().unwrap().kind, None);
}

#[test]
fn csrf_check() {
    let w = admin();
    let good = Form::parse(format!("csrf={}", "c".repeat(64)).as_bytes());
    let same = headers(&[
        ("host", "127.0.0.1:8080"),
        ("origin", "http://127.0.0.1:8080"),
        ("sec-fetch-site", "same-origin"),
    ]);
    assert!(check_csrf(&w, &same, &good).is_ok());
    assert!(check_csrf(&w, &HeaderMap::new(), &good).is_ok());

    let status = |r: Result<(), Response>| r.unwrap_err().status();
    // Missing, empty, wrong, truncated tokens.
    for body in [
        "".to_string(),
        "csrf=".into(),
        format!("csrf={}", "d".repeat(64)),
        format!("csrf={}", "c".repeat(63)),
        format!("token={}", "c".repeat(64)),
    ] {
        let f = Form::parse(body.as_bytes());
        assert_eq!(
            status(check_csrf(&w, &same, &f)),
            StatusCode::FORBIDDEN,
            "{body}"
        );
    }
    // The right token from another origin.
    for h in [
        headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.test")]),
        headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
        headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]),
        headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")]),
        headers(&[("origin", "http://127.0.0.1:8080")]),
    ] {
        assert_eq!(
            status(check_csrf(&w, &h, &good)),
            StatusCode::FORBIDDEN,
            "{h:?}"
        );
    }
    // A bearer request has no cookie to ride on: no token needed.
    let bearer = Who {
        role: Role::Admin,
        csrf: None,
        session: None,
    };
    assert!(check_csrf(&bearer, &same, &Form::default()).is_ok());
}

async fn state() -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    let state = AppState {
        store,
        tokens: Tokens::new(ADMIN, Some(VIEWER)),
        registry: None,
    };
    (dir, state)
}

#[tokio::test]
async fn sessions_never_carry_the_token() {
    let (_d, state) = state().await;
    // The UI's routes merge with the API's.
    let _ = crate::http::router(state.clone());
    let sessions = Sessions::default();
    let h = headers(&[("host", "127.0.0.1:1"), ("origin", "http://127.0.0.1:1")]);
    for (token, role) in [(ADMIN, Role::Admin), (VIEWER, Role::Viewer)] {
        let body = Bytes::from(format!("token={token}"));
        let r = login(
            State(state.clone()),
            Extension(sessions.clone()),
            h.clone(),
            body,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(!cookie.contains(token), "{cookie}");
        assert!(!cookie.contains(&hex::encode(token)), "{cookie}");
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        let value = cookie
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("kiln_session=")
            .unwrap();
        assert_eq!(value.len(), 64, "{cookie}");
        // Nothing the server keeps is the token or its plain hash either.
        let map = sessions.0.lock().unwrap();
        for (k, s) in map.iter() {
            assert_ne!(k.as_slice(), Sha256::digest(token.as_bytes()).as_slice());
            assert!(!s.csrf.contains(token));
        }
        drop(map);
        // The cookie identifies the session.
        let h = headers(&[("cookie", &format!("other=1; kiln_session={value}"))]);
        let w = who(&state, &sessions, &h).unwrap();
        assert_eq!(w.role, role);
        assert_eq!(w.csrf.as_deref().map(str::len), Some(64));
    }

    // A wrong token: the form again, no cookie.
    let r = login(
        State(state.clone()),
        Extension(sessions.clone()),
        h.clone(),
        Bytes::from("token=nope"),
    )
    .await
    .unwrap_err();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    // Sign-in from another site.
    let cross = headers(&[("host", "127.0.0.1:1"), ("origin", "http://evil.test")]);
    let r = login(
        State(state.clone()),
        Extension(sessions.clone()),
        cross,
        Bytes::from(format!("token={ADMIN}")),
    )
    .await
    .unwrap_err();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // No credentials: browsers go to /login, other clients get a 401.
    let r = who(&state, &sessions, &headers(&[("accept", "text/html")])).unwrap_err();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/login");
    let r = who(&state, &sessions, &HeaderMap::new()).unwrap_err();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = who(
        &state,
        &sessions,
        &headers(&[("cookie", &format!("kiln_session={}", "0".repeat(64)))]),
    )
    .unwrap_err();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A bad bearer header is a 401 even with a valid-looking session.
    let r = who(
        &state,
        &sessions,
        &headers(&[("authorization", "Bearer nope"), ("accept", "text/html")]),
    )
    .unwrap_err();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forms_create_edit_and_delete_through_the_api_checks() {
    let (_d, state) = state().await;
    let sessions = Sessions::default();
    let (id, csrf) = sessions.start(Role::Admin).unwrap();
    let h = headers(&[("cookie", &format!("kiln_session={id}"))]);
    let post = |path: &'static str, body: String| {
        let state = state.clone();
        let sessions = sessions.clone();
        let h = h.clone();
        async move {
            let body = Bytes::from(body);
            match path {
                "create" => create(State(state), Extension(sessions), h, body).await,
                _ => {
                    edit(
                        State(state),
                        Extension(sessions),
                        h,
                        Path("web".to_string()),
                        body,
                    )
                    .await
                }
            }
        }
    };
    // The CLI's message, with the values kept.
    let r = post(
        "create",
        format!("csrf={csrf}&name=web&workdir=relative&pip=numpy%3E%3D1"),
    )
    .await
    .unwrap_err();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let expected = SpecInput {
        name: Some("web".into()),
        base: "scratch".into(),
        packages: crate::spec_input::Packages {
            pip: vec!["numpy>=1".into()],
            ..Default::default()
        },
        config: crate::spec_input::ConfigInput {
            workdir: Some("relative".into()),
            ..Default::default()
        },
        ..Default::default()
    }
    .render(None)
    .unwrap_err();
    let body = body_text(r).await;
    assert!(body.contains(&pages::e(&expected)), "{expected}\n{body}");
    assert!(body.contains("numpy&gt;=1</textarea>"), "{body}");
    assert!(body.contains("value=\"relative\""), "{body}");

    // Without the token: refused, nothing stored.
    let r = post("create", "name=web".into()).await.unwrap_err();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(state.store.list_specs().await.unwrap().is_empty());

    let r = post("create", format!("csrf={csrf}&name=web&env=A%3D1"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let s = state.store.get_spec("web").await.unwrap().unwrap();
    assert_eq!(s.revision, 1);
    let r = post("edit", format!("csrf={csrf}&name=ignored&env=A%3D2"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let input = state.store.latest_input("web").await.unwrap().unwrap();
    assert!(
        input.contains("\"A\":\"2\"") && input.contains("\"web\""),
        "{input}"
    );
    let r = delete(
        State(state.clone()),
        Extension(sessions.clone()),
        h.clone(),
        Path("web".into()),
        Bytes::from(format!("csrf={csrf}")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(state.store.list_specs().await.unwrap().is_empty());

    // A viewer session may read, not write.
    let (vid, vcsrf) = sessions.start(Role::Viewer).unwrap();
    let vh = headers(&[("cookie", &format!("kiln_session={vid}"))]);
    let r = create(
        State(state.clone()),
        Extension(sessions.clone()),
        vh,
        Bytes::from(format!("csrf={vcsrf}&name=v")),
    )
    .await
    .unwrap_err();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

async fn body_text(r: Response) -> String {
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(b.to_vec()).unwrap()
}
