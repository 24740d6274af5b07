// tests/browser/signin.mjs - signs in through Gatehouse in a real browser
// (Debian's chromium driven by npm playwright-core; no browser download):
// the protected page sends it to the IdP's login form, the form is filled
// and submitted like a person would, the app answers, /.gatehouse/me shows the
// identity, a screenshot of it is saved, and logout ends the session.
//
//   node tests/browser/signin.mjs BASE_URL OUT_DIR
//
// Prints one line per check: "ok NAME" or "not ok NAME: why", then
// "browser-checks: N passed, N failed". Exit status 0 only when all passed.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [base, outDir] = process.argv.slice(2);
if (!base || !outDir) {
  console.error('usage: node signin.mjs BASE_URL OUT_DIR');
  process.exit(2);
}
const user = process.env.GH_BROWSER_USER || 'alice';
const password = process.env.GH_BROWSER_PASSWORD || 'alice-pw-1';

let passed = 0;
let failed = 0;
function check(name, cond, why = '') {
  if (cond) {
    passed += 1;
    console.log(`ok ${name}`);
  } else {
    failed += 1;
    console.log(`not ok ${name}${why ? `: ${why}` : ''}`);
  }
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'gh-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 900, height: 640 },
});
try {
  const page = browser.pages()[0] || await browser.newPage();
  page.setDefaultTimeout(20000);

  // 1. A protected URL leads to the IdP's login form.
  await page.goto(`${base}/dashboard?tab=1`);
  const onForm = await page.locator('form#login').count();
  check('redirected to the IdP login form', onForm === 1, page.url());
  check('login form is on the IdP, not Gatehouse', !page.url().startsWith(base), page.url());

  // 2. Fill and submit the form like a person.
  await page.fill('#login-field', user);
  await page.fill('#password-field', password);
  await Promise.all([
    page.waitForURL((u) => u.href.startsWith(`${base}/dashboard`)),
    page.click('button[type=submit]'),
  ]);
  check('back at the original URL', page.url() === `${base}/dashboard?tab=1`, page.url());
  const seen = JSON.parse(await page.locator('body').innerText());
  const hdr = Object.fromEntries(seen.headers.map(([k, v]) => [k.toLowerCase(), v]));
  check('app sees the user', hdr['x-gatehouse-user'] === user, JSON.stringify(hdr));
  check('app sees the email', hdr['x-gatehouse-email'] === `${user}@example.com`);
  check('app never sees the session cookie', !(hdr.cookie || '').includes('gatehouse_session'));

  // 3. The session cookie as the browser stored it.
  const cookies = await browser.cookies(base);
  const sess = cookies.find((c) => c.name === 'gatehouse_session');
  check('session cookie stored', Boolean(sess));
  check('session cookie is HttpOnly', sess && sess.httpOnly === true);
  check('session cookie is SameSite=Lax', sess && sess.sameSite === 'Lax');
  check('session cookie path is /', sess && sess.path === '/');
  const jsCookies = await page.evaluate(() => document.cookie);
  check('scripts cannot read the session cookie', !jsCookies.includes('gatehouse_session'));

  // 4. /.gatehouse/me as a page, and its screenshot.
  await page.goto(`${base}/.gatehouse/me`);
  const text = await page.locator('body').innerText();
  check('me page shows the email', text.includes(`${user}@example.com`), text);
  check('me page shows the identity provider', text.includes('corp'), text);
  const broken = await page.evaluate(() => [...document.images].filter((i) => !i.complete
    || i.naturalWidth === 0).length);
  check('me page has no broken images', broken === 0);
  const cssOk = await page.evaluate(() => [...document.styleSheets].every((s) => {
    try { return s.cssRules.length >= 0; } catch { return false; }
  }));
  check('me page stylesheets load', cssOk);
  fs.mkdirSync(outDir, { recursive: true });
  const shot = path.join(outDir, 'me.png');
  await page.screenshot({ path: shot, fullPage: true });
  check('screenshot saved', fs.statSync(shot).size > 2000, shot);

  // 5. Logout: Gatehouse asks first (a GET ends nothing), its button posts
  // the sign-out, then the IdP's confirmation, back to the signed-out page.
  await page.goto(`${base}/.gatehouse/logout`);
  check('sign-out asks for confirmation',
    (await page.locator('form[action="/.gatehouse/logout"] #confirm-sign-out').count()) === 1);
  await Promise.all([page.waitForURL((u) => !u.href.startsWith(base)),
    page.click('#confirm-sign-out')]);
  const confirm = page.locator('button[name=logout][value=yes]');
  if (await confirm.count()) {
    await Promise.all([
      page.waitForURL((u) => u.href === `${base}/.gatehouse/signed-out`),
      confirm.click()]);
  }
  check('signed-out page shown', (await page.content()).includes('You are signed out'), page.url());
  const after = await browser.cookies(base);
  check('session cookie gone after logout', !after.some((c) => c.name === 'gatehouse_session'));
  await page.goto(`${base}/dashboard`);
  check('signed out: protected URL asks to sign in again',
    (await page.locator('form#login').count()) === 1, page.url());
} catch (e) {
  check('browser run finished', false, e.stack || String(e));
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(`browser-checks: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
