//! `/admin/login`: the console's login form. It posts to the server's `/admin/login` handler,
//! which sets the console's own cookie and sends the browser on, or back here with a message.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

#[component]
pub fn LoginPage() -> impl IntoView {
    let query = use_query_map();
    let error = move || query.read().get("error");
    let next = move || query.read().get("next").unwrap_or_else(|| "/admin".into());
    view! {
        <section class="card narrow">
            <h1>"Operators' console"</h1>
            <form method="post" action="/admin/login" data-testid="login-form">
                <input type="hidden" name="next" value=next/>
                <label for="password">"Password"</label>
                <input id="password" name="password" type="password" required=true
                    autocomplete="current-password" autofocus=true/>
                <Show when=move || error().is_some()>
                    <p class="form-error" role="alert" data-testid="login-error">{error}</p>
                </Show>
                <button type="submit">"Log in"</button>
            </form>
        </section>
    }
}
