import { expect, readJobTimeline, recordJobTimeline, startJobViaForm, test, waitForHydration } from "./fixtures";

const JOB_EVENTS = /\/api\/jobs\/[0-9A-HJKMNP-TV-Z]{26}\/events$/;

test.describe("live updates when the event stream breaks", () => {
  test("the job page polls while the stream is down and goes back to the stream when it returns", async ({
    page,
    allowFailedResource,
  }) => {
    // The event stream answers 503 until the test lets it through.
    allowFailedResource(503, JOB_EVENTS);
    await page.route(JOB_EVENTS, (route) => route.fulfill({ status: 503, body: "unavailable" }));
    let polls = 0;
    page.on("request", (request) => {
      if (new URL(request.url()).pathname === "/fn/get_job") polls += 1;
    });

    await page.goto("/");
    await waitForHydration(page);
    await recordJobTimeline(page);
    await startJobViaForm(page, 8000, 8);

    // Polling alone moves the progress bar on.
    const bar = page.getByTestId("job-progress");
    await expect(bar).toHaveAttribute("aria-valuenow", /^(1[2-9]|[2-9]\d|100)$/, { timeout: 15_000 });
    expect(polls, "the page polled the get_job server function").toBeGreaterThan(0);

    // The stream comes back: the page reopens it and stops polling.
    const reconnected = page.waitForResponse((r) => JOB_EVENTS.test(new URL(r.url()).pathname) && r.status() === 200);
    await page.unroute(JOB_EVENTS);
    await reconnected;
    const pollsAtReconnect = polls;

    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 30_000 });
    await expect(bar).toHaveAttribute("aria-valuenow", "100");
    expect(polls, "no polling once the stream is back").toBeLessThanOrEqual(pollsAtReconnect + 1);

    const timeline = await readJobTimeline(page);
    expect(new Set(timeline.progress).size).toBeGreaterThanOrEqual(3);
  });
});
