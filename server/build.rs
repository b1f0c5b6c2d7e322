//! Build-time facts for the `errand` binary:
//! - the commit it is built from, for `errand --version` and the console's workers page
//!   (`git rev-parse`, "unknown" outside a git checkout);
//! - in a release build made by cargo-leptos, the site itself: the files of `<site root>/pkg`
//!   (hashed, pre-compressed) and `hash.txt`, written into `$OUT_DIR/site.rs` as
//!   `include_bytes!` tables that `src/assets.rs` serves from memory. Other builds (debug,
//!   tests, clippy, a plain `cargo build`) get an empty table and read the site from disk.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

fn main() {
    record_commit();
    embed_site();
    println!("cargo:rerun-if-changed=build.rs");
}

fn record_commit() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ERRAND_COMMIT={commit}");
    // A new commit moves HEAD or the branch it names, and is appended to HEAD's log.
    for path in [
        "../.git/HEAD",
        "../.git/logs/HEAD",
        "../.git/refs/heads",
        "../.git/packed-refs",
    ] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// Writes `$OUT_DIR/site.rs`: `SITE`, the embedded site, or `None`.
fn embed_site() {
    for var in [
        "LEPTOS_SITE_ROOT",
        "LEPTOS_SITE_PKG_DIR",
        "LEPTOS_HASH_FILES",
        "LEPTOS_HASH_FILE_NAME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let code = match built_site(&out_dir) {
        Ok(site) => {
            println!("cargo:rustc-env=ERRAND_SITE=site built in");
            site
        }
        Err(why) => {
            if std::env::var("PROFILE").as_deref() == Ok("release") {
                println!("cargo:warning=the site is not built into this binary: {why}");
            }
            println!("cargo:rustc-env=ERRAND_SITE=site read from --site-root");
            "pub(crate) static SITE: Option<crate::assets::EmbeddedSite> = None;\n".to_owned()
        }
    };
    std::fs::write(out_dir.join("site.rs"), code).expect("could not write site.rs");
}

/// The generated code of the site cargo-leptos built before this binary, or why there is none.
fn built_site(out_dir: &Path) -> Result<String, String> {
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        return Err("not a release build".into());
    }
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    // cargo-leptos names these when it builds the server; a plain `cargo build` does not.
    let site_root = PathBuf::from(var("LEPTOS_SITE_ROOT")?);
    if var("LEPTOS_HASH_FILES")? != "true" {
        return Err("the build does not hash file names".into());
    }
    // Relative paths are the workspace's, where cargo-leptos runs.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pkg = workspace.join(site_root).join(var("LEPTOS_SITE_PKG_DIR")?);
    // The hash file is next to the binary: `<target>/release/`, three levels above OUT_DIR
    // (`<target>/release/build/errand-server-<hash>/out`).
    let hash_file = out_dir
        .ancestors()
        .nth(3)
        .ok_or("OUT_DIR has no target dir above it")?
        .join(var("LEPTOS_HASH_FILE_NAME")?);
    println!("cargo:rerun-if-changed={}", pkg.display());
    println!("cargo:rerun-if-changed={}", hash_file.display());
    let hashes =
        std::fs::read_to_string(&hash_file).map_err(|e| format!("{}: {e}", hash_file.display()))?;
    let mut names: Vec<String> = std::fs::read_dir(&pkg)
        .map_err(|e| format!("{}: {e}", pkg.display()))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            entry.file_type().ok()?.is_file().then_some(())?;
            entry.file_name().into_string().ok()
        })
        .filter(|name| !name.ends_with(".br") && !name.ends_with(".gz"))
        .collect();
    names.sort();
    // A hash file from another build than the folder would name files that are not there.
    for line in hashes.lines() {
        let Some((kind, hash)) = line.split_once(':') else {
            continue;
        };
        let hash = hash.trim();
        if !names.iter().any(|name| name.contains(hash)) {
            return Err(format!(
                "{kind} {hash} of hash.txt is not in {}",
                pkg.display()
            ));
        }
    }
    let mut code = String::from(
        "pub(crate) static SITE: Option<crate::assets::EmbeddedSite> = \
         Some(crate::assets::EmbeddedSite {\n",
    );
    code.push_str(&format!("    hashes: {hashes:?},\n    files: &[\n"));
    for name in &names {
        let path = pkg.join(name);
        let raw = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut hasher = DefaultHasher::new();
        raw.hash(&mut hasher);
        let variant = |ext: &str| {
            let compressed = pkg.join(format!("{name}.{ext}"));
            match compressed.exists() {
                true => format!(
                    "Some(include_bytes!({:?}))",
                    compressed.display().to_string()
                ),
                false => "None".to_owned(),
            }
        };
        code.push_str(&format!(
            "        crate::assets::EmbeddedFile {{ name: {name:?}, tag: \"{:016x}\", \
             raw: include_bytes!({:?}), br: {}, gzip: {} }},\n",
            hasher.finish(),
            path.display().to_string(),
            variant("br"),
            variant("gz"),
        ));
    }
    code.push_str("    ],\n});\n");
    Ok(code)
}
