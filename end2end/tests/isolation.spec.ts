import {
  UNKNOWN_JOB_ID,
  apiGetJob,
  apiListJobs,
  expect,
  startJobViaForm,
  test,
  waitForHydration,
} from "./fixtures";

test.describe("jobs belong to the browser that started them", () => {
  test("another browser gets 404 for the job's page and API, and does not list it", async ({
    page,
    newContext,
    allowFailedResource,
  }) => {
    // Browser A starts a job.
    await page.goto("/");
    await waitForHydration(page);
    const id = await startJobViaForm(page, 500, 2);

    // Browser B: a new context, so other cookies, so another session. Chromium logs the 404 of
    // the page itself as a console error: that one is expected.
    allowFailedResource(404, `/jobs/${id}`);
    const other = await newContext();
    const otherPage = await other.newPage();
    const response = await otherPage.goto(`/jobs/${id}`);
    expect(response?.status(), `GET /jobs/${id} from another browser`).toBe(404);
    await expect(otherPage.getByTestId("not-found")).toBeVisible();
    await expect(otherPage.getByTestId("job-state")).toHaveCount(0);
    await waitForHydration(otherPage);

    expect((await apiGetJob(other.request, id)).status, `GET /api/jobs/${id} from another browser`).toBe(404);
    const otherJobs = await apiListJobs(other.request);
    expect(otherJobs.map((job) => job.id)).not.toContain(id);

    // Browser A still sees its job, in the API and on its page.
    const mine = await apiGetJob(page.request, id);
    expect(mine.status).toBe(200);
    expect(mine.job?.id).toBe(id);
    expect((await apiListJobs(page.request)).map((job) => job.id)).toContain(id);
    const again = await page.goto(`/jobs/${id}`);
    expect(again?.status()).toBe(200);
    await expect(page.getByTestId("job-state")).toHaveText(/^\s*(queued|running|succeeded)\s*$/);
    await expect(page.getByTestId("not-found")).toHaveCount(0);
  });

  test("an unknown job id is a 404 page and a 404 in the API", async ({ page, allowFailedResource }) => {
    allowFailedResource(404, `/jobs/${UNKNOWN_JOB_ID}`);
    const response = await page.goto(`/jobs/${UNKNOWN_JOB_ID}`);
    expect(response?.status()).toBe(404);
    await expect(page.getByTestId("not-found")).toBeVisible();
    await waitForHydration(page);
    expect((await apiGetJob(page.request, UNKNOWN_JOB_ID)).status).toBe(404);
  });
});
