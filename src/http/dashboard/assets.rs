//! The page's files, compiled into the binary: no build step, nothing
//! fetched at run time.

/// `(content type, body)` of a dashboard file.
pub(crate) fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "index.html" => ("text/html; charset=utf-8", include_str!("web/index.html")),
        "dashboard.js" => (
            "text/javascript; charset=utf-8",
            include_str!("web/dashboard.js"),
        ),
        "charts.js" => (
            "text/javascript; charset=utf-8",
            include_str!("web/charts.js"),
        ),
        "dashboard.css" => ("text/css; charset=utf-8", include_str!("web/dashboard.css")),
        _ => return None,
    })
}
