import { defineConfig } from "@playwright/test";
import { chromiumLaunchOptions } from "./chromium.mjs";

// The server is started by someone else (`cargo leptos end-to-end`, or by hand); global-setup.ts
// waits until it answers.
const baseURL = process.env.ERRAND_BASE_URL ?? "http://127.0.0.1:3000";

export default defineConfig({
  testDir: "./tests",
  globalSetup: "./global-setup.ts",
  // Some tests measure timing (a job must still be running while another finishes): on a 2-core
  // machine that also runs the server, one worker keeps them honest.
  workers: 1,
  fullyParallel: false,
  retries: 0,
  forbidOnly: !!process.env.CI,
  reporter: "list",
  timeout: 60_000,
  expect: { timeout: 15_000 },
  outputDir: "./test-results",
  use: {
    baseURL,
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
  projects: [
    {
      name: "chromium",
      use: {
        browserName: "chromium",
        viewport: { width: 1280, height: 800 },
        // Debian's Chromium: Playwright's own browser builds cannot be downloaded here.
        launchOptions: chromiumLaunchOptions,
      },
    },
  ],
});
