//! Browser entry point: hydrates the page the server rendered.

// The release (wasm-release) build lays out the whole view tree's types at once; the job list's
// rows nest deeper than the default limit of 128.
#![recursion_limit = "256"]

#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    // Hydration waits for the WASM chunk of a lazy route (the console's pages) before it takes
    // over that part of the page; the body says when all of it is live (tests wait for it).
    wasm_bindgen_futures::spawn_local(async {
        let Some(body) = leptos::prelude::document().body() else {
            return;
        };
        leptos::mount::hydrate_from_async(body.clone(), errand_app::App)
            .await
            .forget();
        let _ = body.set_attribute("data-hydrated", "true");
    });
}
