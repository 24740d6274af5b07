// tests/browser/saml_signin.mjs - SAML sign-in through Gatehouse in a real
// browser (Debian's chromium driven by npm playwright-core): the protected
// page sends it to the samlify IdP, whose auto-submit form posts the signed
// Response to the ACS; the app answers with the identity headers,
// /.gatehouse/me shows the identity, and logout goes through the IdP's single
// logout and back.
//
//   node tests/browser/saml_signin.mjs BASE_URL IDP_BASE OUT_DIR
//
// Prints one line per check: "ok NAME" or "not ok NAME: why".
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [base, idpBase, outDir] = process.argv.slice(2);
if (!base || !idpBase || !outDir) {
  console.error('usage: node saml_signin.mjs BASE_URL IDP_BASE OUT_DIR');
  process.exit(2);
}

let passed = 0;
let failed = 0;
function check(name, cond, why = '') {
  if (cond) {
    passed += 1;
    console.log(`ok saml: ${name}`);
  } else {
    failed += 1;
    console.log(`not ok saml: ${name}${why ? `: ${why}` : ''}`);
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
  const visited = [];
  page.on('request', (r) => { if (r.isNavigationRequest()) visited.push(`${r.method()} ${r.url()}`); });

  // 1. A protected URL: AuthnRequest to the IdP, its form posts back to the ACS.
  await page.goto(`${base}/dashboard?tab=1`);
  await page.waitForURL((u) => u.href.startsWith(`${base}/dashboard`));
  check('went through the IdP', visited.some((v) => v.startsWith(`GET ${idpBase}/sso?SAMLRequest=`)),
    visited.join(' | '));
  check('the IdP posted to the ACS', visited.some((v) => v === `POST ${base}/.gatehouse/saml/acs`),
    visited.join(' | '));
  check('back at the original URL', page.url() === `${base}/dashboard?tab=1`, page.url());
  const seen = JSON.parse(await page.locator('body').innerText());
  const hdr = Object.fromEntries(seen.headers.map(([k, v]) => [k.toLowerCase(), v]));
  check('app sees the user', hdr['x-gatehouse-user'] === 'alice@example.com', JSON.stringify(hdr));
  check('app sees the groups', hdr['x-gatehouse-groups'] === 'staff,admins');
  check('app never sees the session cookie', !(hdr.cookie || '').includes('gatehouse_session'));

  // 2. The cookies as the browser stored them.
  const cookies = await browser.cookies(base);
  const sess = cookies.find((c) => c.name === 'gatehouse_session');
  check('session cookie stored, HttpOnly', Boolean(sess) && sess.httpOnly === true);
  check('login cookie cleared', !cookies.some((c) => c.name === 'gatehouse_login'));

  // 3. /.gatehouse/me as a page.
  await page.goto(`${base}/.gatehouse/me`);
  const text = await page.locator('body').innerText();
  check('me page shows the email', text.includes('alice@example.com'), text);
  check('me page shows the identity provider', text.includes('partners'), text);
  fs.mkdirSync(outDir, { recursive: true });
  await page.screenshot({ path: path.join(outDir, 'saml-me.png'), fullPage: true });

  // 4. Logout: the signed LogoutRequest to the IdP, its LogoutResponse back.
  visited.length = 0;
  await page.goto(`${base}/.gatehouse/logout`);
  await page.waitForURL((u) => u.href.startsWith(`${base}/.gatehouse/saml/slo`));
  check('logout went through the IdP', visited.some((v) => v.startsWith(`GET ${idpBase}/slo?SAMLRequest=`)),
    visited.join(' | '));
  const after = await browser.cookies(base);
  check('session cookie gone after logout', !after.some((c) => c.name === 'gatehouse_session'));
  const r = await page.request.get(`${base}/dashboard`, { headers: { accept: 'application/json' }, maxRedirects: 0 });
  check('signed out: protected URL refused', r.status() === 401, String(r.status()));
} catch (e) {
  check('browser run finished', false, e.stack || String(e));
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(`browser-checks: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
