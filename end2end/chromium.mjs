// How Errand's browser tools launch Debian's Chromium (Playwright's own browser builds cannot be
// downloaded here): the end-to-end tests (playwright.config.ts) and the benchmark's web vitals
// scenario (bench/vitals/vitals.mjs). CHROMIUM_PATH points elsewhere.
export const chromiumLaunchOptions = {
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
};
