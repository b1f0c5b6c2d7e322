import {
  JOB_URL,
  apiGetJob,
  apiListJobs,
  expect,
  jobForm,
  msInput,
  readJobTimeline,
  recordJobTimeline,
  startJobViaForm,
  test,
  waitForHydration,
} from "./fixtures";

test.describe("a job started from the form (JavaScript on)", () => {
  test("shows live progress on its page without a page load, up to success", async ({ page }) => {
    await page.goto("/");
    await waitForHydration(page);

    // The form as the contract describes it.
    const form = jobForm(page);
    await expect(form.locator('input[type="hidden"][name="kind"]')).toHaveValue("sleep");
    await expect(form.getByLabel("Duration (ms)", { exact: true })).toHaveAttribute("name", "fields[ms]");
    await expect(form.getByLabel("Steps", { exact: true })).toHaveAttribute("name", "fields[steps]");

    // A full page load would lose this.
    await page.evaluate(() => {
      window.__errandMarker = 1;
    });
    await recordJobTimeline(page);

    const id = await startJobViaForm(page, 3000, 10);
    expect(id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(await page.evaluate(() => window.__errandMarker), "no full page load on submit").toBe(1);

    const state = page.getByTestId("job-state");
    await expect(state).toHaveText(/^\s*(queued|running|succeeded)\s*$/);

    const bar = page.getByTestId("job-progress");
    await expect(bar).toHaveAttribute("role", "progressbar");
    await expect(bar).toHaveAttribute("aria-valuemin", "0");
    await expect(bar).toHaveAttribute("aria-valuemax", "100");

    const announcer = page.getByTestId("job-announcer");
    await expect(announcer).toHaveAttribute("role", "status");
    await expect(announcer).toHaveAttribute("aria-live", "polite");

    await expect(state).toHaveText("succeeded", { timeout: 30_000 });

    await expect(bar).toHaveAttribute("aria-valuenow", "100");
    await expect(page.getByTestId("job-progress-text")).toHaveText("100%");
    await expect(page.getByTestId("job-logs").locator("li")).toHaveCount(10);
    await expect(page.getByTestId("job-logs")).toContainText("step 10 of 10");
    await expect(page.getByTestId("job-result")).toBeVisible();
    await expect(page.getByTestId("job-attempts")).toBeAttached();
    await expect(announcer).toContainText("succeeded");

    const timeline = await readJobTimeline(page);
    const values = timeline.progress.map(Number);
    expect(values.every((v) => Number.isInteger(v) && v >= 0 && v <= 100), `integers 0..100: ${timeline.progress}`).toBe(true);
    expect(new Set(values).size, `distinct progress values seen live: ${timeline.progress}`).toBeGreaterThanOrEqual(3);
    expect(values, "progress never goes backwards").toEqual([...values].sort((a, b) => a - b));
    expect(timeline.states, "states seen live").toContain("running");
    expect(timeline.states[timeline.states.length - 1]).toBe("succeeded");

    expect(await page.evaluate(() => window.__errandMarker), "no page reload while watching").toBe(1);
    await expect(page).toHaveURL(JOB_URL);
  });

  test("a second job runs while the first is still running, and /jobs lists both live", async ({ page }) => {
    await page.goto("/");
    await waitForHydration(page);

    // Long enough to still be running after the second job finished and /jobs is open.
    const first = await startJobViaForm(page, 6000, 6);
    await expect(page.getByTestId("job-state")).toHaveText("running");

    const newJob = page.locator('a[href="/"]', { hasText: "New job" });
    await newJob.click();
    await expect(page).toHaveURL(/\/$/);
    await waitForHydration(page);
    await expect(msInput(page)).toBeVisible();

    const second = await startJobViaForm(page, 200, 2);
    expect(second).not.toBe(first);
    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 15_000 });

    const firstNow = await apiGetJob(page.request, first);
    expect(firstNow.status).toBe(200);
    expect(firstNow.job?.state, "the first job is still running when the second has succeeded").toBe("running");

    // Newest first, in the API...
    const jobs = await apiListJobs(page.request);
    expect(jobs.map((job) => job.id)).toEqual([second, first]);

    // ...and on /jobs, where the first job's state goes to succeeded live.
    await page.locator('a[href="/jobs"]', { hasText: "My jobs" }).click();
    await expect(page).toHaveURL(/\/jobs$/);
    await waitForHydration(page);
    await page.evaluate(() => {
      window.__errandMarker = 2;
    });

    const rows = page.getByTestId("job-list").getByTestId("job-row");
    await expect(rows).toHaveCount(2);
    await expect(rows.nth(0).locator(`a[href="/jobs/${second}"]`)).toHaveCount(1);
    await expect(rows.nth(1).locator(`a[href="/jobs/${first}"]`)).toHaveCount(1);
    await expect(rows.nth(0).getByTestId("job-row-state")).toHaveText("succeeded");
    await expect(rows.nth(1).getByTestId("job-row-state")).toHaveText("running");

    await expect(rows.nth(1).getByTestId("job-row-state")).toHaveText("succeeded", { timeout: 30_000 });
    expect(await page.evaluate(() => window.__errandMarker), "updated without a page reload").toBe(2);
    await expect(page).toHaveURL(/\/jobs$/);
  });
});
