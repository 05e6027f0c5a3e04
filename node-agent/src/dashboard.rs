//! The dashboard every agent serves at `/`: one HTML page, a script and a style sheet, embedded
//! in the binary (no CDN, no network, no build step). The page reads the same API as `drove
//! status`/`drove ps` (`/api/cluster`, `/api/jobs`, `/api/migrations`, live `/api/events`) and
//! migrates jobs with `POST /api/jobs/:id/migrate` and the cluster key, which the browser asks
//! for once and keeps in `sessionStorage`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | `assets/dashboard.html` |
//! | `GET /assets/dashboard.js` | the script |
//! | `GET /assets/dashboard.css` | the style sheet |

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub const HTML: &str = include_str!("../assets/dashboard.html");
pub const JS: &str = include_str!("../assets/dashboard.js");
pub const CSS: &str = include_str!("../assets/dashboard.css");

/// The dashboard's routes, for any router state (merged into [`crate::api::router`]).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", HTML) }),
        )
        .route(
            "/assets/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/assets/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change only with the binary; a page reload after an update should not
            // run an old script against a new API.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(uri: &str) -> (StatusCode, String, String) {
        let resp = router::<()>()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn page_has_the_parts() {
        let (st, ct, body) = get("/").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(ct, "text/html; charset=utf-8");
        for id in [
            "id=\"nodes-body\"",
            "id=\"jobs-body\"",
            "id=\"migrations-body\"",
            "id=\"migrate-job\"",
            "id=\"migrate-to\"",
            "id=\"migrate-btn\"",
            "id=\"home-btn\"",
            "id=\"live\"",
            "src=\"/assets/dashboard.js\"",
            "href=\"/assets/dashboard.css\"",
        ] {
            assert!(body.contains(id), "missing {id}");
        }
        // Nothing from the network.
        assert!(!body.contains("http://") && !body.contains("https://"));
    }

    #[tokio::test]
    async fn assets_have_their_types() {
        let (st, ct, body) = get("/assets/dashboard.js").await;
        assert_eq!(
            (st, ct.as_str()),
            (StatusCode::OK, "text/javascript; charset=utf-8")
        );
        assert!(body.contains("/api/events") && body.contains("/migrate"));
        let (st, ct, body) = get("/assets/dashboard.css").await;
        assert_eq!(
            (st, ct.as_str()),
            (StatusCode::OK, "text/css; charset=utf-8")
        );
        assert!(body.contains(".lamp"));
        assert_eq!(get("/assets/nope.js").await.0, StatusCode::NOT_FOUND);
    }

    /// Data goes into the page as text only: the script never assigns HTML.
    #[test]
    fn script_never_writes_html() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!JS.contains(bad), "dashboard.js uses {bad}");
        }
        assert!(!JS.contains("http://") && !JS.contains("https://"));
    }

    /// Every element the script looks up exists in the page.
    #[test]
    fn script_ids_exist_in_the_page() {
        let mut rest = JS;
        let mut n = 0;
        while let Some(i) = rest.find("$(\"") {
            rest = &rest[i + 3..];
            let id = &rest[..rest.find('"').unwrap()];
            assert!(HTML.contains(&format!("id=\"{id}\"")), "no element {id}");
            n += 1;
        }
        assert!(n > 10, "found only {n} lookups");
    }
}
