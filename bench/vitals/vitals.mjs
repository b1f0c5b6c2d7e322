// Web vitals of a running Errand server, measured in Debian's Chromium with Playwright.
//
//   node bench/vitals/vitals.mjs <base-url> [--runs N]     e.g. http://127.0.0.1:3000 --runs 5
//
// Prints one line of JSON to stdout (times in ms); on an error (server not answering, a page
// not hydrating within 30 s, ...) prints a message to stderr and exits 1. Missed targets are
// only reported (`targets`), never an error. Everything runs in one browser context, so one
// Errand session: the jobs it starts belong to the pages it opens.
//
// - home, job_page: TTFB (Navigation Timing: responseStart - requestStart, and responseStart
//   from the navigation's start) and LCP (`largest-contentful-paint`) of `/` and of the page of
//   a 2 s sleep job started just before, `/jobs/{id}` (later loads may find it finished). Each
//   is the median of N loads, each in a fresh page with the HTTP cache disabled, so every load
//   fetches the document, CSS, JS and WASM again. `lcp_elements`: what the LCP entries named.
// - interaction: Event Timing entries (duration ≥ 16 ms, the API's floor) of typing into the
//   sleep form's "Duration (ms)" field and clicking between the job kinds on `/`, while 10 sleep
//   jobs stream progress over SSE. `/` itself streams nothing: the live list is `/jobs`. So the
//   script opens `/jobs` from `/` with window.open: same origin, same browsing context group,
//   hence one renderer process and one main thread for both windows, and the list's handling of
//   the stream (events, signals, DOM changes) competes with the form's input handling. Headless
//   Chromium renders only the front window at full frame rate, so the form is brought to the
//   front (else every interaction waits up to 2 s for a frame); the list behind it renders at a
//   lower rate, reported as `list_fps`.
//   INP: the worst interaction, or the 98th percentile from 50 interactions on; `null` when no
//   interaction reached 16 ms. `performed`: interactions the script made; `counted`: those the
//   browser counted (performance.interactionCount); `interactions`: those of 16 ms or more.
// - long_tasks: Long Tasks API entries (> 50 ms) of both windows, from their load to the end of
//   the interactions (`during_interactions`: those not over before the first interaction); a
//   task seen by both windows counts once.
// - problems: console errors, page errors and failed or 4xx/5xx requests seen on any page.
import { parseArgs } from "node:util";
import { chromium } from "@playwright/test";
import { chromiumLaunchOptions } from "../../end2end/chromium.mjs";

const TARGETS = { ttfb_ms: 5, lcp_ms: 300, inp_ms: 50, long_task_ms: 50 };
const HYDRATION_TIMEOUT_MS = 30_000;
const JOB_PAGE_JOB = { kind: "sleep", params: { ms: 2000, steps: 10 } };
const STREAM_JOBS = 10;
// A progress event every 100 ms from each job, for longer than the interactions take.
const STREAM_JOB = { kind: "sleep", params: { ms: 6000, steps: 60 } };
const KIND_CLICKS = ["thumbnail", "csv_import", "webhook", "export", "sleep"];
const TYPED = "1234567890";

function parseCommandLine() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { runs: { type: "string", default: "5" } },
  });
  if (positionals.length !== 1) throw new Error("usage: node vitals.mjs <base-url> [--runs N]");
  const base = new URL(positionals[0]);
  if (!["127.0.0.1", "localhost", "[::1]"].includes(base.hostname)) {
    throw new Error(`${base.origin} is not a loopback address`);
  }
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, not ${values.runs}`);
  return { origin: base.origin, runs };
}

async function checkServer(origin) {
  let response;
  try {
    response = await fetch(`${origin}/`, { signal: AbortSignal.timeout(5_000) });
    await response.arrayBuffer();
  } catch (error) {
    throw new Error(`the server at ${origin} does not answer: ${error.cause?.code ?? error.message}`);
  }
  if (response.status !== 200) throw new Error(`GET ${origin}/ answered ${response.status}`);
}

// Runs in every page before its own scripts: records LCP, Event Timing and long tasks.
function recordVitals() {
  const vitals = { lcp: null, events: [], longTasks: [] };
  window.__vitals = vitals;
  const observe = (type, onEntry, options = {}) =>
    new PerformanceObserver((list) => list.getEntries().forEach(onEntry)).observe({ type, buffered: true, ...options });
  const describe = (element) =>
    element ? [element.tagName.toLowerCase(), ...element.classList].join(".") : null;
  observe("largest-contentful-paint", (entry) => {
    vitals.lcp = { time: entry.startTime, element: describe(entry.element) };
  });
  observe(
    "event",
    (entry) =>
      vitals.events.push({
        name: entry.name,
        duration: entry.duration,
        delay: entry.processingStart - entry.startTime,
        interactionId: entry.interactionId,
        target: describe(entry.target),
      }),
    { durationThreshold: 16 },
  );
  observe("longtask", (entry) =>
    vitals.longTasks.push({ start: performance.timeOrigin + entry.startTime, duration: entry.duration }),
  );
}

function watchProblems(context, problems) {
  context.on("page", (page) => {
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console error on ${page.url()}: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`page error on ${page.url()}: ${error.message}`));
    // ERR_ABORTED is the browser's own cancel, e.g. of an event stream when the script closes its page.
    page.on("requestfailed", (request) => {
      const reason = request.failure()?.errorText;
      if (reason !== "net::ERR_ABORTED") problems.push(`request failed: ${request.url()}: ${reason}`);
    });
    page.on("response", (response) => {
      if (response.status() >= 400) problems.push(`HTTP ${response.status()}: ${response.url()}`);
    });
  });
}

async function disableCache(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
}

async function waitForHydration(page, path) {
  try {
    await page.waitForSelector("body[data-hydrated]", { state: "attached", timeout: HYDRATION_TIMEOUT_MS });
  } catch {
    throw new Error(`${path} did not finish hydrating within ${HYDRATION_TIMEOUT_MS / 1000} s`);
  }
}

async function open(page, path) {
  const response = await page.goto(path);
  if (response?.status() !== 200) throw new Error(`GET ${path} answered ${response?.status()}`);
  await waitForHydration(page, path);
}

// Lets the paints after hydration happen and their performance entries be delivered.
async function afterNextPaints(page) {
  await page.evaluate(
    () =>
      new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(resolve, 50)))),
  );
}

async function startJob(request, job) {
  const response = await request.post("/api/jobs", { data: job });
  if (response.status() !== 202) {
    throw new Error(`POST /api/jobs ${JSON.stringify(job)} answered ${response.status()}: ${await response.text()}`);
  }
  return (await response.json()).id;
}

async function measureLoad(context, path) {
  const page = await context.newPage();
  try {
    await disableCache(context, page);
    await open(page, path);
    await afterNextPaints(page);
    return await page.evaluate(() => {
      const [navigation] = performance.getEntriesByType("navigation");
      return {
        ttfb: navigation.responseStart - navigation.requestStart,
        ttfbFromStart: navigation.responseStart,
        lcp: window.__vitals.lcp,
      };
    });
  } finally {
    await page.close();
  }
}

function median(values) {
  const sorted = values.filter((value) => value != null).sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const round = (ms) => (ms == null ? null : Math.round(ms * 10) / 10);

async function measurePage(context, path, runs) {
  const loads = [];
  for (let run = 0; run < runs; run++) loads.push(await measureLoad(context, path));
  const elements = [...new Set(loads.map((load) => load.lcp?.element).filter(Boolean))];
  return {
    ttfb_ms: round(median(loads.map((load) => load.ttfb))),
    ttfb_from_start_ms: round(median(loads.map((load) => load.ttfbFromStart))),
    lcp_ms: round(median(loads.map((load) => load.lcp?.time))),
    lcp_found: loads.filter((load) => load.lcp).length,
    lcp_elements: elements,
  };
}

// Counts, from now on, the live list's DOM changes (one per row a stream event replaces) and
// its rendered frames.
async function watchList(list) {
  await list.evaluate(() => {
    const seen = { since: performance.now(), updates: 0, frames: 0 };
    window.__list = seen;
    new MutationObserver((records) => {
      seen.updates += records.length;
    }).observe(document.querySelector('[data-testid="job-list"]'), { subtree: true, childList: true });
    const frame = () => {
      seen.frames++;
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  });
}

async function readList(list) {
  return list.evaluate(() => ({
    updates: window.__list.updates,
    fps: (window.__list.frames * 1000) / (performance.now() - window.__list.since),
    active: [...document.querySelectorAll('[data-testid="job-row-state"]')].filter((state) =>
      ["queued", "running"].includes(state.textContent.trim()),
    ).length,
  }));
}

// Types digits after the field's value, then erases them: one click and 20 keystrokes.
async function typeIntoDuration(page) {
  await page.locator('form#job-form input[name="fields[ms]"]').click();
  await page.keyboard.press("End");
  await page.keyboard.type(TYPED, { delay: 50 });
  for (let n = 0; n < TYPED.length; n++) await page.keyboard.press("Backspace", { delay: 20 });
  return 2 + 2 * TYPED.length;
}

async function clickBetweenKinds(page) {
  const clicks = [...KIND_CLICKS, ...KIND_CLICKS];
  for (const kind of clicks) {
    await page.locator(`nav[aria-label="Job kind"] a[href="/?kind=${kind}"]`).click();
    await page.waitForFunction(
      (expected) => document.querySelector('form#job-form input[name="kind"]')?.value === expected,
      kind,
    );
  }
  return clicks.length;
}

// Each interaction's longest entry, the slowest interaction first.
function slowestInteractions(events) {
  const longest = new Map();
  for (const event of events.filter((event) => event.interactionId > 0)) {
    if (event.duration > (longest.get(event.interactionId)?.duration ?? -1)) longest.set(event.interactionId, event);
  }
  return [...longest.values()].sort((a, b) => b.duration - a.duration);
}

// INP as the web-vitals definition has it: the worst interaction, or with 50 interactions or
// more, the one at the 98th percentile.
function interactionToNextPaint(slowest) {
  if (slowest.length === 0) return null;
  return slowest[Math.min(slowest.length - 1, Math.floor(slowest.length / 50))].duration;
}

// Long tasks of several windows, one per task: windows sharing a main thread may all see it.
function distinctLongTasks(windows) {
  const seen = new Map();
  for (const task of windows.flat()) seen.set(`${Math.round(task.start)}:${Math.round(task.duration)}`, task);
  return [...seen.values()];
}

// The session must already exist (a job started): a page opened before the session cookie
// is set streams nothing of the jobs started after it.
async function measureInteraction(context) {
  const form = await context.newPage();
  await open(form, "/");
  const [list] = await Promise.all([form.waitForEvent("popup"), form.evaluate(() => void window.open("/jobs"))]);
  await waitForHydration(list, "/jobs");
  await form.bringToFront();
  await Promise.all(Array.from({ length: STREAM_JOBS }, () => startJob(context.request, STREAM_JOB)));
  await list.locator('[data-testid="job-row"]').nth(STREAM_JOBS - 1).waitFor();
  await watchList(list);

  const started = Date.now();
  const performed = (await typeIntoDuration(form)) + (await clickBetweenKinds(form));
  const elapsed = Date.now() - started;

  const stream = await readList(list);
  const formVitals = await form.evaluate(() => ({ ...window.__vitals, counted: performance.interactionCount }));
  const listVitals = await list.evaluate(() => window.__vitals);
  await list.close();
  await form.close();

  const slowest = slowestInteractions(formVitals.events);
  const worst = slowest
    .slice(0, 5)
    .map(({ name, duration, delay, target }) => ({ name, duration, delay_ms: round(delay), target }));
  const longTasks = distinctLongTasks([formVitals.longTasks, listVitals.longTasks]);
  return {
    interaction: {
      inp_ms: interactionToNextPaint(slowest),
      interactions: slowest.length,
      performed,
      counted: formVitals.counted,
      elapsed_ms: elapsed,
      worst,
      stream: {
        jobs: STREAM_JOBS,
        job: STREAM_JOB.params,
        list_updates: stream.updates,
        list_fps: round(stream.fps),
        active_at_end: stream.active,
      },
    },
    long_tasks: {
      count: longTasks.length,
      longest_ms: round(Math.max(0, ...longTasks.map((task) => task.duration))),
      during_interactions: longTasks.filter((task) => task.start + task.duration >= started).length,
    },
  };
}

async function measure(origin, runs) {
  const browser = await chromium.launch(chromiumLaunchOptions);
  try {
    const context = await browser.newContext({ baseURL: origin, viewport: { width: 1280, height: 800 } });
    const problems = [];
    watchProblems(context, problems);
    await context.addInitScript(recordVitals);

    const home = await measurePage(context, "/", runs);
    const jobId = await startJob(context.request, JOB_PAGE_JOB);
    const jobPage = await measurePage(context, `/jobs/${jobId}`, runs);
    const { interaction, long_tasks } = await measureInteraction(context);
    return {
      runs,
      cache: "disabled",
      home,
      job_page: jobPage,
      interaction,
      long_tasks,
      targets: TARGETS,
      problems,
      chromium: browser.version(),
    };
  } finally {
    await browser.close();
  }
}

try {
  const { origin, runs } = parseCommandLine();
  await checkServer(origin);
  console.log(JSON.stringify(await measure(origin, runs)));
} catch (error) {
  console.error(`vitals: ${error.message}`);
  process.exit(1);
}
