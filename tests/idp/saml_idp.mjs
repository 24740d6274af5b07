// A SAML 2.0 identity provider for the integration tests, on 127.0.0.1: npm
// `samlify` parses the SP's AuthnRequest (HTTP-Redirect, its signature checked
// when GH_SAML_WANT_SIGNED_REQUESTS=1), signs the Response (RSA-SHA256, the
// assertion signed as the SP metadata asks) and answers with the HTTP-POST
// auto-submit form.
//
// TEST-ONLY: `case=<name>` on /sso forges a Response with exactly one defect
// (the attacks Gatehouse must refuse), re-signed with the IdP's key where the
// defect is not the signature itself. Never use this file outside tests.
//
// Environment: GH_SAML_PORT, GH_SAML_KEY / GH_SAML_CERT (the IdP's PEM key and
// certificate), GH_SAML_OTHER_KEY / GH_SAML_OTHER_CERT (a key the SP does not
// trust), GH_SAML_SP_METADATA (the SP metadata URL, fetched on first use),
// GH_SAML_WANT_SIGNED_REQUESTS=1. Prints "GH_SAML_READY <port>" when listening.
import http from 'node:http';
import fs from 'node:fs';
import crypto from 'node:crypto';
import samlify from 'samlify'; // the CommonJS exports object (SamlLib is a getter)
import { DOMParser, XMLSerializer } from '@xmldom/xmldom';
import { createRequire } from 'node:module';

// xml-crypto itself (samlify's signer) for the HMAC forgery.
const { SignedXml } = createRequire(import.meta.url)('xml-crypto');

const port = Number(process.env.GH_SAML_PORT);
const base = `http://127.0.0.1:${port}`;
const key = fs.readFileSync(process.env.GH_SAML_KEY, 'utf8');
const cert = fs.readFileSync(process.env.GH_SAML_CERT, 'utf8');
const otherKey = fs.readFileSync(process.env.GH_SAML_OTHER_KEY, 'utf8');
const otherCert = fs.readFileSync(process.env.GH_SAML_OTHER_CERT, 'utf8');
const wantSigned = process.env.GH_SAML_WANT_SIGNED_REQUESTS === '1';

// The AuthnRequest is parsed by samlify; its XML schema check is not what
// these tests are about (Gatehouse's requests come from lasso).
samlify.setSchemaValidator({ validate: async () => 'skipped' });

const REDIRECT = 'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect';
const RSA_SHA256 = 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256';
const RSA_SHA1 = 'http://www.w3.org/2000/09/xmldsig#rsa-sha1';

const idp = samlify.IdentityProvider({
  entityID: `${base}/metadata`,
  privateKey: key,
  signingCert: cert,
  wantAuthnRequestsSigned: wantSigned,
  wantLogoutRequestSigned: true,
  requestSignatureAlgorithm: RSA_SHA256,
  nameIDFormat: ['urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress'],
  singleSignOnService: [{ Binding: REDIRECT, Location: `${base}/sso` }],
  singleLogoutService: [{ Binding: REDIRECT, Location: `${base}/slo` }],
});

// The same IdP encrypting assertions to the SP's encryption certificate.
const idpEnc = samlify.IdentityProvider({
  ...idp.entitySetting,
  isAssertionEncrypted: true,
  dataEncryptionAlgorithm: 'http://www.w3.org/2009/xmlenc11#aes256-gcm',
  keyEncryptionAlgorithm: 'http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p',
});

const USERS = {
  alice: { email: 'alice@example.com', name: 'Alice Liddell', groups: ['staff', 'admins'] },
  bob: { email: 'bob@example.com', name: 'Bob Builder', groups: ['staff'] },
  mallory: { email: 'mallory@example.com', name: 'Mallory', groups: ['admins', 'root'] },
};

// The SP as this IdP knows it, from Gatehouse's metadata: the IdP signs its
// logout messages to it (spUnsigned: the test-only unsigned variant).
let sp = null;
let spUnsigned = null;
async function serviceProvider() {
  if (sp === null) {
    const r = await fetch(process.env.GH_SAML_SP_METADATA);
    if (r.status !== 200) throw new Error(`SP metadata: HTTP ${r.status}`);
    const metadata = await r.text();
    sp = samlify.ServiceProvider({ metadata, wantLogoutRequestSigned: true, wantLogoutResponseSigned: true });
    spUnsigned = samlify.ServiceProvider({ metadata });
  }
  return sp;
}

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;')
  .replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
const newId = () => '_' + crypto.randomBytes(16).toString('hex');

// The Response XML before signing; v holds every value a defect may change.
function responseXml(v) {
  const attrs = Object.entries(v.attributes).map(([n, vals]) =>
    `<saml:Attribute Name="${esc(n)}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic">` +
    vals.map((x) => `<saml:AttributeValue xsi:type="xs:string">${esc(x)}</saml:AttributeValue>`).join('') +
    '</saml:Attribute>').join('');
  const irt = v.inResponseTo ? ` InResponseTo="${esc(v.inResponseTo)}"` : '';
  const dest = v.destination ? ` Destination="${esc(v.destination)}"` : '';
  const audience = v.audience === null ? '' :
    `<saml:AudienceRestriction><saml:Audience>${esc(v.audience)}</saml:Audience></saml:AudienceRestriction>`;
  const assertion = v.noAssertion ? '' :
    `<saml:Assertion xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" ID="${v.assertionId}" Version="2.0" IssueInstant="${v.now}">` +
    `<saml:Issuer>${esc(v.issuer)}</saml:Issuer>` +
    `<saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">${esc(v.nameId)}</saml:NameID>` +
    `<saml:SubjectConfirmation Method="${esc(v.method)}"><saml:SubjectConfirmationData NotOnOrAfter="${v.scdNotOnOrAfter}" Recipient="${esc(v.recipient)}"${irt}/></saml:SubjectConfirmation></saml:Subject>` +
    `<saml:Conditions NotBefore="${v.notBefore}" NotOnOrAfter="${v.notOnOrAfter}">${audience}</saml:Conditions>` +
    `<saml:AuthnStatement AuthnInstant="${v.now}" SessionIndex="${esc(v.sessionIndex)}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>` +
    `<saml:AttributeStatement>${attrs}</saml:AttributeStatement>` +
    '</saml:Assertion>';
  return `<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="${v.responseId}" Version="2.0" IssueInstant="${v.now}"${dest}${irt}>` +
    `<saml:Issuer>${esc(v.issuer)}</saml:Issuer>` +
    `<samlp:Status><samlp:StatusCode Value="${esc(v.status)}"/></samlp:Status>` +
    assertion + '</samlp:Response>';
}

const certBody = (pem) => pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');

function sign(xml, { assertion = true, message = false, alg = RSA_SHA256, other = false } = {}) {
  const common = {
    privateKey: other ? otherKey : key,
    signingCert: certBody(other ? otherCert : cert),
    signatureAlgorithm: alg,
    isBase64Output: false,
  };
  if (assertion) {
    xml = samlify.SamlLib.constructSAMLSignature({
      ...common,
      rawSamlMessage: xml,
      referenceTagXPath: "/*[local-name(.)='Response']/*[local-name(.)='Assertion']",
      signatureConfig: {
        prefix: 'ds',
        location: { reference: "/*[local-name(.)='Response']/*[local-name(.)='Assertion']/*[local-name(.)='Issuer']", action: 'after' },
      },
    });
  }
  if (message) {
    xml = samlify.SamlLib.constructSAMLSignature({
      ...common,
      rawSamlMessage: xml,
      isMessageSigned: true,
      signatureConfig: {
        prefix: 'ds',
        location: { reference: "/*[local-name(.)='Response']/*[local-name(.)='Issuer']", action: 'after' },
      },
    });
  }
  return xml;
}

const SAMLP = 'urn:oasis:names:tc:SAML:2.0:protocol';
const SAML = 'urn:oasis:names:tc:SAML:2.0:assertion';
const parse = (xml) => new DOMParser().parseFromString(xml, 'text/xml');
const serialize = (doc) => new XMLSerializer().serializeToString(doc);
const assertionOf = (doc) => doc.getElementsByTagNameNS(SAML, 'Assertion')[0];

// An unsigned assertion for mallory, made from the signed one's text.
function evilAssertion(doc, signed, sameId) {
  const evil = signed.cloneNode(true);
  for (const s of Array.from(evil.getElementsByTagNameNS('http://www.w3.org/2000/09/xmldsig#', 'Signature'))) {
    s.parentNode.removeChild(s);
  }
  evil.setAttribute('ID', sameId ? signed.getAttribute('ID') : newId());
  const nid = evil.getElementsByTagNameNS(SAML, 'NameID')[0];
  nid.textContent = USERS.mallory.email;
  for (const v of Array.from(evil.getElementsByTagNameNS(SAML, 'AttributeValue'))) {
    if (v.textContent === USERS.alice.email) v.textContent = USERS.mallory.email;
  }
  return evil;
}

// Builds the Response for an AuthnRequest (info: request id, ACS URL, SP
// entity id) with the named defect; returns the XML string.
function build(info, user, kase, q) {
  const now = Date.now();
  const u = USERS[user] || USERS.alice;
  const v = {
    responseId: newId(),
    assertionId: q.get('aid') || newId(),
    now: iso(now),
    issuer: idp.entityMeta.getEntityID(),
    destination: info.acs,
    inResponseTo: info.id,
    recipient: info.acs,
    audience: info.spEntityId,
    method: 'urn:oasis:names:tc:SAML:2.0:cm:bearer',
    notBefore: iso(now - 60000),
    notOnOrAfter: iso(now + 300000),
    scdNotOnOrAfter: iso(now + 300000),
    nameId: u.email,
    sessionIndex: q.get('sid') || '_s' + crypto.randomBytes(8).toString('hex'),
    status: 'urn:oasis:names:tc:SAML:2.0:status:Success',
    attributes: { email: [u.email], displayName: [u.name], groups: u.groups },
    noAssertion: false,
  };
  let opts = {};
  let post = null;
  switch (kase) {
    case 'raw': return responseXml(v); // unsigned: samlify signs the plain flow
    case 'baseline': break;
    case 'encrypted': break; // signed, then encrypted (below)
    case 'encrypted_message_signed': opts = { assertion: true, message: true }; break;
    case 'encrypted_unsigned': opts = { assertion: false }; break;
    case 'message_signed': opts = { assertion: true, message: true }; break;
    case 'unsigned': opts = { assertion: false }; break;
    case 'otherkey': opts = { other: true }; break;
    case 'sha1': opts = { alg: RSA_SHA1 }; break;
    case 'hmac': // HMAC-SHA1 keyed with the IdP's public certificate (a known SP pitfall)
      opts = { assertion: false };
      post = (xml) => {
        const sig = new SignedXml({
          privateKey: Buffer.from(cert),
          canonicalizationAlgorithm: 'http://www.w3.org/2001/10/xml-exc-c14n#',
        });
        sig.enableHMAC();
        sig.signatureAlgorithm = 'http://www.w3.org/2000/09/xmldsig#hmac-sha1';
        sig.addReference({
          xpath: "/*[local-name(.)='Response']/*[local-name(.)='Assertion']",
          transforms: ['http://www.w3.org/2000/09/xmldsig#enveloped-signature', 'http://www.w3.org/2001/10/xml-exc-c14n#'],
          digestAlgorithm: 'http://www.w3.org/2001/04/xmlenc#sha256',
        });
        sig.computeSignature(xml, { prefix: 'ds', location: { reference: "/*[local-name(.)='Response']/*[local-name(.)='Assertion']/*[local-name(.)='Issuer']", action: 'after' } });
        return sig.getSignedXml();
      };
      break;
    case 'wrong_audience': v.audience = 'https://other-sp.example.com/metadata'; break;
    case 'no_audience': v.audience = null; break;
    case 'wrong_destination': v.destination = 'https://other-sp.example.com/acs'; break;
    case 'wrong_recipient': v.recipient = 'https://other-sp.example.com/acs'; break;
    case 'wrong_issuer': v.issuer = 'https://evil-idp.example.com/metadata'; break;
    case 'wrong_method': v.method = 'urn:oasis:names:tc:SAML:2.0:cm:holder-of-key'; break;
    case 'expired':
      v.notBefore = iso(now - 3600000); v.notOnOrAfter = iso(now - 1800000);
      v.scdNotOnOrAfter = iso(now - 1800000); break;
    case 'not_yet_valid': v.notBefore = iso(now + 1800000); break;
    case 'irt_other': v.inResponseTo = newId(); break;
    case 'unsolicited': v.inResponseTo = null; break;
    case 'status_fail':
      v.status = 'urn:oasis:names:tc:SAML:2.0:status:Responder'; v.noAssertion = true;
      opts = { assertion: false, message: true }; break;
    case 'nameid_comment':
      v.nameId = 'alice@example.com.evil.com';
      post = (xml) => xml.replace('>alice@example.com.evil.com<', '>alice@example.com<!---->.evil.com<');
      break;
    case 'tamper_attr':
      post = (xml) => xml.replace(`>${u.email}</saml:AttributeValue>`, '>mallory@example.com</saml:AttributeValue>');
      break;
    case 'doctype':
      post = (xml) => '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + xml;
      break;
    case 'extra_signature': case 'sig_moved_to_response':
    case 'xsw_before': case 'xsw_after': case 'xsw_dupid':
    case 'xsw_extensions': case 'xsw_object': case 'xsw_wrapped':
      post = (xml) => wrap(xml, kase);
      break;
    default:
      if (kase) throw new Error(`unknown case ${kase}`);
  }
  let xml = responseXml(v);
  if (opts.assertion !== false || opts.message) {
    xml = sign(xml, { assertion: opts.assertion !== false && !v.noAssertion, ...opts });
  }
  return post ? post(xml) : xml;
}

// XML signature wrapping: the signed assertion stays byte-identical (its
// signature still verifies) while an evil one is placed where a careless SP
// reads the identity.
function wrap(xml, kase) {
  const doc = parse(xml);
  const resp = doc.documentElement;
  const signed = assertionOf(doc);
  const DS = 'http://www.w3.org/2000/09/xmldsig#';
  if (kase === 'extra_signature') {
    // a second copy of the valid signature, in samlp:Extensions
    const ext = doc.createElementNS(SAMLP, 'samlp:Extensions');
    ext.appendChild(signed.getElementsByTagNameNS(DS, 'Signature')[0].cloneNode(true));
    resp.insertBefore(ext, resp.getElementsByTagNameNS(SAMLP, 'Status')[0]);
    return serialize(doc);
  }
  if (kase === 'sig_moved_to_response') {
    // the assertion's valid signature moved up to the Response: it still
    // verifies (its Reference finds the assertion by ID) but signs another
    // element than the one it is on
    const sig = signed.getElementsByTagNameNS(DS, 'Signature')[0];
    signed.removeChild(sig);
    resp.insertBefore(sig, resp.getElementsByTagNameNS(SAMLP, 'Status')[0]);
    return serialize(doc);
  }
  const evil = evilAssertion(doc, signed, kase === 'xsw_dupid');
  if (kase === 'xsw_before' || kase === 'xsw_dupid') {
    resp.insertBefore(evil, signed);
  } else if (kase === 'xsw_after') {
    resp.appendChild(evil);
  } else if (kase === 'xsw_extensions') {
    const ext = doc.createElementNS(SAMLP, 'samlp:Extensions');
    resp.replaceChild(evil, signed);
    ext.appendChild(signed);
    resp.insertBefore(ext, resp.getElementsByTagNameNS(SAMLP, 'Status')[0]);
  } else if (kase === 'xsw_object') {
    // The evil assertion carries the original Signature, whose ds:Object holds
    // the signed assertion (the Reference still finds it by ID).
    const sig = signed.getElementsByTagNameNS('http://www.w3.org/2000/09/xmldsig#', 'Signature')[0];
    const sigCopy = sig.cloneNode(true);
    const obj = doc.createElementNS('http://www.w3.org/2000/09/xmldsig#', 'ds:Object');
    sigCopy.appendChild(obj);
    obj.appendChild(signed.cloneNode(true));
    evil.insertBefore(sigCopy, evil.getElementsByTagNameNS(SAML, 'Subject')[0]);
    resp.replaceChild(evil, signed);
  } else if (kase === 'xsw_wrapped') {
    resp.replaceChild(evil, signed);
    evil.appendChild(signed);
  }
  return serialize(doc);
}

function form(acs, response, relay) {
  const b64 = Buffer.from(response, 'utf8').toString('base64');
  return '<!doctype html><html><body onload="document.forms[0].submit()">' +
    `<form method="post" action="${esc(acs)}">` +
    `<input type="hidden" name="SAMLResponse" value="${b64}">` +
    (relay !== null ? `<input type="hidden" name="RelayState" value="${esc(relay)}">` : '') +
    '<noscript><button type="submit">Continue</button></noscript></form></body></html>';
}

async function sso(req, res, url) {
  const q = url.searchParams;
  const theSp = await serviceProvider();
  const query = Object.fromEntries(q.entries());
  const octet = url.search.slice(1).split('&')
    .filter((p) => /^(SAMLRequest|RelayState|SigAlg)=/.test(p)).join('&');
  let info;
  try {
    const parsed = await idp.parseLoginRequest(theSp, 'redirect', { query, octetString: octet });
    info = { id: parsed.extract.request.id, acs: parsed.extract.request.assertionConsumerServiceUrl };
  } catch (e) {
    console.log(`GH_SAML_REFUSED ${e.message || e}`);
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end(`AuthnRequest refused: ${e.message || e}\n`);
    return;
  }
  info.acs = info.acs || theSp.entityMeta.getAssertionConsumerService(samlify.Constants.namespace.binding.post);
  info.spEntityId = theSp.entityMeta.getEntityID();
  const user = q.get('user') || 'alice';
  const kase = q.get('case') || '';
  let relay = q.has('relay') ? q.get('relay') : (q.has('RelayState') ? q.get('RelayState') : null);
  let xml;
  if (kase === '') {
    // The plain sign-in: samlify builds the values and signs (assertion
    // signed, as the SP metadata asks); the template carries the attributes.
    const u = USERS[user] || USERS.alice;
    const { context } = await idp.createLoginResponse(theSp, { extract: { request: { id: info.id } } }, 'post', u,
      () => ({ id: newId(), context: build(info, user, 'raw', new URLSearchParams()) }));
    xml = Buffer.from(context, 'base64').toString('utf8');
  } else if (kase === 'encrypted_message_signed') {
    // encrypt the signed assertion, then sign the whole Response
    xml = build(info, user, 'baseline', q);
    xml = Buffer.from(await samlify.SamlLib.encryptAssertion(idpEnc, theSp, xml), 'base64').toString('utf8');
    xml = sign(xml, { assertion: false, message: true });
  } else {
    xml = build(info, user, kase, q);
    if (kase.startsWith('encrypted')) {
      xml = Buffer.from(await samlify.SamlLib.encryptAssertion(idpEnc, theSp, xml), 'base64').toString('utf8');
    }
  }
  console.log(`GH_SAML_RESPONSE case=${kase || 'samlify'} user=${user} irt=${info.id}`);
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(form(info.acs, xml, relay));
}

// SP-initiated logout: the SP's signed LogoutRequest, answered with a signed
// LogoutResponse by HTTP-Redirect.
async function slo(req, res, url) {
  const theSp = await serviceProvider();
  const q = url.searchParams;
  if (!q.has('SAMLRequest')) {
    res.writeHead(400); res.end('no SAMLRequest\n'); return;
  }
  const query = Object.fromEntries(q.entries());
  const octet = url.search.slice(1).split('&')
    .filter((p) => /^(SAMLRequest|RelayState|SigAlg)=/.test(p)).join('&');
  let parsed;
  try {
    parsed = await idp.parseLogoutRequest(theSp, 'redirect', { query, octetString: octet });
  } catch (e) {
    console.log(`GH_SAML_LOGOUT_REFUSED ${e.message || e}`);
    res.writeHead(400); res.end('LogoutRequest refused\n'); return;
  }
  console.log(`GH_SAML_LOGOUT nameid=${parsed.extract.nameID} session=${parsed.extract.sessionIndex || ''}`);
  const { context } = idp.createLogoutResponse(theSp, parsed, 'redirect', { relayState: q.get('RelayState') || '' });
  res.writeHead(302, { location: context });
  res.end();
}

// IdP-initiated logout: a LogoutRequest to the SP for nameid/session (signed;
// TEST-ONLY unsigned=1 leaves the signature out).
async function initiateLogout(req, res, url) {
  await serviceProvider();
  const q = url.searchParams;
  const target = q.get('unsigned') === '1' ? spUnsigned : sp;
  const { context } = idp.createLogoutRequest(target, 'redirect',
    { logoutNameID: q.get('nameid'), sessionIndex: q.get('session') || '' });
  res.writeHead(302, { location: context });
  res.end();
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, base);
  try {
    if (url.pathname === '/metadata') {
      res.writeHead(200, { 'content-type': 'application/samlmetadata+xml' });
      res.end(idp.getMetadata());
    } else if (url.pathname === '/sso') {
      await sso(req, res, url);
    } else if (url.pathname === '/slo') {
      await slo(req, res, url);
    } else if (url.pathname === '/initiate-logout') {
      await initiateLogout(req, res, url);
    } else {
      res.writeHead(404); res.end();
    }
  } catch (e) {
    console.log(`GH_SAML_ERROR ${e.stack || e}`);
    res.writeHead(500); res.end('IdP error\n');
  }
});

server.listen(port, '127.0.0.1', () => console.log(`GH_SAML_READY ${port}`));
