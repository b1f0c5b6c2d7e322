// The operators' console in Chromium: logging in and out, the viewer role, filters and search,
// a bulk retry with its preview, pausing a kind as its owner sees it, the live chart, and the
// audit log. `./scripts/test` starts the server with the two passwords below.
import { type Page } from "@playwright/test";
import {
  apiStartJob,
  apiWaitForJobState,
  expect,
  test,
  waitForHydration,
} from "./fixtures";

const ADMIN = process.env.ERRAND_ADMIN_PASSWORD ?? "e2e admin password";
const VIEWER = process.env.ERRAND_VIEWER_PASSWORD ?? "e2e viewer password";

async function logIn(page: Page, password: string, path = "/admin"): Promise<void> {
  await page.goto(path);
  await expect(page).toHaveURL(/\/admin\/login\?next=/);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page).toHaveURL(new RegExp(`${path.replace("?", "\\?")}$`));
  await waitForHydration(page);
}

/** A word no other job has, to find this test's jobs among everyone's. */
function token(): string {
  return `t${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}

/** A webhook job that fails at once (the server refuses private addresses), for its owner. */
async function failedJob(page: Page, word: string): Promise<string> {
  const id = await apiStartJob(page.request, "webhook", { url: `http://10.0.0.1/${word}` });
  await apiWaitForJobState(page.request, id, "failed");
  return id;
}

test.describe("operators' console", () => {
  test("logging in, a wrong password, and logging out", async ({ page }) => {
    await page.goto("/admin/jobs");
    await expect(page).toHaveURL(/\/admin\/login\?next=%2Fadmin%2Fjobs$/);
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Log in" }).click();
    await expect(page.getByTestId("login-error")).toHaveText("wrong password");

    await page.getByLabel("Password").fill(ADMIN);
    await page.getByRole("button", { name: "Log in" }).click();
    await expect(page).toHaveURL(/\/admin\/jobs$/);
    await expect(page.getByTestId("filter-form")).toBeVisible();
    const cookies = await page.context().cookies();
    const login = cookies.find((cookie) => cookie.name === "errand_admin");
    expect(login?.httpOnly).toBe(true);
    expect(login?.sameSite).toBe("Strict");

    await page.getByTestId("logout").click();
    await expect(page).toHaveURL(/\/admin\/login$/);
    await page.goto("/admin");
    await expect(page).toHaveURL(/\/admin\/login\?next=/);
  });

  test("a viewer sees jobs but no buttons that act", async ({ page, newContext }) => {
    const word = token();
    const owner = await newContext();
    const ownerPage = await owner.newPage();
    const id = await failedJob(ownerPage, word);

    await logIn(page, VIEWER, `/admin/jobs?q=${word}`);
    await expect(page.getByTestId("console-row")).toHaveCount(1);
    await expect(page.getByTestId("read-only")).toBeVisible();
    await expect(page.getByTestId("bulk-form")).toHaveCount(0);
    await page.goto(`/admin/jobs/${id}`);
    await expect(page.getByTestId("console-job-state")).toHaveText("failed");
    await expect(page.getByTestId("console-retry")).toHaveCount(0);
    await page.goto("/admin/kinds");
    await expect(page.getByTestId("kind-row").first()).toBeVisible();
    await expect(page.getByTestId("kind-toggle")).toHaveCount(0);
  });

  test("filters and search find one person's job among everyone's", async ({ page, newContext }) => {
    const word = token();
    const owner = await newContext();
    const ownerPage = await owner.newPage();
    const failed = await failedJob(ownerPage, word);
    await apiStartJob(ownerPage.request, "sleep", { ms: 0 });

    await logIn(page, ADMIN);
    await page.goto("/admin/jobs");
    await page.getByTestId("filter-q").fill(word);
    await page.getByTestId("filter-apply").click();
    await expect(page).toHaveURL(new RegExp(`q=${word}`));
    await expect(page.getByTestId("console-row")).toHaveCount(1);
    await expect(page.getByTestId("console-row")).toHaveAttribute("data-job-id", failed);
    await expect(page.locator('[data-state="failed"] [data-testid="state-count"]')).toHaveText("1");
    await expect(page.locator('[data-state="succeeded"] [data-testid="state-count"]')).toHaveText("0");

    await page.getByTestId("filter-state").selectOption("succeeded");
    await page.getByTestId("filter-apply").click();
    await expect(page.getByTestId("console-empty")).toBeVisible();

    await page.goto(`/admin/jobs/${failed}`);
    await expect(page.getByTestId("console-params")).toContainText(word);
    // Its one attempt: which worker process ran it, and how it ended.
    await expect(page.getByTestId("console-attempt")).toHaveCount(1);
    await expect(page.getByTestId("console-attempt")).toContainText("failed");
    await expect(page.getByTestId("console-attempt").locator("code")).toContainText("errand-");
    await page.getByTestId("console-job-owner").click();
    await expect(page).toHaveURL(/\/admin\/jobs\?owner=/);
    await expect(page.getByTestId("console-row")).toHaveCount(2);
  });

  test("a bulk retry shows how many jobs it will touch, then retries them all", async ({ page, newContext }) => {
    const word = token();
    const owner = await newContext();
    const ownerPage = await owner.newPage();
    for (let i = 0; i < 3; i++) await failedJob(ownerPage, word);

    await logIn(page, ADMIN, `/admin/jobs?state=failed&q=${word}`);
    await expect(page.getByTestId("console-row")).toHaveCount(3);
    await page.getByTestId("bulk-action").selectOption("retry");
    await page.getByTestId("bulk-preview-button").click();
    await expect(page.getByTestId("bulk-count")).toHaveText("3");
    await page.getByTestId("bulk-confirm").click();
    await expect(page.getByTestId("bulk-progress")).toHaveAttribute("data-finished", "true");
    await expect(page.getByTestId("bulk-touched")).toHaveText("3");
    // Their retries are new jobs of the same owner; they fail the same way.
    await page.goto(`/admin/jobs?q=${word}`);
    await expect(page.getByTestId("console-row")).toHaveCount(6);

    await page.goto("/admin/audit");
    const entry = page.getByTestId("audit-row").first();
    await expect(entry.getByTestId("audit-action")).toHaveText("bulk-retry");
    await expect(entry).toContainText(`state=failed&q=${word}`);
    await expect(entry).toContainText("admin");
  });

  test("a paused kind waits, its owner is told, and it runs once resumed", async ({ page, newContext }) => {
    await logIn(page, ADMIN, "/admin/kinds");
    const row = page.locator('[data-testid="kind-row"][data-kind="sleep"]');
    await row.getByTestId("kind-toggle").click();
    await expect(row.getByTestId("kind-state")).toContainText("paused since");
    try {
      const owner = await newContext();
      const ownerPage = await owner.newPage();
      const id = await apiStartJob(ownerPage.request, "sleep", { ms: 0 });
      await ownerPage.goto(`/jobs/${id}`);
      await waitForHydration(ownerPage);
      await expect(ownerPage.getByTestId("job-state")).toHaveText("queued");
      // Said twice: the job's stage, and why it waits.
      await expect(ownerPage.getByTestId("job-stage")).toHaveText("paused by the operator");
      await expect(ownerPage.getByTestId("job-waiting")).toHaveText("Paused by the operator");

      await row.getByTestId("kind-toggle").click();
      await expect(row.getByTestId("kind-state")).toHaveText("running");
      await expect(ownerPage.getByTestId("job-state")).toHaveText("succeeded", { timeout: 15_000 });
    } finally {
      // Never leave the kind paused for the tests that follow.
      if ((await row.getByTestId("kind-state").textContent())?.includes("paused")) {
        await row.getByTestId("kind-toggle").click();
      }
    }
    await page.goto("/admin/audit");
    await expect(page.getByTestId("audit-action").first()).toHaveText("resume");
    await expect(page.getByTestId("audit-action").nth(1)).toHaveText("pause");
  });

  test("the overview's chart moves while jobs finish", async ({ page, newContext }) => {
    await logIn(page, ADMIN);
    const chart = page.getByTestId("finished-chart");
    const before = Number(await chart.getAttribute("data-total"));
    const owner = await newContext();
    const ownerPage = await owner.newPage();
    for (let i = 0; i < 3; i++) await apiStartJob(ownerPage.request, "sleep", { ms: 0 });
    // No reload: the page follows the jobs live.
    await expect
      .poll(async () => Number(await chart.getAttribute("data-total")), { timeout: 15_000 })
      .toBeGreaterThanOrEqual(before + 3);
  });

  test("a recurring job runs now, pauses and resumes from the kinds page", async ({ page }) => {
    // `./scripts/test` starts the server with a schedule named e2e-nightly (03:00 daily).
    await logIn(page, ADMIN, "/admin/kinds");
    const row = page.locator('[data-testid="schedule-row"][data-schedule="e2e-nightly"]');
    await expect(row.getByTestId("schedule-state")).toHaveText("active");
    await expect(row.getByTestId("schedule-next")).toHaveText("03:00:00 UTC");

    await row.getByTestId("schedule-run").click();
    const started = page.getByTestId("schedule-ran").locator("a");
    await expect(started).toHaveAttribute("href", /^\/admin\/jobs\/[0-9A-HJKMNP-TV-Z]{26}$/);
    await started.click();
    await expect(page.getByTestId("console-job-owner")).toHaveText("schedule:e2e-nightly");

    await page.goto("/admin/kinds");
    await waitForHydration(page);
    await row.getByTestId("schedule-toggle").click();
    await expect(row.getByTestId("schedule-state")).toContainText("paused since");
    const listing = await (await page.request.get("/api/schedules")).json();
    const nightly = listing.schedules.find((s: { name: string }) => s.name === "e2e-nightly");
    expect(nightly.paused_since).toMatch(/^\d{4}-/);
    await row.getByTestId("schedule-toggle").click();
    await expect(row.getByTestId("schedule-state")).toHaveText("active");

    await page.goto("/admin/audit");
    await expect(page.getByText("pause-schedule").first()).toBeVisible();
    await expect(page.getByText("run-schedule").first()).toBeVisible();
  });
});
