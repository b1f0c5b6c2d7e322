//! The browser assets cargo-leptos builds into `<site root>/pkg/` (WASM, JS, CSS): their names
//! and how they are served.
//!
//! Builds hash the file names (`errand.<hash>.wasm`) and the release build pre-compresses each
//! file (`.br`, `.gz`, at brotli's highest level). cargo-leptos records the hashes in `hash.txt`
//! next to the binary, where Leptos's `HydrationScripts` also reads them. A hashed file never
//! changes, so it is served with a one-year `immutable` cache lifetime; without a hash file
//! (a build that did not hash) browsers must revalidate.
//!
//! Except the two entry files (`js:` and `wasm:` in `hash.txt`) of a split build (`--split`,
//! which puts the console's pages in chunks): cargo-leptos names them by their content before it
//! writes the split loader's hashed name into them, so a rebuild that changed only a chunk
//! keeps their names with new content. A browser holding the old entry for a year would import a
//! loader the new build no longer has; browsers revalidate them instead (`ETag` or
//! `Last-Modified`).
//!
//! A release build made by cargo-leptos carries the whole site (`build.rs` embeds `pkg/` and
//! `hash.txt`), so the binary is the one file to ship: it serves `/pkg` from memory, with the
//! same names, encodings and cache policy as from disk. Leptos reads two of those files from
//! disk (`hash.txt` on each page, the split manifest once), so they are written into the data
//! dir at start, under `site/<the WASM's hash>/`. Other builds (debug, tests) read `--site-root`.

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower_http::services::ServeDir;

// `SITE`: this binary's embedded site, or `None` (written by build.rs).
include!(concat!(env!("OUT_DIR"), "/site.rs"));

/// A site built into the binary.
pub(crate) struct EmbeddedSite {
    /// The text of the build's `hash.txt`.
    pub(crate) hashes: &'static str,
    /// The files of `pkg/`, sorted by name.
    pub(crate) files: &'static [EmbeddedFile],
}

/// One file of `pkg/` and its pre-compressed copies.
pub(crate) struct EmbeddedFile {
    pub(crate) name: &'static str,
    /// A hash of the content, for the `ETag`.
    pub(crate) tag: &'static str,
    pub(crate) raw: &'static [u8],
    pub(crate) br: Option<&'static [u8]>,
    pub(crate) gzip: Option<&'static [u8]>,
}

/// Names and sizes only: a debug print of `Assets` must not dump megabytes of WASM.
impl std::fmt::Debug for EmbeddedSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.files.iter().map(|file| (file.name, file.raw.len())))
            .finish()
    }
}

/// Where the assets are and what this build named them.
#[derive(Debug, Clone)]
pub(crate) struct Assets {
    /// The hash file, when the build hashed the names.
    hash_file: Option<PathBuf>,
    /// The stylesheet's address, e.g. `/pkg/errand.<hash>.css`.
    stylesheet: String,
    /// The entry script and module, e.g. `/pkg/errand.<hash>.js`: revalidated, not immutable.
    entries: Vec<String>,
    /// The site root Leptos reads (the split manifest in its `pkg/`).
    site_root: PathBuf,
    /// Where `/pkg` is served from.
    files: Files,
}

#[derive(Debug, Clone, Copy)]
enum Files {
    Disk,
    Memory(&'static EmbeddedSite),
}

/// Cache lifetime of a file whose name carries its content's hash.
const FOREVER: &str = "public, max-age=31536000, immutable";
/// Cache policy of a file whose name can stay the same across builds.
const REVALIDATE: &str = "no-cache";

impl Assets {
    /// This build's assets: the embedded site if the binary has one (its files for Leptos
    /// written under `data_dir`), else `site_root` on disk with `hash.txt` next to the binary.
    pub(crate) fn of_this_build(
        output_name: &str,
        site_root: &Path,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        if let Some(site) = &SITE {
            return Self::embedded(output_name, site, data_dir);
        }
        let hash_file = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("hash.txt")));
        let (hashes, hash_file) =
            match hash_file.and_then(|path| Some((std::fs::read_to_string(&path).ok()?, path))) {
                Some((hashes, path)) => (hashes, Some(path)),
                None => (String::new(), None),
            };
        Ok(Self::from_hashes(
            output_name,
            &hashes,
            hash_file,
            site_root.to_owned(),
            Files::Disk,
        ))
    }

    /// An embedded site, with `hash.txt` and the split manifest written for Leptos into
    /// `<data dir>/site/<the WASM's hash>/`: one folder per build, so processes of two builds
    /// sharing a data dir (a rolling upgrade) do not overwrite each other's.
    fn embedded(
        output_name: &str,
        site: &'static EmbeddedSite,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let build = hash_of(site.hashes, "wasm").unwrap_or("unhashed");
        let folder = std::path::absolute(data_dir.join("site").join(build))?;
        let site_root = folder.join("root");
        let pkg = site_root.join("pkg");
        std::fs::create_dir_all(&pkg)
            .with_context(|| format!("could not create {}", pkg.display()))?;
        let hash_file = folder.join("hash.txt");
        write_once(&hash_file, site.hashes.as_bytes())?;
        for file in site
            .files
            .iter()
            .filter(|file| file.name.starts_with("__wasm_split_manifest"))
        {
            write_once(&pkg.join(file.name), file.raw)?;
        }
        Ok(Self::from_hashes(
            output_name,
            site.hashes,
            Some(hash_file),
            site_root,
            Files::Memory(site),
        ))
    }

    /// The names recorded in a hash file's text (`css: <hash>` lines and the like).
    fn from_hashes(
        output_name: &str,
        hashes: &str,
        hash_file: Option<PathBuf>,
        site_root: PathBuf,
        files: Files,
    ) -> Self {
        let stylesheet = match hash_of(hashes, "css") {
            Some(hash) => format!("/pkg/{output_name}.{hash}.css"),
            None => format!("/pkg/{output_name}.css"),
        };
        let entries = [("js", "js"), ("wasm", "wasm")]
            .into_iter()
            .filter_map(|(kind, ext)| {
                Some(format!(
                    "/pkg/{output_name}.{}.{ext}",
                    hash_of(hashes, kind)?
                ))
            })
            .collect();
        Self {
            hash_file,
            stylesheet,
            entries,
            site_root,
            files,
        }
    }

    /// The `Cache-Control` of the file at `path`.
    fn cache_policy(&self, path: &str) -> &'static str {
        let entry = self.entries.iter().any(|entry| {
            path.strip_prefix(entry.as_str())
                .is_some_and(|rest| rest.is_empty() || rest == ".br" || rest == ".gz")
        });
        if self.hash_file.is_some() && !entry {
            FOREVER
        } else {
            REVALIDATE
        }
    }

    /// The hash file for `LeptosOptions::hash_file` (an absolute path, which Leptos uses as
    /// it is), or `None` when the names are not hashed.
    pub(crate) fn hash_file(&self) -> Option<&Path> {
        self.hash_file.as_deref()
    }

    /// The site root for `LeptosOptions::site_root`.
    pub(crate) fn site_root(&self) -> &Path {
        &self.site_root
    }

    pub(crate) fn stylesheet(&self) -> &str {
        &self.stylesheet
    }

    /// `GET /pkg/…`: the files, pre-compressed when the client accepts it, with their cache
    /// lifetime. Other responses (404) carry no cache header.
    pub(crate) fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let router = match self.files {
            Files::Disk => Router::new().nest_service(
                "/pkg",
                ServeDir::new(self.site_root.join("pkg"))
                    .precompressed_br()
                    .precompressed_gzip(),
            ),
            Files::Memory(site) => Router::new().route(
                "/pkg/{*name}",
                axum::routing::get(
                    move |axum::extract::Path(name): axum::extract::Path<String>,
                          headers: HeaderMap| async move {
                        serve_embedded(site, &name, &headers)
                    },
                ),
            ),
        };
        let assets = Arc::new(self.clone());
        router.layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let policy = assets.cache_policy(request.uri().path());
                async move {
                    let mut response = next.run(request).await;
                    let status = response.status();
                    if status.is_success() || status == StatusCode::NOT_MODIFIED {
                        response
                            .headers_mut()
                            .insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
                    }
                    response
                }
            },
        ))
    }
}

/// The hash a hash file's text gives for `kind` (`js`, `wasm`, `css`, …).
fn hash_of<'a>(hashes: &'a str, kind: &str) -> Option<&'a str> {
    hashes.lines().find_map(|line| {
        let (name, hash) = line.split_once(':')?;
        (name.trim() == kind).then(|| hash.trim())
    })
}

/// Writes `content` to `path` unless it holds it already; through a temporary file and a
/// rename, so a process reading it never sees half of it.
fn write_once(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|held| held == content) {
        return Ok(());
    }
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, content)
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("could not write {}", path.display()))
}

/// One embedded file: brotli if the client takes it, else gzip, else as it is; `304` when
/// the client holds this very copy.
fn serve_embedded(site: &EmbeddedSite, name: &str, headers: &HeaderMap) -> Response {
    let Ok(at) = site.files.binary_search_by(|file| file.name.cmp(name)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let file = &site.files[at];
    let (body, encoding) = match (file.br, file.gzip) {
        (Some(br), _) if accepts(headers, "br") => (br, Some("br")),
        (_, Some(gzip)) if accepts(headers, "gzip") => (gzip, Some("gzip")),
        _ => (file.raw, None),
    };
    let etag = match encoding {
        Some(encoding) => format!("\"{}.{encoding}\"", file.tag),
        None => format!("\"{}\"", file.tag),
    };
    let mut response = if holds(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mime = mime_guess::from_path(file.name).first_or_octet_stream();
        let mut response = Body::from(body).into_response();
        if let Ok(mime) = HeaderValue::from_str(mime.as_ref()) {
            response.headers_mut().insert(header::CONTENT_TYPE, mime);
        }
        if let Some(encoding) = encoding {
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        response
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, etag);
    }
    response
}

/// Whether `Accept-Encoding` takes `coding` (named with a weight above 0, or by `*` when not
/// named).
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    let mut named = None;
    let mut any = None;
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let weight = parts
            .find_map(|part| part.trim().strip_prefix("q="))
            .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
        if name.eq_ignore_ascii_case(coding) {
            named = Some(weight);
        } else if name == "*" {
            any = Some(weight);
        }
    }
    named.or(any).is_some_and(|weight| weight > 0.0)
}

/// Whether `If-None-Match` names `etag` (or `*`).
fn holds(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    fn disk(hashes: &str, hash_file: Option<&str>) -> Assets {
        Assets::from_hashes(
            "errand",
            hashes,
            hash_file.map(PathBuf::from),
            PathBuf::from("target/site"),
            Files::Disk,
        )
    }

    static SITE_FOR_TESTS: EmbeddedSite = EmbeddedSite {
        hashes: "js: AAA\nwasm: BBB\ncss: CCC\nmanifest: MMM\nsplit: SSS\n",
        files: &[
            EmbeddedFile {
                name: "__wasm_split_manifest.MMM.json",
                tag: "m1",
                raw: b"{\"console\":[]}",
                br: None,
                gzip: None,
            },
            EmbeddedFile {
                name: "errand.AAA.js",
                tag: "j1",
                raw: b"entry script",
                br: Some(b"entry script as brotli"),
                gzip: Some(b"entry script as gzip"),
            },
            EmbeddedFile {
                name: "errand.CCC.css",
                tag: "c1",
                raw: b"body {}",
                br: Some(b"css as brotli"),
                gzip: None,
            },
        ],
    };

    async fn get(router: &Router, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        router
            .clone()
            .oneshot(request.body(Body::empty()).expect("a request"))
            .await
            .expect("the router answers")
    }

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body")
            .to_vec()
    }

    fn header(response: &Response, name: header::HeaderName) -> Option<&str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn an_embedded_site_is_written_for_leptos_and_served_from_memory() {
        let data = tempfile::tempdir().expect("a temporary dir");
        let assets = Assets::embedded("errand", &SITE_FOR_TESTS, data.path()).expect("written");
        // What Leptos reads from disk: the hash file and the split manifest, per build.
        let folder = data.path().join("site").join("BBB");
        assert_eq!(assets.hash_file(), Some(folder.join("hash.txt").as_path()));
        assert!(assets.hash_file().is_some_and(Path::is_absolute));
        assert_eq!(
            std::fs::read_to_string(folder.join("hash.txt")).expect("hash.txt"),
            SITE_FOR_TESTS.hashes
        );
        assert_eq!(assets.site_root(), folder.join("root"));
        assert_eq!(
            std::fs::read(folder.join("root/pkg/__wasm_split_manifest.MMM.json"))
                .expect("manifest"),
            b"{\"console\":[]}"
        );
        assert_eq!(assets.stylesheet(), "/pkg/errand.CCC.css");
        let printed = format!("{assets:?}");
        assert!(printed.contains("\"errand.AAA.js\": 12"), "{printed}");
        assert!(
            !printed.contains("101, 110, 116"),
            "no bytes in a debug print: {printed}"
        );
        // A second start (or a second process) on the same data dir finds them in place.
        Assets::embedded("errand", &SITE_FOR_TESTS, data.path()).expect("written");
        let left: Vec<_> = std::fs::read_dir(&folder).expect("the folder").collect();
        assert_eq!(
            left.len(),
            2,
            "hash.txt and root/, no partial files: {left:?}"
        );

        let router: Router = assets.routes();
        let br = get(
            &router,
            "/pkg/errand.CCC.css",
            &[("accept-encoding", "gzip, br")],
        )
        .await;
        assert_eq!(br.status(), StatusCode::OK);
        assert_eq!(header(&br, header::CONTENT_ENCODING), Some("br"));
        assert_eq!(header(&br, header::CONTENT_TYPE), Some("text/css"));
        assert_eq!(header(&br, header::CACHE_CONTROL), Some(FOREVER));
        assert_eq!(header(&br, header::VARY), Some("accept-encoding"));
        assert_eq!(header(&br, header::ETAG), Some("\"c1.br\""));
        assert_eq!(body(br).await, b"css as brotli");
        // No gzip copy of this one: a gzip-only client gets it as it is.
        let plain = get(
            &router,
            "/pkg/errand.CCC.css",
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(header(&plain, header::CONTENT_ENCODING), None);
        assert_eq!(body(plain).await, b"body {}");

        // The entry script revalidates: its ETag answers 304, with the same policy.
        let gzip = get(
            &router,
            "/pkg/errand.AAA.js",
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(header(&gzip, header::CONTENT_ENCODING), Some("gzip"));
        assert_eq!(header(&gzip, header::CACHE_CONTROL), Some(REVALIDATE));
        assert_eq!(header(&gzip, header::CONTENT_TYPE), Some("text/javascript"));
        let etag = header(&gzip, header::ETAG).expect("an ETag").to_owned();
        assert_eq!(body(gzip).await, b"entry script as gzip");
        let again = get(
            &router,
            "/pkg/errand.AAA.js",
            &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
        )
        .await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&again, header::CACHE_CONTROL), Some(REVALIDATE));
        assert!(body(again).await.is_empty());
        // The same tag does not stand for another encoding's bytes.
        let other = get(
            &router,
            "/pkg/errand.AAA.js",
            &[("accept-encoding", "br"), ("if-none-match", &etag)],
        )
        .await;
        assert_eq!(other.status(), StatusCode::OK);
        assert_eq!(body(other).await, b"entry script as brotli");

        for missing in [
            "/pkg/errand.ZZZ.js",
            "/pkg/",
            "/pkg/../hash.txt",
            "/pkg/errand.AAA.js.br",
        ] {
            let response = get(&router, missing, &[("accept-encoding", "br")]).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
            assert_eq!(header(&response, header::CACHE_CONTROL), None, "{missing}");
        }
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let takes = |value: &str, coding: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).expect("a header value"),
            );
            accepts(&headers, coding)
        };
        assert!(takes("gzip, deflate, br, zstd", "br"));
        assert!(takes("BR;q=0.5", "br"));
        assert!(!takes("br;q=0, gzip", "br"));
        assert!(takes("br;q=0, gzip", "gzip"));
        assert!(takes("*", "br"));
        assert!(!takes("br;q=0, *", "br"));
        assert!(!takes("*;q=0", "gzip"));
        assert!(!takes("identity", "gzip"));
        assert!(!takes("gzip;q=nonsense", "gzip"));
        assert!(!accepts(&HeaderMap::new(), "br"));
    }

    #[test]
    fn the_stylesheet_takes_its_hash_from_the_hash_file() {
        let hashes = "js: AAA\nwasm: BBB\ncss: C-c_c\n";
        let assets = disk(hashes, Some("/x/hash.txt"));
        assert_eq!(assets.stylesheet(), "/pkg/errand.C-c_c.css");
        assert_eq!(assets.hash_file(), Some(Path::new("/x/hash.txt")));
    }

    #[test]
    fn hashed_files_are_immutable_but_the_entry_files_revalidate() {
        let hashes = "js: AAA\nwasm: BBB\ncss: CCC\n";
        let assets = disk(hashes, Some("/x/hash.txt"));
        for path in [
            "/pkg/errand.AAA.js",
            "/pkg/errand.BBB.wasm",
            "/pkg/errand.BBB.wasm.br",
        ] {
            assert_eq!(assets.cache_policy(path), REVALIDATE, "{path}");
        }
        for path in [
            "/pkg/errand.CCC.css",
            "/pkg/__wasm_split.DDD.js",
            "/pkg/split_console_EEE.wasm",
            "/pkg/errand.AAA.js.map",
        ] {
            assert_eq!(assets.cache_policy(path), FOREVER, "{path}");
        }
        let plain = disk("", None);
        assert_eq!(plain.cache_policy("/pkg/errand.css"), REVALIDATE);
    }

    #[test]
    fn without_a_hash_file_the_names_are_plain() {
        let assets = disk("", None);
        assert_eq!(assets.stylesheet(), "/pkg/errand.css");
        assert_eq!(assets.hash_file(), None);
    }
}
