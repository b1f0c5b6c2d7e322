import type { FullConfig } from "@playwright/test";

const WAIT_MS = 120_000;
const INTERVAL_MS = 250;

// `cargo leptos end-to-end` starts the server and the tests at the same moment: wait until the
// home page answers 200 before any test runs.
export default async function globalSetup(config: FullConfig): Promise<void> {
  if (process.env.PW_LIST) return;
  const baseURL =
    (config.projects[0]?.use?.baseURL as string | undefined) ??
    process.env.ERRAND_BASE_URL ??
    "http://127.0.0.1:3000";
  const url = new URL("/", baseURL).toString();
  const deadline = Date.now() + WAIT_MS;
  let last = "no answer yet";
  while (Date.now() < deadline) {
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
      // Drain the body so the connection is released.
      await response.arrayBuffer();
      if (response.status === 200) return;
      last = `HTTP ${response.status}`;
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause;
      last = cause?.code ?? String(error);
    }
    await new Promise((resolve) => setTimeout(resolve, INTERVAL_MS));
  }
  throw new Error(`the server at ${url} did not answer 200 within ${WAIT_MS / 1000} s (last: ${last})`);
}
