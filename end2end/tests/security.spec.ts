import { expect, test } from "./fixtures";

// What another site can and cannot do to a visitor, in a real browser.
test.describe("security", () => {
  test("pages hydrate under their Content-Security-Policy, whose nonce is the script's", async ({ page }) => {
    const response = await page.goto("/");
    const policy = response?.headers()["content-security-policy"] ?? "";
    expect(policy).toContain("script-src 'self' 'wasm-unsafe-eval' 'nonce-");
    expect(policy).toContain("frame-ancestors 'none'");
    const nonce = /'nonce-([^']+)'/.exec(policy)?.[1];
    expect(nonce).toBeTruthy();
    // The browser hides a nonce from the DOM attribute once the policy applied it; the
    // property still holds it.
    const scriptNonces = await page.locator("script").evaluateAll((scripts) =>
      scripts.map((s) => (s as HTMLScriptElement).nonce),
    );
    expect(scriptNonces).toContain(nonce);
    // Hydration ran: the policy let the module script and the WASM run. The fixtures fail the
    // test on any console error, which is how Chromium reports a policy violation.
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
    expect(response?.headers()["set-cookie"], "a page view starts no session").toBeUndefined();
  });

  test("a form another site posts to Errand is refused before it runs", async ({ page, baseURL, allowFailedResource }) => {
    allowFailedResource(403, "/upload");
    const errand = new URL(baseURL ?? "http://127.0.0.1:3000").origin;
    // Another site's page (served by Playwright, no network), whose form posts to Errand as
    // soon as it loads: without the check this would start a job and land on its page.
    await page.route("http://evil.test/**", (route) =>
      route.fulfill({
        contentType: "text/html",
        body: `<!DOCTYPE html><form id="f" method="post" enctype="multipart/form-data"
                 action="${errand}/upload"><input name="kind" value="sleep">
                 <input name="ms" value="0"><input name="steps" value="1"></form>
               <script>document.getElementById("f").submit()</script>`,
      }),
    );
    const refused = page.waitForResponse((r) => r.url() === `${errand}/upload`);
    await page.goto("http://evil.test/");
    expect((await refused).status()).toBe(403);
    await expect(page.locator("body")).toContainText("cross-site request refused");
    expect(page.url()).toBe(`${errand}/upload`);
  });
});
