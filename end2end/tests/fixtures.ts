// Shared fixtures and helpers for Errand's end-to-end tests.
//
// Every test must import `test` and `expect` from here, not from "@playwright/test": the
// fixtures below watch every page of every browser context a test opens (the default `page`,
// pages opened from it, and contexts made with `newContext`) and fail the test at its end if any
// page logged a console error or threw an uncaught exception. The only exception: a test that
// provokes an HTTP error on purpose (a 404 page, a rejected form) declares it with
// `allowFailedResource`, because Chromium logs every 4xx/5xx response as a console error.
import {
  test as base,
  expect,
  type APIRequestContext,
  type BrowserContext,
  type BrowserContextOptions,
  type Locator,
  type Page,
} from "@playwright/test";

export { expect };

declare global {
  interface Window {
    /** Set by a test before a client-side navigation; a full page load clears it. */
    __errandMarker?: number;
    /** aria-valuenow values of the job progress bar, in the order seen (consecutive repeats dropped). */
    __errandProgressSeen?: string[];
    /** job-state texts, in the order seen (consecutive repeats dropped). */
    __errandStatesSeen?: string[];
  }
}

/** Path of a job page: /jobs/{ULID}. Matches the end of a full URL. */
export const JOB_URL = /\/jobs\/([0-9A-HJKMNP-TV-Z]{26})$/;
export const TERMINAL_STATES = ["succeeded", "failed", "cancelled"] as const;
export const JOB_STATES = ["queued", "running", ...TERMINAL_STATES] as const;
/** A well-formed ULID that no test ever creates. */
export const UNKNOWN_JOB_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

export interface ApiJob {
  id: string;
  state: string;
  [key: string]: unknown;
}

/** A console error or page error seen during a test. */
export interface PageProblem {
  kind: "console" | "pageerror";
  context: string;
  pageUrl: string;
  text: string;
  /** For console messages: the URL of the script or resource the message is about ("" if none). */
  sourceUrl: string;
  /** For console messages: line and column in `sourceUrl`. */
  sourcePosition: string;
}

interface Fixtures {
  /** Console errors and page errors seen so far in this test (read-only for tests). */
  pageProblems: PageProblem[];
  /**
   * Declares an HTTP error status the test provokes on purpose. Chromium logs every 4xx/5xx
   * response, even the main document's and even with JavaScript off, as the console error
   * "Failed to load resource: the server responded with a status of N (...)". Such a message is
   * tolerated only if its status is one of `statuses` and its resource's path is `path` (a string
   * for an exact path, or a RegExp tested against the path). Any other console error still fails
   * the test.
   */
  allowFailedResource: (statuses: number | number[], path: string | RegExp) => void;
  /**
   * Opens a new browser context, i.e. a different browser with its own cookies (its own Errand
   * session), with the project's baseURL. Its pages are watched for errors; it is closed at the
   * end of the test.
   */
  newContext: (options?: BrowserContextOptions) => Promise<BrowserContext>;
}

function watchContext(context: BrowserContext, problems: PageProblem[], label: string): void {
  const watchPage = (page: Page) => {
    page.on("console", (message) => {
      if (message.type() !== "error") return;
      const where = message.location();
      problems.push({
        kind: "console",
        context: label,
        pageUrl: page.url(),
        text: message.text(),
        sourceUrl: where.url ?? "",
        sourcePosition: where.url ? `${where.lineNumber}:${where.columnNumber}` : "",
      });
    });
    page.on("pageerror", (error) => {
      problems.push({
        kind: "pageerror",
        context: label,
        pageUrl: page.url(),
        text: error.stack ?? error.message,
        sourceUrl: "",
        sourcePosition: "",
      });
    });
  };
  context.pages().forEach(watchPage);
  context.on("page", watchPage);
  // Chromium reports a Content-Security-Policy violation as a console error already; this
  // names the directive as well.
  void context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (event) => {
      console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`);
    });
  });
}

const FAILED_RESOURCE = /^Failed to load resource: the server responded with a status of (\d{3})\b/;

interface Allowance {
  statuses: number[];
  path: string | RegExp;
}

function isAllowed(problem: PageProblem, allowances: Allowance[]): boolean {
  if (problem.kind !== "console") return false;
  const match = FAILED_RESOURCE.exec(problem.text);
  if (!match || !problem.sourceUrl) return false;
  const status = Number(match[1]);
  let path: string;
  try {
    path = new URL(problem.sourceUrl).pathname;
  } catch {
    return false;
  }
  return allowances.some(
    (allowed) =>
      allowed.statuses.includes(status) &&
      (typeof allowed.path === "string" ? allowed.path === path : allowed.path.test(path)),
  );
}

function formatProblem(problem: PageProblem): string {
  const source = problem.sourceUrl ? ` (${problem.sourceUrl}:${problem.sourcePosition})` : "";
  const what = problem.kind === "console" ? "console error" : "page error";
  return `[${problem.context}] ${what} on ${problem.pageUrl}: ${problem.text}${source}`;
}

export const test = base.extend<Fixtures & { _allowances: Allowance[] }>({
  // Internal: the allowances declared by `allowFailedResource`.
  _allowances: async ({}, use) => {
    await use([]);
  },

  pageProblems: [
    async ({ _allowances }, use) => {
      const problems: PageProblem[] = [];
      await use(problems);
      // Runs after every context (and so every page) of the test has been torn down.
      const unexpected = problems.filter((problem) => !isAllowed(problem, _allowances));
      if (unexpected.length > 0) {
        throw new Error(
          `${unexpected.length} console/page error(s) during the test:\n` + unexpected.map(formatProblem).join("\n"),
        );
      }
    },
    { auto: true },
  ],

  allowFailedResource: async ({ _allowances }, use) => {
    await use((statuses, path) => {
      _allowances.push({ statuses: Array.isArray(statuses) ? statuses : [statuses], path });
    });
  },

  context: async ({ context, pageProblems }, use) => {
    watchContext(context, pageProblems, "context 1");
    await use(context);
  },

  newContext: async ({ browser, baseURL, pageProblems }, use) => {
    const contexts: BrowserContext[] = [];
    await use(async (options: BrowserContextOptions = {}) => {
      const context = await browser.newContext({ baseURL, ...options });
      contexts.push(context);
      watchContext(context, pageProblems, `context ${contexts.length + 1}`);
      return context;
    });
    for (const context of contexts) await context.close();
  },
});

// ---------------------------------------------------------------------------------------------
// Helpers

/**
 * Waits until the WASM app is live on this page (the app sets the attribute after hydration).
 * A debug build's WASM is several MB: allow more than the default expect timeout.
 */
export async function waitForHydration(page: Page): Promise<void> {
  await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true", { timeout: 30_000 });
}

export function jobForm(page: Page): Locator {
  return page.locator("form#job-form");
}

export function msInput(page: Page): Locator {
  return jobForm(page).locator('input[name="fields[ms]"]');
}

export function stepsInput(page: Page): Locator {
  return jobForm(page).locator('input[name="fields[steps]"]');
}

export function startButton(page: Page): Locator {
  return jobForm(page).locator("button[type=submit]", { hasText: "Start job" });
}

/** Fills the home page's form and clicks "Start job" (does not wait for anything after it). */
export async function submitJobForm(page: Page, ms: number | string, steps: number | string): Promise<void> {
  await msInput(page).fill(String(ms));
  await stepsInput(page).fill(String(steps));
  await startButton(page).click();
}

/** Submits a valid job through the form, waits for its job page and returns the job's id. */
export async function startJobViaForm(page: Page, ms: number, steps: number): Promise<string> {
  await submitJobForm(page, ms, steps);
  await expect(page).toHaveURL(JOB_URL);
  return jobIdFromUrl(page.url());
}

export function jobIdFromUrl(url: string): string {
  const match = new URL(url).pathname.match(JOB_URL);
  if (!match) throw new Error(`not a job page URL: ${url}`);
  return match[1];
}

/**
 * GET /api/jobs with the cookies of the given context: pass `page.request` or
 * `context.request` (the standalone `request` fixture has its own cookie jar, i.e. another
 * session).
 */
export async function apiListJobs(request: APIRequestContext): Promise<ApiJob[]> {
  const response = await request.get("/api/jobs");
  expect(response.status(), "GET /api/jobs").toBe(200);
  const body = await response.json();
  expect(Array.isArray(body.jobs), "GET /api/jobs has a jobs array").toBe(true);
  expect(body.next_before === null || typeof body.next_before === "string", "next_before is string|null").toBe(true);
  return body.jobs as ApiJob[];
}

/** GET /api/jobs/{id}; returns the status and, on 200, the job. */
export async function apiGetJob(
  request: APIRequestContext,
  id: string,
): Promise<{ status: number; job?: ApiJob }> {
  const response = await request.get(`/api/jobs/${id}`);
  const status = response.status();
  if (status !== 200) return { status };
  return { status, job: (await response.json()) as ApiJob };
}

/**
 * Starts recording, in the page's window, every aria-valuenow of the progress bar and every
 * job-state text, as the DOM changes. The recording survives client-side navigations (not full
 * page loads). Read it with `readJobTimeline`.
 */
export async function recordJobTimeline(page: Page): Promise<void> {
  await page.evaluate(() => {
    const progress: string[] = [];
    const states: string[] = [];
    window.__errandProgressSeen = progress;
    window.__errandStatesSeen = states;
    const record = () => {
      const value = document.querySelector('[data-testid="job-progress"]')?.getAttribute("aria-valuenow");
      if (value != null && progress[progress.length - 1] !== value) progress.push(value);
      const state = document.querySelector('[data-testid="job-state"]')?.textContent?.trim();
      if (state && states[states.length - 1] !== state) states.push(state);
    };
    new MutationObserver(record).observe(document.documentElement, {
      subtree: true,
      childList: true,
      attributes: true,
      characterData: true,
    });
    record();
  });
}

export async function readJobTimeline(page: Page): Promise<{ progress: string[]; states: string[] }> {
  return page.evaluate(() => ({
    progress: [...(window.__errandProgressSeen ?? [])],
    states: [...(window.__errandStatesSeen ?? [])],
  }));
}

/**
 * Tolerates the console error Chromium logs for a rejected (invalid) form submission: the
 * `start_job` server function answers a hydrated page's invalid input with 400. Any other status
 * (a 500 from a crash) still fails the test.
 */
export function allowRejectedSubmission(allowFailedResource: Fixtures["allowFailedResource"]): void {
  allowFailedResource(400, /^\/fn\/start_job$/);
}

/** Waits until the job page shows the job as succeeded (live with JavaScript, by self-refresh without). */
export async function waitForJobSuccess(page: Page): Promise<void> {
  await expect(page.getByTestId("job-state")).toHaveText("succeeded", { timeout: 30_000 });
}

/**
 * POST /api/jobs `{kind, params}` with the cookies of the given context (`page.request` or
 * `context.request`); expects 202 and returns the new job's id.
 */
export async function apiStartJob(
  request: APIRequestContext,
  kind: string,
  params: Record<string, unknown>,
  options: { priority?: number } = {},
): Promise<string> {
  const response = await request.post("/api/jobs", { data: { kind, params, ...options } });
  expect(response.status(), `POST /api/jobs ${kind}: ${await response.text()}`).toBe(202);
  const body = await response.json();
  expect(body.id, "POST /api/jobs answers the new job's id").toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
  return body.id as string;
}

/** Polls GET /api/jobs/{id} until the job is in `state`. */
export async function apiWaitForJobState(
  request: APIRequestContext,
  id: string,
  state: (typeof JOB_STATES)[number],
  timeout = 30_000,
): Promise<void> {
  await expect
    .poll(async () => (await apiGetJob(request, id)).job?.state, { message: `job ${id} reaches ${state}`, timeout })
    .toBe(state);
}
