import {
  JOB_URL,
  apiStartJob,
  apiWaitForJobState,
  expect,
  jobIdFromUrl,
  startJobViaForm,
  test,
  waitForHydration,
} from "./fixtures";

test.describe("job lifecycle from its page", () => {
  test("a running job is cancelled from its page within a second", async ({ page }) => {
    await page.goto("/");
    await waitForHydration(page);
    await startJobViaForm(page, 20_000, 20);
    const state = page.getByTestId("job-state");
    await expect(state).toHaveText("running", { timeout: 10_000 });

    await page.getByTestId("cancel-job").click();
    await expect(state).toHaveText("cancelled", { timeout: 3_000 });
    await expect(page.getByTestId("cancel-job")).toHaveCount(0);
    await expect(page.getByTestId("retry-job")).toBeVisible();
  });

  test("a failed job is retried from its page as a new, linked job", async ({ page }) => {
    // A webhook to a private address fails for good: the server refuses to call it.
    const original = await apiStartJob(page.request, "webhook", { url: "http://10.0.0.1/hook" });
    await apiWaitForJobState(page.request, original, "failed");

    await page.goto(`/jobs/${original}`);
    await waitForHydration(page);
    await expect(page.getByTestId("job-error")).toContainText("internal address");
    await page.getByTestId("retry-job").click();

    await expect(page).toHaveURL(JOB_URL);
    await expect.poll(() => jobIdFromUrl(page.url())).not.toBe(original);
    const retry = jobIdFromUrl(page.url());
    await expect(page.getByTestId("job-retry-of").locator("a")).toHaveAttribute("href", `/jobs/${original}`);
    await expect(page.getByTestId("job-state")).toHaveText("failed", { timeout: 15_000 });

    await page.goto(`/jobs/${original}`);
    await expect(page.getByTestId("job-retried-as").locator("a")).toHaveAttribute("href", `/jobs/${retry}`);
  });

  test("a scheduled job counts down on its page, then runs", async ({ page }) => {
    const response = await page.request.post("/api/jobs", {
      data: { kind: "sleep", params: { ms: 0 }, delay_ms: 5_000 },
    });
    expect(response.status()).toBe(202);
    const id = (await response.json()).id as string;

    await page.goto(`/jobs/${id}`);
    await waitForHydration(page);
    const waiting = page.getByTestId("job-waiting");
    await expect(waiting).toContainText("Scheduled for");
    const seconds = async () => Number(/in (\d+) s/.exec((await waiting.textContent()) ?? "")?.[1] ?? NaN);
    const first = await seconds();
    expect(first).toBeGreaterThan(0);
    await expect.poll(seconds, { message: "the countdown moves" }).toBeLessThan(first);
    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 15_000 });
    await expect(waiting).toHaveCount(0);
  });
});

test.describe("why a job waits", () => {
  // `./scripts/test` runs the server with this many workers, so a handful of jobs fill them.
  const WORKERS = Number(process.env.ERRAND_CONCURRENCY ?? "64");

  test("a queued job shows the jobs ahead of it, then starts; a running job shows its time left", async ({ page }) => {
    // Every worker busy for 4 s, reporting progress each second.
    const busy: string[] = [];
    for (let n = 0; n < WORKERS; n++) {
      busy.push(await apiStartJob(page.request, "sleep", { ms: 4_000, steps: 4 }));
    }
    for (const id of busy) {
      await apiWaitForJobState(page.request, id, "running");
    }
    const ahead = await apiStartJob(page.request, "sleep", { ms: 0 });
    const id = await apiStartJob(page.request, "sleep", { ms: 0 });

    const api = await (await page.request.get(`/api/jobs/${id}`)).json();
    expect(api.state).toBe("queued");
    expect(api.waiting).toMatchObject({ reason: "queue", ahead: 1, text: expect.stringContaining("1 job ahead of it") });

    await page.goto(`/jobs/${id}`);
    await waitForHydration(page);
    const waiting = page.getByTestId("job-waiting");
    await expect(waiting).toContainText("1 job ahead of it");
    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 20_000 });
    await expect(waiting).toHaveCount(0);
    await apiWaitForJobState(page.request, ahead, "succeeded");

    // A running job with progress: "about N s left" beside its bar, counting down.
    const long = await apiStartJob(page.request, "sleep", { ms: 6_000, steps: 6 });
    await page.goto(`/jobs/${long}`);
    await waitForHydration(page);
    const eta = page.getByTestId("job-eta");
    await expect(eta).toContainText(/about \d+ s left/, { timeout: 5_000 });
    const left = async () => Number(/about (\d+) s/.exec((await eta.textContent()) ?? "")?.[1] ?? NaN);
    expect(await left()).toBeLessThanOrEqual(6);
    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 15_000 });
    await expect(eta).toHaveCount(0);
  });

  test("a job given a higher priority on the form goes ahead of one that came first", async ({ page }) => {
    // Every worker busy for 3 s, so both jobs wait in the queue.
    const busy: string[] = [];
    for (let n = 0; n < WORKERS; n++) {
      busy.push(await apiStartJob(page.request, "sleep", { ms: 3_000 }));
    }
    for (const id of busy) {
      await apiWaitForJobState(page.request, id, "running");
    }
    const low = await apiStartJob(page.request, "sleep", { ms: 0 }, { priority: 1 });

    await page.goto("/");
    await waitForHydration(page);
    await page.getByLabel("Priority").selectOption("9");
    const high = await startJobViaForm(page, 0, 1);
    await waitForHydration(page);
    await expect(page.getByTestId("job-priority")).toHaveText("9");
    await expect(page.getByTestId("job-waiting")).toContainText("Next in line");
    const lowWaiting = (await (await page.request.get(`/api/jobs/${low}`)).json()).waiting;
    expect(lowWaiting).toMatchObject({ reason: "queue", ahead: 1 });

    // One fetch hands both out, the priority-9 job first; free workers may then start them
    // in the same millisecond, but never the priority-1 job first. (The engine's conformance
    // suite checks the strict order with one worker.)
    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 20_000 });
    await apiWaitForJobState(page.request, low, "succeeded");
    const started = async (id: string) =>
      Date.parse((await (await page.request.get(`/api/jobs/${id}`)).json()).started_at);
    expect(await started(high)).toBeLessThanOrEqual(await started(low));
  });
});

test.describe("job lifecycle from the list", () => {
  test("a running job is cancelled from /jobs, and its row updates live", async ({ page }) => {
    const id = await apiStartJob(page.request, "sleep", { ms: 20_000, steps: 20 });
    await apiWaitForJobState(page.request, id, "running");
    await page.goto("/jobs");
    await waitForHydration(page);
    const row = page.locator(`[data-testid="job-row"][data-job-id="${id}"]`);
    await expect(row.getByTestId("job-row-state")).toHaveText("running");
    await row.getByTestId("job-row-cancel").click();
    await expect(row.getByTestId("job-row-state")).toHaveText("cancelled", { timeout: 3_000 });
    await expect(row.getByTestId("job-row-cancel")).toHaveCount(0);
  });

  test("on a first visit, /jobs shows live a job started from another tab", async ({ page }) => {
    // A fresh browser: no session yet, and opening /jobs (a GET) does not start one.
    await page.goto("/jobs");
    await waitForHydration(page);
    await expect(page.getByTestId("job-list-empty")).toBeVisible();
    // The list starts the session before it subscribes; the other tab must then share it.
    await expect
      .poll(async () => (await page.context().cookies()).some((c) => c.name === "errand_session"))
      .toBe(true);
    const tab = await page.context().newPage();
    await tab.goto("/");
    await waitForHydration(tab);
    const id = await startJobViaForm(tab, 2_000, 4);
    const row = page.locator(`[data-testid="job-row"][data-job-id="${id}"]`);
    await expect(row).toBeVisible({ timeout: 5_000 });
    await expect(row.getByTestId("job-row-state")).toHaveText("succeeded", { timeout: 10_000 });
  });
});
