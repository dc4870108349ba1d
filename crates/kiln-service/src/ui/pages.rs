//! The pages' HTML: hand-written templates over one escaping function
//! ([`crate::http::escape`]); every value from a user or the database goes
//! through [`e`].

use crate::http::Role;
use crate::store::{Job, SpecSummary, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED};

use super::form::{SpecForm, TEXTAREAS, TYPES};
use super::Who;

/// Escape text for element content and quoted attributes.
pub(crate) fn e(s: &str) -> String {
    crate::http::escape(s)
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{display:flex;gap:1em;align-items:center;padding:.6em 1.2em;background:#2b2d42;color:#fff}
header a{color:#fff;text-decoration:none;font-weight:600}
header .who{margin-left:auto;opacity:.8}
header form{margin:0}
main{padding:1em 1.5em;max-width:72em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eee}
td code{word-break:break-all}#specs td:first-child,td.t{white-space:nowrap}
code,pre{font-family:ui-monospace,monospace;font-size:.9em}
pre.log{background:#111;color:#ddd;padding:.8em;max-height:40em;overflow:auto;white-space:pre-wrap;word-break:break-all}
.state{font-weight:600}.state-succeeded{color:#17803d}.state-failed{color:#c0392b}
.state-running{color:#b26b00}.state-queued{color:#555}.state-cancelled{color:#777}
.error{background:#fdecea;border:1px solid #c0392b;padding:.6em;white-space:pre-wrap}
label{display:block;font-weight:600;margin-top:.8em}
.hint{font-weight:400;color:#666;font-size:.9em}
input[type=text],input[type=password],textarea{width:100%;max-width:40em;box-sizing:border-box;font-family:ui-monospace,monospace}
textarea{height:5em}
button{margin-top:1em;padding:.35em 1em;cursor:pointer}
.actions form,.actions a{display:inline-block;margin-right:.6em}
.danger{background:#c0392b;color:#fff;border:1px solid #922}
dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1em}dt{font-weight:600}dd{margin:0}
";

/// A whole page: `<head>`, the header bar (with the log-out form for a
/// session), and `body`. `live`: the job is running (reload without JS).
pub(crate) fn page(who: Option<&Who>, title: &str, body: &str, live: bool) -> String {
    let mut bar = String::from("<a href=\"/\">kiln serve</a>");
    if let Some(w) = who {
        bar.push_str("<a href=\"/\">Specs</a>");
        if w.role == Role::Admin {
            bar.push_str("<a href=\"/specs/new\" id=\"nav-new\">New spec</a>");
        }
        let role = match w.role {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        };
        bar.push_str(&format!("<span class=\"who\">signed in as {role}</span>"));
        if w.csrf.is_some() {
            bar.push_str(&format!(
                "<form method=\"post\" action=\"/logout\">{}<button type=\"submit\" id=\"logout\">Log out</button></form>",
                csrf_field(w)
            ));
        }
    }
    let (refresh, script) = if live {
        (
            "<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>",
            "<script src=\"/ui/tail.js\" defer></script>",
        )
    } else {
        ("", "")
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         {refresh}<title>{} · kiln serve</title><style>{STYLE}</style>{script}</head>\n\
         <body><header>{bar}</header>\n<main>\n{body}\n</main></body></html>\n",
        e(title)
    )
}

pub(crate) fn csrf_field(w: &Who) -> String {
    match &w.csrf {
        Some(c) => format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", e(c)),
        None => String::new(),
    }
}

/// A button that POSTs to `action` (with the CSRF field).
fn post_button(w: &Who, action: &str, id: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\">{}<button type=\"submit\" id=\"{}\" class=\"{}\">{}</button></form>",
        e(action),
        csrf_field(w),
        e(id),
        e(class),
        e(label)
    )
}

pub(crate) fn time(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => kiln_core::time::rfc3339((ms.max(0) / 1000) as u64),
        None => "—".into(),
    }
}

fn state_span(state: &str, id: &str) -> String {
    format!(
        "<span class=\"state state-{0}\"{1}>{0}</span>",
        e(state),
        if id.is_empty() {
            String::new()
        } else {
            format!(" id=\"{}\"", e(id))
        }
    )
}

pub(crate) fn is_live(state: &str) -> bool {
    state == QUEUED || state == RUNNING
}

pub(crate) fn login(error: Option<&str>) -> String {
    let err = error
        .map(|m| {
            format!(
                "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>",
                e(m)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>\n{err}\
         <form method=\"post\" action=\"/login\">\
         <label for=\"token\">API token <span class=\"hint\">(the admin or viewer token)</span></label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\" id=\"login\">Sign in</button></form>"
    );
    page(None, "Sign in", &body, false)
}

pub(crate) fn index(w: &Who, specs: &[SpecSummary]) -> String {
    let mut rows = String::new();
    for s in specs {
        let name = e(&s.name);
        let latest = match &s.latest_job {
            Some(j) => format!(
                "<a href=\"/jobs/{}\">{}</a>",
                j.id,
                state_span(&j.state, "")
            ),
            None => "—".into(),
        };
        let mut actions = format!("<a href=\"/specs/{name}\" id=\"view-{name}\">view</a>");
        if w.role == Role::Admin {
            actions.push_str(&format!(
                "<a href=\"/specs/{name}/edit\" id=\"edit-{name}\">edit</a>\
                 <a href=\"/specs/{name}/delete\" id=\"delete-{name}\">delete</a>"
            ));
        }
        rows.push_str(&format!(
            "<tr id=\"spec-{name}\"><td>{name}</td><td>{}</td><td>{latest}</td><td><code>{}</code></td><td class=\"actions\">{actions}</td></tr>\n",
            s.revision,
            e(s.current_image.as_deref().unwrap_or("")),
        ));
    }
    if specs.is_empty() {
        rows.push_str("<tr><td colspan=\"5\">no specs yet</td></tr>\n");
    }
    let new = if w.role == Role::Admin {
        "<p><a href=\"/specs/new\" id=\"new-spec\">New spec</a></p>"
    } else {
        ""
    };
    let body = format!(
        "<h1>Specs</h1>\n{new}<table id=\"specs\">\n<thead><tr><th>Name</th><th>Revision</th><th>Latest job</th><th>Current image</th><th>Actions</th></tr></thead>\n<tbody>\n{rows}</tbody></table>"
    );
    page(Some(w), "Specs", &body, false)
}

/// The create/edit form. `edit`: the name is fixed.
pub(crate) fn spec_form(w: &Who, f: &SpecForm, edit: bool, error: Option<&str>) -> String {
    let (title, action, submit) = if edit {
        (
            format!("Edit {}", f.name),
            format!("/specs/{}/edit", f.name),
            "Save as a new revision",
        )
    } else {
        ("New spec".to_string(), "/specs/new".to_string(), "Create")
    };
    let err = error
        .map(|m| {
            format!(
                "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>",
                e(m)
            )
        })
        .unwrap_or_default();
    let input = |name: &str, label: &str, hint: &str, extra: &str| {
        format!(
            "<label for=\"{name}\">{label} <span class=\"hint\">{hint}</span></label>\
             <input type=\"text\" id=\"{name}\" name=\"{name}\" value=\"{}\"{extra}>\n",
            e(f.field(name))
        )
    };
    let mut fields = String::new();
    fields.push_str(&input(
        "name",
        "Name",
        "[a-z0-9][a-z0-9.-]*",
        if edit { " readonly" } else { " required" },
    ));
    let mut options = String::new();
    for (value, label) in TYPES {
        let selected = if f.kind == *value { " selected" } else { "" };
        options.push_str(&format!(
            "<option value=\"{value}\"{selected}>{}</option>",
            e(label)
        ));
    }
    fields.push_str(&format!(
        "<label for=\"type\">Type <span class=\"hint\">what the image is made from</span></label>\
         <select id=\"type\" name=\"type\">{options}</select>\n"
    ));
    fields.push_str(&input(
        "image",
        "Image",
        "type image: a registry reference",
        "",
    ));
    fields.push_str(&input(
        "source",
        "Git source",
        "types python-env and dockerfile: a Git URL, e.g. a file or folder page's address",
        "",
    ));
    fields.push_str(&input(
        "base",
        "Base image",
        "a registry reference, or scratch (python-env: the server's default)",
        "",
    ));
    for (name, label, hint) in TEXTAREAS {
        if *name == "entrypoint" {
            fields.push_str(&input("user", "User", "e.g. 1000:1000", ""));
            fields.push_str(&input("workdir", "Working directory", "absolute", ""));
        }
        fields.push_str(&format!(
            "<label for=\"{name}\">{label} <span class=\"hint\">{hint}</span></label>\
             <textarea id=\"{name}\" name=\"{name}\" spellcheck=\"false\">{}</textarea>\n",
            e(f.field(name))
        ));
    }
    let body = format!(
        "<h1>{}</h1>\n{err}<form method=\"post\" action=\"{}\" id=\"spec-form\">{}\n{fields}\
         <button type=\"submit\" id=\"submit\">{submit}</button></form>",
        e(&title),
        e(&action),
        csrf_field(w)
    );
    page(Some(w), &title, &body, false)
}

pub(crate) fn spec_detail(w: &Who, s: &SpecSummary, jobs: &[Job], input: Option<&str>) -> String {
    let name = e(&s.name);
    let mut rows = String::new();
    for j in jobs {
        let digest = j.digest.as_deref().unwrap_or("");
        rows.push_str(&format!(
            "<tr><td><a href=\"/jobs/{0}\" id=\"job-{0}\">#{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td><td class=\"t\">{4}</td><td class=\"t\">{5}</td><td class=\"t\">{6}</td><td><code title=\"{7}\">{8}</code></td></tr>\n",
            j.id,
            j.revision,
            state_span(&j.state, ""),
            e(j.phase.as_deref().unwrap_or("")),
            time(Some(j.created)),
            time(j.started),
            time(j.finished),
            e(digest),
            e(digest.get(..19).unwrap_or(digest)),
        ));
    }
    if jobs.is_empty() {
        rows.push_str("<tr><td colspan=\"8\">no jobs</td></tr>\n");
    }
    let actions = if w.role == Role::Admin {
        format!(
            "<p class=\"actions\"><a href=\"/specs/{name}/edit\" id=\"edit\">Edit</a>\
             <a href=\"/specs/{name}/delete\" id=\"delete\">Delete</a></p>"
        )
    } else {
        String::new()
    };
    let spec = input
        .map(|i| {
            let pretty = serde_json::from_str::<serde_json::Value>(i)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| i.to_string());
            format!(
                "<details><summary>Latest revision's spec (JSON)</summary><pre>{}</pre></details>",
                e(&pretty)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>{name}</h1>\n{actions}<dl><dt>Revision</dt><dd id=\"revision\">{}</dd>\
         <dt>Current image</dt><dd><code id=\"current-image\">{}</code></dd></dl>\n{spec}\
         <h2>Jobs</h2>\n<table id=\"jobs\"><thead><tr><th>Job</th><th>Revision</th><th>State</th><th>Phase</th><th>Created</th><th>Started</th><th>Finished</th><th>Digest</th></tr></thead>\n<tbody>\n{rows}</tbody></table>",
        s.revision,
        e(s.current_image.as_deref().unwrap_or("none yet")),
    );
    page(Some(w), &s.name, &body, false)
}

/// The job page: `lines` are the log's last lines, `total` the log's length.
pub(crate) fn job(w: &Who, j: &Job, lines: &[String], total: usize) -> String {
    let live = is_live(&j.state);
    let image = match (&j.image, &j.digest) {
        (Some(i), Some(d)) => format!("{i}@{d}"),
        (Some(i), None) => i.clone(),
        _ => "—".into(),
    };
    let mut actions = String::new();
    if w.role == Role::Admin {
        let id = j.id;
        if live {
            actions.push_str(&post_button(
                w,
                &format!("/jobs/{id}/cancel"),
                "cancel",
                "Cancel",
                "danger",
            ));
        }
        if [SUCCEEDED, FAILED, CANCELLED].contains(&j.state.as_str()) {
            actions.push_str(&post_button(
                w,
                &format!("/jobs/{id}/retry"),
                "retry",
                "Retry",
                "",
            ));
        }
    }
    let error = j
        .error
        .as_deref()
        .map(|m| {
            format!(
                "<dt>Error</dt><dd class=\"error\" id=\"job-error\">{}</dd>",
                e(m)
            )
        })
        .unwrap_or_default();
    let shown = if lines.len() < total {
        format!(
            "<p class=\"hint\">The last {} of {total} lines; the download has them all.</p>",
            lines.len()
        )
    } else {
        String::new()
    };
    let mut log = String::new();
    for l in lines {
        log.push_str(&e(l));
        log.push('\n');
    }
    let spec = e(&j.spec);
    let body = format!(
        "<h1>Job #{id}</h1>\n<div class=\"actions\">{actions}</div>\
         <dl><dt>Spec</dt><dd><a href=\"/specs/{spec}\" id=\"spec-link\">{spec}</a> revision {rev}</dd>\
         <dt>State</dt><dd>{state}</dd>\
         <dt>Phase</dt><dd id=\"phase\">{phase}</dd>\
         <dt>Image</dt><dd><code id=\"image\">{image}</code></dd>\
         <dt>Created</dt><dd>{created}</dd><dt>Started</dt><dd>{started}</dd><dt>Finished</dt><dd>{finished}</dd>{error}</dl>\n\
         <h2>Log</h2>\n<p><a href=\"/jobs/{id}/log.txt\" id=\"download\" download>Download the full log</a></p>{shown}\n\
         <pre class=\"log\" id=\"log\" data-job=\"{id}\" data-lines=\"{total}\" data-state=\"{st}\">{log}</pre>",
        id = j.id,
        rev = j.revision,
        state = state_span(&j.state, "state"),
        phase = e(j.phase.as_deref().unwrap_or("—")),
        image = e(&image),
        created = time(Some(j.created)),
        started = time(j.started),
        finished = time(j.finished),
        st = e(&j.state),
    );
    page(Some(w), &format!("Job #{}", j.id), &body, live)
}

pub(crate) fn confirm_delete(w: &Who, name: &str) -> String {
    let body = format!(
        "<h1>Delete {0}?</h1>\n<p>This deletes the spec <strong>{0}</strong>, all its revisions, jobs and logs. \
         Images already pushed stay in the registry.</p>\
         <div class=\"actions\">{1}<a href=\"/specs/{0}\" id=\"keep\">No, keep it</a></div>",
        e(name),
        post_button(
            w,
            &format!("/specs/{name}/delete"),
            "confirm",
            &format!("Delete {name}"),
            "danger"
        ),
    );
    page(Some(w), &format!("Delete {name}?"), &body, false)
}

/// A message page (errors: 403, 404, 409, 500).
pub(crate) fn message(who: Option<&Who>, title: &str, msg: &str) -> String {
    let body = format!(
        "<h1>{}</h1>\n<p class=\"error\" id=\"error\" role=\"alert\">{}</p><p><a href=\"/\">Back to the specs</a></p>",
        e(title),
        e(msg)
    );
    page(who, title, &body, false)
}

/// Polls the log while the job is queued or running and appends new lines;
/// reloads the page when the job ends (to show its image and buttons).
pub(crate) const TAIL_JS: &str = r#""use strict";
(function () {
  var pre = document.getElementById("log");
  if (!pre || !window.fetch) return;
  var live = ["queued", "running"];
  if (live.indexOf(pre.dataset.state) < 0) return;
  var job = pre.dataset.job, lines = parseInt(pre.dataset.lines, 10) || 0;
  var state = document.getElementById("state"), phase = document.getElementById("phase");
  function tick() {
    fetch("/jobs/" + job + "/log.txt?after=" + lines, {credentials: "same-origin", headers: {"Accept": "text/plain"}})
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        var st = r.headers.get("X-Kiln-Job-State");
        var ph = r.headers.get("X-Kiln-Job-Phase");
        var n = parseInt(r.headers.get("X-Kiln-Log-Lines"), 10);
        return r.text().then(function (text) {
          if (text) {
            var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.appendChild(document.createTextNode(text));
            if (atEnd) pre.scrollTop = pre.scrollHeight;
          }
          if (!isNaN(n)) lines = n;
          if (st && state) { state.textContent = st; state.className = "state state-" + st; }
          if (ph !== null && phase) phase.textContent = ph || "\u2014";
          if (st && live.indexOf(st) < 0) { window.location.reload(); return; }
          setTimeout(tick, 1000);
        });
      })
      .catch(function () { setTimeout(tick, 5000); });
  }
  setTimeout(tick, 1000);
})();
"#;
