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
//! loader the new build no longer has; browsers revalidate them instead (`Last-Modified`).

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower_http::services::ServeDir;

/// Where the assets are and what this build named them.
#[derive(Debug, Clone)]
pub(crate) struct Assets {
    /// The hash file, when the build hashed the names.
    hash_file: Option<PathBuf>,
    /// The stylesheet's address, e.g. `/pkg/errand.<hash>.css`.
    stylesheet: String,
    /// The entry script and module, e.g. `/pkg/errand.<hash>.js`: revalidated, not immutable.
    entries: Vec<String>,
}

/// Cache lifetime of a file whose name carries its content's hash.
const FOREVER: &str = "public, max-age=31536000, immutable";
/// Cache policy of a file whose name can stay the same across builds.
const REVALIDATE: &str = "no-cache";

impl Assets {
    /// Reads the names of this build's assets from `hash.txt` next to the running binary.
    pub(crate) fn of_this_build(output_name: &str) -> Self {
        let hash_file = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("hash.txt")));
        match hash_file.and_then(|path| Some((std::fs::read_to_string(&path).ok()?, path))) {
            Some((hashes, path)) => Self::from_hashes(output_name, &hashes, Some(path)),
            None => Self::from_hashes(output_name, "", None),
        }
    }

    /// The names recorded in a hash file's text (`css: <hash>` lines and the like).
    fn from_hashes(output_name: &str, hashes: &str, hash_file: Option<PathBuf>) -> Self {
        let hash_of = |wanted: &str| {
            hashes.lines().find_map(|line| {
                let (kind, hash) = line.split_once(':')?;
                (kind.trim() == wanted).then(|| hash.trim())
            })
        };
        let stylesheet = match hash_of("css") {
            Some(hash) => format!("/pkg/{output_name}.{hash}.css"),
            None => format!("/pkg/{output_name}.css"),
        };
        let entries = [("js", "js"), ("wasm", "wasm")]
            .into_iter()
            .filter_map(|(kind, ext)| Some(format!("/pkg/{output_name}.{}.{ext}", hash_of(kind)?)))
            .collect();
        Self {
            hash_file,
            stylesheet,
            entries,
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

    pub(crate) fn stylesheet(&self) -> &str {
        &self.stylesheet
    }

    /// `GET /pkg/…`: the files, pre-compressed when the client accepts it, with their cache
    /// lifetime. Other responses (404) carry no cache header.
    pub(crate) fn routes<S: Clone + Send + Sync + 'static>(&self, site_root: &Path) -> Router<S> {
        let files = ServeDir::new(site_root.join("pkg"))
            .precompressed_br()
            .precompressed_gzip();
        let assets = Arc::new(self.clone());
        Router::new()
            .nest_service("/pkg", files)
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let policy = assets.cache_policy(request.uri().path());
                    async move {
                        let mut response = next.run(request).await;
                        if response.status().is_success() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stylesheet_takes_its_hash_from_the_hash_file() {
        let hashes = "js: AAA\nwasm: BBB\ncss: C-c_c\n";
        let assets = Assets::from_hashes("errand", hashes, Some(PathBuf::from("/x/hash.txt")));
        assert_eq!(assets.stylesheet(), "/pkg/errand.C-c_c.css");
        assert_eq!(assets.hash_file(), Some(Path::new("/x/hash.txt")));
    }

    #[test]
    fn hashed_files_are_immutable_but_the_entry_files_revalidate() {
        let hashes = "js: AAA\nwasm: BBB\ncss: CCC\n";
        let assets = Assets::from_hashes("errand", hashes, Some(PathBuf::from("/x/hash.txt")));
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
        let plain = Assets::from_hashes("errand", "", None);
        assert_eq!(plain.cache_policy("/pkg/errand.css"), REVALIDATE);
    }

    #[test]
    fn without_a_hash_file_the_names_are_plain() {
        let assets = Assets::from_hashes("errand", "", None);
        assert_eq!(assets.stylesheet(), "/pkg/errand.css");
        assert_eq!(assets.hash_file(), None);
    }
}
