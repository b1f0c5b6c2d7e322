//! Records the commit the binary is built from, for `errand --version` and the console's
//! workers page: `git rev-parse` at build time, "unknown" outside a git checkout.

fn main() {
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
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
