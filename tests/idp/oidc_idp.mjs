// tests/idp/oidc_idp.mjs - the demo and test OpenID Provider for Gatehouse,
// built on the OpenID Certified npm package `oidc-provider`. Loopback only.
//
//   node tests/idp/oidc_idp.mjs [--port N] [--client FILE]
//
// Port: --port, or GH_IDP_PORT, or 0 (an ephemeral port; the chosen one is
// printed). The issuer is http://127.0.0.1:<port>.
// Client: --client FILE or GH_IDP_CLIENT_FILE (JSON), or GH_IDP_CLIENT (JSON
// text): {client_id, client_secret, redirect_uris, post_logout_redirect_uris,
// backchannel_logout_uri, token_endpoint_auth_method, jwks}. A single object
// or an array of them.
// Users: alice (groups eng, admins), bob (sales), and carol (eng and
// "sales,admins"; email_verified false). Passwords come from
// GH_IDP_<NAME>_PASSWORD, or are random; all are printed.
// API access tokens: ask with resource=GH_IDP_API_RESOURCE (default
// https://api.gatehouse.test) and scope api: a JWT access token (typ at+jwt)
// for that audience, carrying email, email_verified and groups.
// Lifetimes (seconds): GH_IDP_ACCESS_TTL (default 300), GH_IDP_ID_TTL (300),
// GH_IDP_REFRESH_TTL (86400), GH_IDP_SESSION_TTL (86400).
// GH_IDP_TOKEN_DELAY_MS delays every token endpoint answer (slow-IdP tests).
//
// On start it prints human lines and one machine line:
//   GH_IDP_READY {"issuer":"http://127.0.0.1:PORT","port":PORT,"users":{...}}
// Login: GET /interaction/<uid> shows a plain HTML form; POST it (fields
// "login", "password") as application/x-www-form-urlencoded. Consent is implied
// for the registered clients (first-party demo).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: { port: { type: 'string' }, client: { type: 'string' } },
});

function envInt(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number.parseInt(v, 10);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative integer`);
  return n;
}

function loadClients() {
  let text = process.env.GH_IDP_CLIENT;
  const file = args.client || process.env.GH_IDP_CLIENT_FILE;
  if (file) text = fs.readFileSync(file, 'utf8');
  if (!text) {
    text = JSON.stringify({
      client_id: 'gatehouse',
      client_secret: 'gatehouse-demo-secret',
      redirect_uris: ['http://127.0.0.1:8080/.gatehouse/oidc/callback'],
      post_logout_redirect_uris: ['http://127.0.0.1:8080/.gatehouse/signed-out'],
    });
  }
  const parsed = JSON.parse(text);
  return (Array.isArray(parsed) ? parsed : [parsed]).map((c) => {
    const client = {
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...c,
    };
    if (client.backchannel_logout_uri && client.backchannel_logout_session_required === undefined) {
      client.backchannel_logout_session_required = true;
    }
    return client;
  });
}

const password = (name) => process.env[`GH_IDP_${name.toUpperCase()}_PASSWORD`]
  || crypto.randomBytes(9).toString('base64url');

const USERS = {
  alice: {
    password: password('alice'),
    claims: { email: 'alice@example.com', email_verified: true, name: 'Alice Example', groups: ['eng', 'admins'] },
  },
  bob: {
    password: password('bob'),
    claims: { email: 'bob@example.com', email_verified: true, name: 'Bob Example', groups: ['sales'] },
  },
  // An address nobody verified, and a group name with a comma in it.
  carol: {
    password: password('carol'),
    claims: { email: 'carol@example.com', email_verified: false, name: 'Carol Example', groups: ['eng', 'sales,admins'] },
  },
};

// The API resource: access tokens for it are JWTs (RFC 9068, typ at+jwt) with
// the user's email and groups, for clients that ask with resource=API_RESOURCE.
const API_RESOURCE = process.env.GH_IDP_API_RESOURCE || 'https://api.gatehouse.test';

function checkPassword(login, given) {
  const user = Object.hasOwn(USERS, login) ? USERS[login] : null;
  const want = Buffer.from(user ? user.password : 'x'.repeat(12));
  const got = Buffer.from(String(given ?? ''));
  const same = want.length === got.length && crypto.timingSafeEqual(want, got);
  return user && same ? login : null;
}

function signingKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return { keys: [{ ...rsa, use: 'sig', alg: 'RS256', kid: 'rs1' }, { ...ec, use: 'sig', alg: 'ES256', kid: 'es1' }] };
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

function loginPage(uid, clientId, error) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - Demo IdP</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}
main{background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002;width:20rem}
label{display:block;margin:.8rem 0 .3rem}input{width:100%;padding:.5rem;box-sizing:border-box}
button{margin-top:1.2rem;width:100%;padding:.6rem;background:#1f5fbf;color:#fff;border:0;border-radius:4px;font-size:1rem}
.err{color:#a00}</style></head>
<body><main><h1>Demo IdP</h1><p>Sign in to continue to <b>${esc(clientId)}</b>.</p>
${error ? `<p class="err" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" id="login">
<label for="login-field">Username</label><input id="login-field" name="login" autocomplete="username" required autofocus>
<label for="password-field">Password</label><input id="password-field" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form></main></body></html>`;
}

function readForm(req, limit = 16 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

const server = http.createServer();
const port = Number.parseInt(args.port ?? process.env.GH_IDP_PORT ?? '0', 10);
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const actualPort = server.address().port;
const issuer = `http://127.0.0.1:${actualPort}`;

const provider = new Provider(issuer, {
  clients: loadClients(),
  jwks: signingKeys(),
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount: async (_ctx, id) => (Object.hasOwn(USERS, id)
    ? { accountId: id, claims: async () => ({ sub: id, ...USERS[id].claims }) }
    : undefined),
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // ID tokens carry the profile claims too (Gatehouse can also ask userinfo).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== API_RESOURCE) throw new errors.InvalidTarget();
        return { scope: 'api', audience: API_RESOURCE, accessTokenFormat: 'jwt', accessTokenTTL: envInt('GH_IDP_ACCESS_TTL', 300) };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    if (token.kind !== 'AccessToken' || !token.resourceServer || !Object.hasOwn(USERS, token.accountId)) return undefined;
    const { email, email_verified: emailVerified, groups } = USERS[token.accountId].claims;
    return { email, email_verified: emailVerified, groups };
  },
  // Back-channel logout goes to Gatehouse on loopback, which oidc-provider's
  // SSRF guard refuses; this test IdP allows loopback targets and nothing else.
  fetch: (url, options) => {
    const host = new URL(url).hostname;
    if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]') {
      return Promise.reject(new Error(`test IdP only calls loopback, not ${host}`));
    }
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // First-party demo clients: consent is implied for what they ask.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups offline_access');
    grant.addOIDCClaims(['email', 'email_verified', 'name', 'groups']);
    grant.addResourceScope(API_RESOURCE, 'api');
    await grant.save();
    return grant;
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    AccessToken: envInt('GH_IDP_ACCESS_TTL', 300),
    IdToken: envInt('GH_IDP_ID_TTL', 300),
    RefreshToken: envInt('GH_IDP_REFRESH_TTL', 86400),
    Session: envInt('GH_IDP_SESSION_TTL', 86400),
    Grant: envInt('GH_IDP_SESSION_TTL', 86400),
    Interaction: 600,
    AuthorizationCode: 60,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Error</title></head>`
      + `<body><h1>Error</h1><p>${esc(out.error)}: ${esc(out.error_description || '')}</p></body></html>`;
  },
});
provider.on('server_error', (_ctx, err) => console.error('idp server_error', err));
// Why a token request was refused (error and detail only, never a token).
provider.on('grant.error', (_ctx, err) => console.log(`idp grant error: ${err.error}: ${err.error_detail || err.message}`));
provider.on('backchannel.error', (_ctx, err, client) => console.error(`idp backchannel logout to ${client.clientId} failed: ${err.message}`));
provider.on('backchannel.success', (_ctx, client) => console.log(`idp backchannel logout sent to ${client.clientId}`));
// One line per token grant, so tests can count refreshes (grant_type=refresh_token).
provider.on('grant.success', (ctx) => console.log(`idp token grant ${ctx.oidc.params.grant_type} ok`));
provider.on('grant.error', (ctx, err) => console.log(`idp token grant ${ctx.oidc.params?.grant_type} failed: ${err.message}`));

const tokenDelayMs = envInt('GH_IDP_TOKEN_DELAY_MS', 0);
const providerHandler = provider.callback();

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end(`interaction expired or unknown: ${e.message}\n`);
    return;
  }
  if (details.uid !== uid) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end('interaction mismatch\n');
    return;
  }
  const clientId = details.params.client_id;
  if (details.prompt.name === 'login') {
    if (req.method === 'POST' && action === 'login') {
      const form = await readForm(req);
      const accountId = checkPassword(form.get('login'), form.get('password'));
      if (!accountId) {
        console.log(`idp login failed for ${JSON.stringify(form.get('login'))}`);
        res.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
        res.end(loginPage(uid, clientId, 'Wrong username or password.'));
        return;
      }
      console.log(`idp login ok for ${accountId}`);
      await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(loginPage(uid, clientId));
    return;
  }
  // Consent prompt: grant what was asked (first-party clients only are registered).
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId });
  const missing = details.prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

server.on('request', (req, res) => {
  const url = new URL(req.url, issuer);
  const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?$/);
  if (m) {
    interaction(req, res, m[1], m[2]).catch((e) => {
      console.error('idp interaction error', e);
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('interaction error\n');
    });
    return;
  }
  if (url.pathname === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  if (tokenDelayMs > 0 && url.pathname === '/token') {
    setTimeout(() => providerHandler(req, res), tokenDelayMs);
    return;
  }
  providerHandler(req, res);
});

console.log(`Demo IdP (oidc-provider) listening on ${issuer}`);
for (const [name, u] of Object.entries(USERS)) {
  console.log(`  user ${name} password ${u.password} (${u.claims.email}, groups ${u.claims.groups.join(',')})`);
}
console.log(`GH_IDP_READY ${JSON.stringify({
  issuer,
  port: actualPort,
  users: Object.fromEntries(Object.entries(USERS).map(([k, u]) => [k, u.password])),
})}`);

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
