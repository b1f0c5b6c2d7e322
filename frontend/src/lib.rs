//! Browser entry point: hydrates the page the server rendered.

// The release (wasm-release) build lays out the whole view tree's types at once; the job list's
// rows nest deeper than the default limit of 128.
#![recursion_limit = "256"]

#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(errand_app::App);
}
