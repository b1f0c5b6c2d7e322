import { allowRejectedSubmission, apiListJobs, expect, submitJobForm, test, waitForHydration } from "./fixtures";

test.describe("form validation (JavaScript on)", () => {
  test("out-of-range values show field errors, stay on the form and start nothing", async ({ page, allowFailedResource }) => {
    allowRejectedSubmission(allowFailedResource);
    await page.goto("/");
    await waitForHydration(page);
    const before = (await apiListJobs(page.request)).length;

    await submitJobForm(page, 999999999, 10);
    const msError = page.getByTestId("field-error-ms");
    await expect(msError).toBeVisible();
    await expect(msError).toHaveAttribute("role", "alert");
    await expect(msError).toContainText("600000");
    expect(new URL(page.url()).pathname).toBe("/");

    await submitJobForm(page, 1000, 0);
    const stepsError = page.getByTestId("field-error-steps");
    await expect(stepsError).toBeVisible();
    await expect(stepsError).toHaveAttribute("role", "alert");
    await expect(stepsError).not.toHaveText(/^\s*$/);
    // ms is valid now: its old error must not linger.
    await expect(msError).toBeHidden();
    expect(new URL(page.url()).pathname).toBe("/");

    expect((await apiListJobs(page.request)).length).toBe(before);
  });
});
