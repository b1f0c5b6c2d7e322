//! Live updates in the browser: a server-sent event stream, with polling as the fallback.
//!
//! While the stream is open, events are applied as they come. When it breaks, the page polls a
//! server function every second, and goes back to the stream as soon as it reconnects (the
//! browser's `EventSource` retries by itself; after a hard failure we reopen it). Once the
//! handler reports that nothing more will change (a terminal job), everything stops.

use send_wrapper::SendWrapper;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{EventSource, MessageEvent};

use leptos::prelude::*;

/// How often the fallback polls while the stream is down.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long to wait before reopening a stream the browser gave up on.
const REOPEN_AFTER: Duration = Duration::from_secs(3);

/// Applies one event (name, JSON data); returns `false` once nothing more can change.
pub(crate) type OnEvent = Rc<dyn Fn(&str, &str) -> bool>;
/// Fetches the current state once, for the polling fallback; calls the given `Done` once the
/// state it found is final.
pub(crate) type Poll = Rc<dyn Fn(Done)>;
/// Stops the watch.
pub(crate) type Done = Rc<dyn Fn()>;

struct Live {
    url: String,
    event_names: &'static [&'static str],
    on_event: OnEvent,
    poll: Poll,
    source: Option<EventSource>,
    polling: Option<IntervalHandle>,
    finished: bool,
    // Closures must outlive the EventSource that calls them.
    closures: Vec<Closure<dyn FnMut(web_sys::Event)>>,
}

type Shared = Rc<RefCell<Live>>;

/// Watches `url` for the given event names until `on_event` says the watched thing is final or
/// the calling component is cleaned up.
pub(crate) fn watch(
    url: String,
    event_names: &'static [&'static str],
    on_event: OnEvent,
    poll: Poll,
) {
    let live: Shared = Rc::new(RefCell::new(Live {
        url,
        event_names,
        on_event,
        poll,
        source: None,
        polling: None,
        finished: false,
        closures: Vec::new(),
    }));
    open(&live);
    let on_drop = SendWrapper::new(live);
    on_cleanup(move || finish(&on_drop));
}

/// Marks the watch finished (called from the page when polling found a final state).
fn finish(live: &Shared) {
    let mut state = live.borrow_mut();
    state.finished = true;
    if let Some(source) = state.source.take() {
        source.close();
    }
    if let Some(handle) = state.polling.take() {
        handle.clear();
    }
}

fn open(live: &Shared) {
    let url = live.borrow().url.clone();
    let Ok(source) = EventSource::new(&url) else {
        start_polling(live);
        return;
    };
    let mut closures = Vec::new();
    for &name in live.borrow().event_names {
        let weak = Rc::downgrade(live);
        let closure = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
            let Some(live) = weak.upgrade() else { return };
            let Some(data) = event
                .dyn_ref::<MessageEvent>()
                .and_then(|m| m.data().as_string())
            else {
                return;
            };
            let on_event = live.borrow().on_event.clone();
            if !on_event(name, &data) {
                finish(&live);
            }
        });
        let _ = source.add_event_listener_with_callback(name, closure.as_ref().unchecked_ref());
        closures.push(closure);
    }

    let weak = Rc::downgrade(live);
    let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        if let Some(live) = weak.upgrade() {
            stop_polling(&live);
        }
    });
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    closures.push(on_open);

    let weak = Rc::downgrade(live);
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        let Some(live) = weak.upgrade() else { return };
        if live.borrow().finished {
            return;
        }
        start_polling(&live);
        let closed = live
            .borrow()
            .source
            .as_ref()
            .is_none_or(|s| s.ready_state() == EventSource::CLOSED);
        if closed {
            // The browser gave up on this stream: reopen it later ourselves.
            let weak = Rc::downgrade(&live);
            set_timeout(
                move || {
                    if let Some(live) = weak.upgrade()
                        && !live.borrow().finished
                    {
                        open(&live);
                    }
                },
                REOPEN_AFTER,
            );
        }
    });
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    closures.push(on_error);

    let mut state = live.borrow_mut();
    if let Some(old) = state.source.replace(source) {
        old.close();
    }
    state.closures = closures;
}

fn start_polling(live: &Shared) {
    if live.borrow().polling.is_some() {
        return;
    }
    poll_once(live);
    let weak = Rc::downgrade(live);
    let handle = set_interval_with_handle(
        move || {
            if let Some(live) = weak.upgrade() {
                poll_once(&live);
            }
        },
        POLL_EVERY,
    );
    live.borrow_mut().polling = handle.ok();
}

fn poll_once(live: &Shared) {
    let poll = live.borrow().poll.clone();
    let weak = Rc::downgrade(live);
    poll(Rc::new(move || {
        if let Some(live) = weak.upgrade() {
            finish(&live);
        }
    }));
}

fn stop_polling(live: &Shared) {
    if let Some(handle) = live.borrow_mut().polling.take() {
        handle.clear();
    }
}
