//! The overview's chart of finished jobs, drawn as SVG by the page itself (no chart library):
//! one stacked bar per time slot, succeeded below and failed on top, as jobs per second.

use super::wire::Bar;
use leptos::prelude::*;

/// The drawing's size in SVG units (it scales to the page's width).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;

/// A bar's rectangles: `(x, width, succeeded y and height, failed y and height)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    x: f64,
    width: f64,
    ok: (f64, f64),
    failed: (f64, f64),
}

/// Lays out `bars` in the drawing, scaled so the tallest total fills it.
fn shapes(bars: &[Bar]) -> Vec<Shape> {
    let tallest = bars
        .iter()
        .map(|bar| bar.succeeded + bar.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = WIDTH / bars.len().max(1) as f64;
    bars.iter()
        .enumerate()
        .map(|(i, bar)| {
            let ok_height = bar.succeeded as f64 / tallest * HEIGHT;
            let failed_height = bar.failed as f64 / tallest * HEIGHT;
            Shape {
                x: i as f64 * slot + slot * 0.1,
                width: slot * 0.8,
                ok: (HEIGHT - ok_height, ok_height),
                failed: (HEIGHT - ok_height - failed_height, failed_height),
            }
        })
        .collect()
}

/// Jobs per second over a bar of `bar_s` seconds, for people.
fn rate(jobs: u64, bar_s: u64) -> String {
    format!("{:.2}/s", jobs as f64 / bar_s.max(1) as f64)
}

#[component]
pub fn FinishedChart(bars: Vec<Bar>, bar_s: u64) -> impl IntoView {
    let total: u64 = bars.iter().map(|bar| bar.succeeded + bar.failed).sum();
    let failed: u64 = bars.iter().map(|bar| bar.failed).sum();
    let peak = bars
        .iter()
        .map(|bar| bar.succeeded + bar.failed)
        .max()
        .unwrap_or(0);
    let summary = format!(
        "{total} jobs finished ({failed} failed); busiest slot {}",
        rate(peak, bar_s)
    );
    let drawn = shapes(&bars)
        .into_iter()
        .zip(bars)
        .map(|(shape, bar)| {
            let tip = format!(
                "{}: {} succeeded, {} failed ({})",
                crate::clock::short_time(bar.at),
                bar.succeeded,
                bar.failed,
                rate(bar.succeeded + bar.failed, bar_s)
            );
            view! {
                <g>
                    <title>{tip}</title>
                    <rect class="bar-ok" x=shape.x y=shape.ok.0 width=shape.width height=shape.ok.1/>
                    <rect class="bar-failed" x=shape.x y=shape.failed.0 width=shape.width height=shape.failed.1/>
                </g>
            }
        })
        .collect_view();
    view! {
        <figure class="chart">
            <svg viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img" aria-label=summary.clone()
                data-testid="finished-chart" data-total=total preserveAspectRatio="none">
                {drawn}
            </svg>
            <figcaption>{summary}</figcaption>
        </figure>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(succeeded: u64, failed: u64) -> Bar {
        Bar {
            at: 0,
            succeeded,
            failed,
        }
    }

    #[test]
    fn the_tallest_bar_fills_the_drawing_and_failures_sit_on_top() {
        let shapes = shapes(&[bar(2, 2), bar(0, 0), bar(1, 0)]);
        assert_eq!(shapes.len(), 3);
        let first = shapes[0];
        assert_eq!(first.ok, (HEIGHT / 2.0, HEIGHT / 2.0));
        assert_eq!(first.failed, (0.0, HEIGHT / 2.0));
        assert_eq!(shapes[1].ok.1 + shapes[1].failed.1, 0.0);
        assert!(shapes[2].x > shapes[1].x && shapes[2].x + shapes[2].width <= WIDTH);
    }

    #[test]
    fn an_empty_chart_draws_nothing_and_divides_by_nothing() {
        assert!(shapes(&[]).is_empty());
        assert_eq!(rate(90, 60), "1.50/s");
        assert_eq!(rate(5, 0), "5.00/s");
    }
}
