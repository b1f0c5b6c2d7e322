import * as fs from "node:fs";
import { allowRejectedSubmission, JOB_URL, apiListJobs, expect, submitJobForm, test } from "./fixtures";

// A browser with JavaScript turned off: the form posts and redirects, and the job page reloads
// itself until the job is over.
test.use({ javaScriptEnabled: false });

test.describe("without JavaScript", () => {
  test("the form starts a job and its page refreshes itself until it succeeds", async ({ page }) => {
    await page.goto("/");
    // Sanity check that scripts really are off: the app never hydrates.
    await expect(page.locator("body")).not.toHaveAttribute("data-hydrated", "true");

    await submitJobForm(page, 2000, 4);
    await expect(page).toHaveURL(JOB_URL);

    // The first render comes before the job is over, so only a self-refresh can show the end.
    const firstState = (await page.getByTestId("job-state").textContent())?.trim();
    expect(["queued", "running"], `state on landing: ${firstState}`).toContain(firstState);

    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 30_000 });
    await expect(page).toHaveURL(JOB_URL);
    await expect(page.getByTestId("job-progress")).toHaveAttribute("aria-valuenow", "100");
    await expect(page.getByTestId("job-progress-text")).toHaveText("100%");
    await expect(page.getByTestId("job-logs").locator("li")).toHaveCount(4);
  });

  test("invalid input shows the field error and starts nothing", async ({ page, allowFailedResource }) => {
    allowRejectedSubmission(allowFailedResource);
    await page.goto("/");
    const before = (await apiListJobs(page.request)).length;

    await submitJobForm(page, 999999999, 10);
    const error = page.getByTestId("field-error-ms");
    await expect(error).toBeVisible();
    await expect(error).toHaveAttribute("role", "alert");
    await expect(error).toContainText("600000");
    await expect(page).not.toHaveURL(JOB_URL);

    expect((await apiListJobs(page.request)).length).toBe(before);
  });

  test("an upload form works too: a CSV import runs and its report shows", async ({ page }, testInfo) => {
    const csv = testInfo.outputPath("people.csv");
    fs.writeFileSync(csv, "name,age\nAda,36\nGrace,85\nbroken\n");
    await page.goto("/?kind=csv_import");
    await page.locator("form#job-form").getByLabel("CSV file", { exact: true }).setInputFiles(csv);
    await page.locator("form#job-form").getByRole("button", { name: "Start job" }).click();
    await expect(page).toHaveURL(JOB_URL);
    await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 30_000 });
    await expect(page.getByTestId("csv-rows")).toHaveText("2");
    await expect(page.getByTestId("csv-invalid-rows").locator("li")).toHaveText(["line 4: expected 2 fields, found 1"]);
  });
});
