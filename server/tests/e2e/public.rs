//! `hearth serve --public DIR`: a built web app beside the API, with ETags, cache headers,
//! precompressed files and `index.html` for client-side routes.

use reqwest::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};

use crate::support::{App, Options, assert_error};

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response.headers().get(name).map(|value| value.to_str().expect("ASCII").to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn a_web_app_is_served_beside_the_api() {
    let web = tempfile::tempdir().expect("temp dir");
    std::fs::write(web.path().join("index.html"), "<!doctype html><title>app</title>").expect("write");
    std::fs::create_dir(web.path().join("assets")).expect("mkdir");
    std::fs::write(web.path().join("assets/index-BMx3aTJq.js"), "console.log(1)").expect("write");
    std::fs::write(web.path().join("app.js"), "export const plain = 1;").expect("write");
    std::fs::write(web.path().join("app.js.br"), b"\x0b\x02\x80brotli").expect("write");
    std::fs::write(web.path().join(".env"), "SECRET=1").expect("write");
    let app = App::spawn_with(Options {
        extra_args: vec!["--public".into(), web.path().to_str().expect("utf-8").into()],
        ..Options::default()
    })
    .await;
    let get = |path: &str| app.client.get(app.url(path));

    // The app's entry, revalidated on every load and answered 304 when unchanged.
    let index = get("/").send().await.expect("sent");
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(header(&index, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&index, CACHE_CONTROL), "no-cache");
    let etag = header(&index, ETAG);
    assert!(etag.starts_with('"') && etag.len() > 4, "{etag}");
    assert_eq!(index.text().await.expect("body"), "<!doctype html><title>app</title>");
    let again = get("/index.html").header(IF_NONE_MATCH, &etag).send().await.expect("sent");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, ETAG), etag);

    // A client-side route loads the app; a missing file with an extension is a 404.
    let route = get("/rooms/r1").send().await.expect("sent");
    assert_eq!(route.status(), StatusCode::OK);
    assert_eq!(route.text().await.expect("body"), "<!doctype html><title>app</title>");
    let (status, body) = app.send(get("/logo.png")).await;
    assert_error(status, &body, 404, "not-found");

    // Hashed names are kept for a year; a plain name is revalidated.
    let hashed = get("/assets/index-BMx3aTJq.js").send().await.expect("sent");
    assert_eq!(header(&hashed, CONTENT_TYPE), "text/javascript; charset=utf-8");
    assert_eq!(header(&hashed, CACHE_CONTROL), "public, max-age=31536000, immutable");
    assert_eq!(hashed.text().await.expect("body"), "console.log(1)");

    // The precompressed file goes to a browser that accepts it, with its own ETag.
    let plain = get("/app.js").send().await.expect("sent");
    assert_eq!(header(&plain, CONTENT_ENCODING), "");
    let plain_etag = header(&plain, ETAG);
    assert_eq!(plain.text().await.expect("body"), "export const plain = 1;");
    let brotli = get("/app.js").header(ACCEPT_ENCODING, "gzip, br").send().await.expect("sent");
    assert_eq!(header(&brotli, CONTENT_ENCODING), "br");
    assert_eq!(header(&brotli, CONTENT_TYPE), "text/javascript; charset=utf-8");
    assert_ne!(header(&brotli, ETAG), plain_etag);
    assert_eq!(&brotli.bytes().await.expect("body")[..], b"\x0b\x02\x80brotli");

    // HEAD has the headers and no body.
    let head = app.client.head(app.url("/app.js")).send().await.expect("sent");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, reqwest::header::CONTENT_LENGTH), "23");
    assert!(head.bytes().await.expect("body").is_empty());

    // Nothing outside the dir, and no hidden file.
    for path in ["/.env", "/%2e%2e/hearth.toml", "/assets/..%2f..%2fhearth.toml", "/%2e%65nv"] {
        let (status, body) = app.send(get(path)).await;
        assert_error(status, &body, 404, "not-found");
    }
    // The API keeps its routes and its error shape.
    let (status, body) = app.send(get("/v1/nope")).await;
    assert_error(status, &body, 404, "not-found");
    let (status, _) = app.send(get("/healthz")).await;
    assert_eq!(status, 200);
    let (status, body) = app.send(app.client.post(app.url("/index.html"))).await;
    assert_error(status, &body, 404, "not-found");
}

#[tokio::test]
async fn without_a_public_dir_the_root_is_the_api_404() {
    let app = App::spawn().await;
    let (status, body) = app.send(app.client.request(Method::GET, app.url("/"))).await;
    assert_error(status, &body, 404, "not-found");
}
