// The job kinds beyond `sleep`: the kind picker, thumbnails, CSV import, webhook and export.
//
// Test inputs are made here with Node built-ins: a real PNG (zlib + crc32), CSV text, and a
// local HTTP endpoint for the webhook (the server under test runs with
// ERRAND_WEBHOOK_ALLOW=127.0.0.1, so it may call loopback addresses).
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as zlib from "node:zlib";
import type { Locator, Page } from "@playwright/test";
import {
  JOB_URL,
  allowRejectedSubmission,
  apiListJobs,
  apiStartJob,
  apiWaitForJobState,
  expect,
  jobForm,
  jobIdFromUrl,
  startButton,
  test,
  waitForHydration,
  waitForJobSuccess,
} from "./fixtures";

const KINDS = [
  { kind: "sleep", label: "Sleep" },
  { kind: "thumbnail", label: "Thumbnails" },
  { kind: "csv_import", label: "CSV import" },
  { kind: "webhook", label: "Webhook" },
  { kind: "export", label: "Export" },
] as const;

function kindPicker(page: Page): Locator {
  return page.locator('nav[aria-label="Job kind"]');
}

/** The hidden input that tells the server which kind the form is for. */
function kindInput(page: Page): Locator {
  return jobForm(page).locator('input[type="hidden"][name="kind"]');
}

/** Opens `/?kind=…` and waits for hydration. */
async function openKind(page: Page, kind: string): Promise<void> {
  await page.goto(`/?kind=${kind}`);
  await waitForHydration(page);
  await expect(kindInput(page)).toHaveValue(kind);
}

/** Clicks "Start job" and waits for the job page; returns the job's id. */
async function startAndLand(page: Page): Promise<string> {
  await startButton(page).click();
  await expect(page).toHaveURL(JOB_URL);
  return jobIdFromUrl(page.url());
}

/** Resolves an href found on the page (relative or absolute) to a full URL. */
function absolute(page: Page, href: string | null): string {
  expect(href, "link has an href").toBeTruthy();
  return new URL(href as string, page.url()).toString();
}

// ---------------------------------------------------------------------------------------------
// A real PNG, made in Node: 8-bit RGB, no interlace, one deflated IDAT chunk.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes: Buffer): number {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const typeAndData = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typeAndData));
  return Buffer.concat([length, typeAndData, crc]);
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** A width×height RGB PNG of four coloured blocks (small once deflated). */
function makePng(width: number, height: number): Buffer {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // colour type: RGB
  header[10] = 0; // compression
  header[11] = 0; // filter method
  header[12] = 0; // no interlace
  const stride = width * 3 + 1;
  const raw = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    raw[y * stride] = 0; // filter type: none
    for (let x = 0; x < width; x++) {
      const at = y * stride + 1 + x * 3;
      raw[at] = x < width / 2 ? 200 : 40;
      raw[at + 1] = y < height / 2 ? 180 : 60;
      raw[at + 2] = 128;
    }
  }
  return Buffer.concat([
    PNG_SIGNATURE,
    pngChunk("IHDR", header),
    pngChunk("IDAT", zlib.deflateSync(raw)),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

function imageFormat(bytes: Buffer): string {
  if (bytes.subarray(0, 8).equals(PNG_SIGNATURE)) return "png";
  if (bytes.subarray(0, 4).toString("latin1") === "RIFF" && bytes.subarray(8, 12).toString("latin1") === "WEBP") {
    return "webp";
  }
  return `unknown (${bytes.subarray(0, 12).toString("hex")})`;
}

// ---------------------------------------------------------------------------------------------
// A local HTTP endpoint for the webhook kind.

interface ReceivedRequest {
  method: string;
  contentType: string;
  body: string;
}

interface Endpoint {
  url: string;
  requests: ReceivedRequest[];
}

/**
 * `endpoint(statusFor)` starts an HTTP server on 127.0.0.1 (a free port) that records every
 * request and answers the status `statusFor(n)` for the n-th request (1-based): 200 with
 * `{"ok":true,"echo":<the request body>}`, anything else with a short error body. Servers are
 * closed at the end of the test.
 */
const webhookTest = test.extend<{ endpoint: (statusFor?: (n: number) => number) => Promise<Endpoint> }>({
  endpoint: async ({}, use) => {
    const servers: http.Server[] = [];
    await use(async (statusFor = () => 200) => {
      const requests: ReceivedRequest[] = [];
      const server = http.createServer((request, response) => {
        const chunks: Buffer[] = [];
        request.on("data", (chunk: Buffer) => chunks.push(chunk));
        request.on("end", () => {
          const body = Buffer.concat(chunks).toString("utf8");
          requests.push({
            method: request.method ?? "",
            contentType: String(request.headers["content-type"] ?? ""),
            body,
          });
          const status = statusFor(requests.length);
          if (status === 200) {
            let echo: unknown;
            try {
              echo = JSON.parse(body);
            } catch {
              echo = body;
            }
            response.writeHead(200, { "content-type": "application/json" });
            response.end(JSON.stringify({ ok: true, echo }));
          } else {
            response.writeHead(status, { "content-type": "text/plain" });
            response.end(`status ${status} on purpose`);
          }
        });
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      return { url: `http://127.0.0.1:${port}/hook`, requests };
    });
    for (const server of servers) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  },
});

// ---------------------------------------------------------------------------------------------

test.describe("the kind picker", () => {
  test("links every kind, and each link shows that kind's form", async ({ page }) => {
    await page.goto("/");
    await waitForHydration(page);
    await expect(kindInput(page)).toHaveValue("sleep");

    const picker = kindPicker(page);
    await expect(picker.locator("a")).toHaveCount(KINDS.length);
    for (const { kind, label } of KINDS) {
      await expect(picker.locator(`a[href="/?kind=${kind}"]`)).toHaveText(label);
    }

    // One field that only this kind's form has.
    const marker: Record<string, string> = {
      sleep: 'input[name="fields[ms]"]',
      thumbnail: 'input[type="file"][name="file"]',
      csv_import: 'input[type="file"][name="file"]',
      webhook: 'input[name="fields[url]"]',
      export: 'select[name="fields[state]"]',
    };
    // Sleep last, so every click changes the kind.
    for (const { kind } of [...KINDS.slice(1), KINDS[0]]) {
      await picker.locator(`a[href="/?kind=${kind}"]`).click();
      await expect(page).toHaveURL(new RegExp(`/\\?kind=${kind}$`));
      await expect(kindInput(page)).toHaveValue(kind);
      await expect(jobForm(page).locator(marker[kind])).toBeVisible();
      await expect(startButton(page)).toBeVisible();
    }
  });
});

test.describe("thumbnail jobs", () => {
  test("an uploaded PNG gives a PNG and a WebP thumbnail, never upscaled, that load", async ({ page }, testInfo) => {
    const image = testInfo.outputPath("blocks.png");
    fs.writeFileSync(image, makePng(300, 200));

    await openKind(page, "thumbnail");
    const form = jobForm(page);
    await expect(form).toHaveAttribute("enctype", "multipart/form-data");
    await expect(form).toHaveAttribute("method", /^post$/i);
    await expect(form).toHaveAttribute("action", /\/upload$/);
    const file = form.getByLabel("Image", { exact: true });
    await expect(file).toHaveAttribute("type", "file");
    await expect(file).toHaveAttribute("name", "file");
    const sizes = form.getByLabel("Sizes (px)", { exact: true });
    await expect(sizes).toHaveAttribute("name", "sizes");
    await expect(sizes).toHaveValue("128,512,1024");

    await file.setInputFiles(image);
    const id = await startAndLand(page); // a full page navigation is fine here
    await waitForHydration(page);
    await waitForJobSuccess(page);

    // 300×200 with sizes 128,512,1024: only 128 is below the long side, so 128×85 twice.
    const figures = page.getByTestId("thumbnails").locator('figure[data-testid="thumbnail"]');
    await expect(figures).toHaveCount(2);
    const formats: string[] = [];
    for (let i = 0; i < 2; i++) {
      const figure = figures.nth(i);
      const img = figure.locator("img");
      await expect(img).toHaveCount(1);
      await expect(img).toHaveAttribute("src", new RegExp(`^/files/${id}/`));

      // The image really loads in the browser (scrolled into view in case it is lazy).
      await img.scrollIntoViewIfNeeded();
      await expect
        .poll(
          () =>
            img.evaluate((el) => {
              const loaded = el as HTMLImageElement;
              return loaded.complete ? `${loaded.naturalWidth}×${loaded.naturalHeight}` : "loading";
            }),
          {
            message: `thumbnail ${i + 1} loads`,
          },
        )
        .toBe("128×85");

      const caption = figure.locator("figcaption");
      await expect(caption).toContainText("128×85");
      const rest = ((await caption.textContent()) ?? "").replace("128×85", "");
      expect(rest, `the caption also gives the byte size: "${rest}"`).toMatch(/\d\s*(bytes?|B|[kKM]i?B)\b/);

      const response = await page.request.get(absolute(page, await img.getAttribute("src")));
      expect(response.status(), "GET the thumbnail").toBe(200);
      const bytes = await response.body();
      formats.push(imageFormat(bytes));

      const download = figure.locator("a[download]");
      await expect(download).toHaveCount(1);
      const downloaded = await page.request.get(absolute(page, await download.getAttribute("href")));
      expect(downloaded.status(), "GET the download link").toBe(200);
      expect((await downloaded.body()).equals(bytes), "the download link gives the thumbnail shown").toBe(true);
    }
    expect(formats.sort(), "one thumbnail in the original format, one in WebP").toEqual(["png", "webp"]);
  });

  test("a file that is not an image shows a field error and starts nothing", async ({ page }, testInfo) => {
    const notImage = testInfo.outputPath("x.png");
    fs.writeFileSync(notImage, "this is plain text, not a PNG\n");

    await openKind(page, "thumbnail");
    const before = (await apiListJobs(page.request)).length;

    await jobForm(page).getByLabel("Image", { exact: true }).setInputFiles(notImage);
    await startButton(page).click();

    // Redirected back to the form, with the error.
    const error = page.getByTestId("field-error-file");
    await expect(error).toBeVisible();
    await expect(error).toHaveAttribute("role", "alert");
    await expect(error).not.toHaveText(/^\s*$/);
    await expect(page).not.toHaveURL(JOB_URL);
    await expect(kindInput(page)).toHaveValue("thumbnail");
    await waitForHydration(page);

    expect((await apiListJobs(page.request)).length).toBe(before);
  });
});

test.describe("CSV import jobs", () => {
  test("reports column types, valid rows and invalid lines, with a JSON report", async ({ page }, testInfo) => {
    // Line numbers are file lines, the header being line 1. Line 5 has too few fields, line 7
    // too many; line 6 has a quoted comma, which is one field.
    const csv = [
      "id,price,active,joined,name", // 1
      "1,9.99,true,2024-01-15,Ada", // 2
      "2,12.50,false,2024-02-01,Grace", // 3
      "3,7.25,true,2023-12-31,Linus", // 4
      "4,3.25,false", // 5: 3 fields
      '5,1.50,true,2024-03-10,"Lovelace, Ada"', // 6
      "6,2.75,false,2024-04-01,Bob,extra", // 7: 6 fields
      "7,0.99,true,2024-05-20,Margaret", // 8
    ].join("\n") + "\n";
    const file = testInfo.outputPath("people.csv");
    fs.writeFileSync(file, csv);

    await openKind(page, "csv_import");
    const form = jobForm(page);
    await expect(form).toHaveAttribute("enctype", "multipart/form-data");
    const input = form.getByLabel("CSV file", { exact: true });
    await expect(input).toHaveAttribute("type", "file");
    await expect(input).toHaveAttribute("name", "file");

    await input.setInputFiles(file);
    await startAndLand(page);
    await waitForHydration(page);
    await waitForJobSuccess(page);

    const report = page.getByTestId("csv-report");
    await expect(report).toBeVisible();
    const expected = [
      ["id", "integer"],
      ["price", "float"],
      ["active", "boolean"],
      ["joined", "date"],
      ["name", "text"],
    ];
    const columns = report.locator('tr[data-testid="csv-column"]');
    await expect(columns).toHaveCount(expected.length);
    for (const [i, [name, type]] of expected.entries()) {
      const cells = columns.nth(i).locator("td, th");
      await expect(cells.filter({ hasText: new RegExp(`^\\s*${name}\\s*$`) }), `column ${i + 1} is ${name}`).toHaveCount(1);
      await expect(cells.filter({ hasText: new RegExp(`^\\s*${type}\\s*$`) }), `${name} is ${type}`).toHaveCount(1);
    }

    await expect(page.getByTestId("csv-rows")).toHaveText(/^\s*5\s*$/);
    await expect(page.getByTestId("csv-invalid-rows").locator("li")).toHaveText([
      /line 5: expected 5 fields, found 3/,
      /line 7: expected 5 fields, found 6/,
    ]);

    const download = page.locator('a[data-testid="csv-report-download"]');
    await expect(download).toBeVisible();
    const response = await page.request.get(absolute(page, await download.getAttribute("href")));
    expect(response.status(), "GET the JSON report").toBe(200);
    const json = await response.json();
    expect(Array.isArray(json.columns), "report has a columns array").toBe(true);
    expect(json.columns).toHaveLength(expected.length);
    expect(Array.isArray(json.invalid_rows), "report has an invalid_rows array").toBe(true);
    expect(json.invalid_rows).toHaveLength(2);
  });
});

webhookTest.describe("webhook jobs", () => {
  async function fillWebhookForm(page: Page, url: string, payload: string, timeoutMs: string): Promise<void> {
    const form = jobForm(page);
    const urlInput = form.getByLabel("URL", { exact: true });
    await expect(urlInput).toHaveAttribute("name", "fields[url]");
    const payloadInput = form.getByLabel("Payload (JSON)", { exact: true });
    await expect(payloadInput).toHaveAttribute("name", "fields[payload]");
    expect(await payloadInput.evaluate((el) => el.tagName)).toBe("TEXTAREA");
    const timeoutInput = form.getByLabel("Timeout (ms)", { exact: true });
    await expect(timeoutInput).toHaveAttribute("name", "fields[timeout_ms]");
    await urlInput.fill(url);
    await payloadInput.fill(payload);
    await timeoutInput.fill(timeoutMs);
  }

  webhookTest("posts the JSON payload and shows the answer's status, latency and body", async ({ page, endpoint }) => {
    const hook = await endpoint();
    await openKind(page, "webhook");
    await fillWebhookForm(page, hook.url, '{"hello":"errand"}', "5000");
    await startAndLand(page);
    await waitForJobSuccess(page);

    await expect(page.getByTestId("webhook-status")).toHaveText(/^\s*200\s*$/);
    await expect(page.getByTestId("webhook-latency")).toContainText("ms");
    const body = page.locator('pre[data-testid="webhook-body"]');
    await expect(body).toContainText(/"ok":\s*true/);

    expect(hook.requests, "the endpoint was called once").toHaveLength(1);
    const [received] = hook.requests;
    expect(received.method).toBe("POST");
    expect(received.contentType).toMatch(/^application\/json\b/);
    expect(JSON.parse(received.body), `payload received: ${received.body}`).toEqual({ hello: "errand" });
  });

  webhookTest("retries 503 answers and succeeds on the third attempt", async ({ page, endpoint }) => {
    const hook = await endpoint((n) => (n <= 2 ? 503 : 200));
    await openKind(page, "webhook");
    await fillWebhookForm(page, hook.url, '{"hello":"errand"}', "5000");
    await startAndLand(page);
    await waitForJobSuccess(page);

    await expect(page.getByTestId("webhook-status")).toHaveText(/^\s*200\s*$/);
    const attemptLines = page.getByTestId("job-logs").locator("li").filter({ hasText: /attempt/i });
    await expect.poll(() => attemptLines.count(), { message: "log lines mentioning an attempt" }).toBeGreaterThanOrEqual(3);
    expect(hook.requests, "the endpoint got three requests").toHaveLength(3);
    for (const received of hook.requests) {
      expect(JSON.parse(received.body)).toEqual({ hello: "errand" });
    }
  });

  webhookTest("a URL that is not http(s) shows a field error and starts nothing", async ({ page, allowFailedResource }) => {
    allowRejectedSubmission(allowFailedResource);
    await openKind(page, "webhook");
    const before = (await apiListJobs(page.request)).length;

    await fillWebhookForm(page, "ftp://example.com/x", '{"hello":"errand"}', "5000");
    await startButton(page).click();

    const error = page.getByTestId("field-error-url");
    await expect(error).toBeVisible();
    await expect(error).toHaveAttribute("role", "alert");
    await expect(error).not.toHaveText(/^\s*$/);
    await expect(page).not.toHaveURL(JOB_URL);
    expect((await apiListJobs(page.request)).length).toBe(before);
  });
});

test.describe("export jobs", () => {
  test("exports this session's succeeded sleep jobs as CSV", async ({ page }) => {
    await page.goto("/");
    await waitForHydration(page);

    // Three finished no-op jobs to export.
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(await apiStartJob(page.request, "sleep", { ms: 0 }));
    for (const id of ids) await apiWaitForJobState(page.request, id, "succeeded");

    await kindPicker(page).locator('a[href="/?kind=export"]').click();
    await expect(kindInput(page)).toHaveValue("export");
    const form = jobForm(page);

    const state = form.getByLabel("State", { exact: true });
    await expect(state).toHaveAttribute("name", "fields[state]");
    expect(await state.locator("option").evaluateAll((options) => options.map((o) => (o as HTMLOptionElement).value))).toEqual(
      ["", "queued", "running", "succeeded", "failed", "cancelled"],
    );
    const kind = form.getByLabel("Kind", { exact: true });
    await expect(kind).toHaveAttribute("name", "fields[kind]");
    const kindValues = await kind.locator("option").evaluateAll((options) => options.map((o) => (o as HTMLOptionElement).value));
    expect(kindValues[0], "the first kind option is 'any'").toBe("");
    expect(kindValues).toEqual(expect.arrayContaining(KINDS.map((k) => k.kind)));
    for (const [label, name] of [
      ["From", "fields[from]"],
      ["To", "fields[to]"],
    ]) {
      const date = form.getByLabel(label, { exact: true });
      await expect(date).toHaveAttribute("type", "date");
      await expect(date).toHaveAttribute("name", name);
    }

    await state.selectOption("succeeded");
    await kind.selectOption("sleep");
    const exportId = await startAndLand(page);
    expect(ids).not.toContain(exportId);
    await waitForJobSuccess(page);

    await expect(page.getByTestId("export-rows")).toHaveText(/^\s*3\s*$/);
    const download = page.locator('a[data-testid="export-download"]');
    await expect(download).toBeVisible();
    const response = await page.request.get(absolute(page, await download.getAttribute("href")));
    expect(response.status(), "GET the export").toBe(200);
    const lines = (await response.text()).split(/\r?\n/).filter((line) => line !== "");
    expect(lines[0], "header line").toMatch(/^id,kind,state\b/);
    const rows = lines.slice(1);
    expect(rows, "exactly the three sleep jobs").toHaveLength(3);
    const exported = rows.map((row) => row.split(",")[0].replace(/^"|"$/g, ""));
    expect(exported.sort()).toEqual([...ids].sort());
  });
});
