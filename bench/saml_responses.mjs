// bench/saml_responses.mjs - makes N signed SAML Responses (IdP-initiated,
// RSA-SHA256 assertion signature, the same shape as the test IdP's) for one
// SP, each with its own assertion ID, as base64 lines on stdout.
//
//   node bench/saml_responses.mjs IDP_KEY IDP_CERT IDP_ENTITY SP_ENTITY ACS_URL N
import fs from 'node:fs';
import crypto from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../tests/package.json', import.meta.url));
const samlify = require('samlify');

const [keyFile, certFile, idpEntity, spEntity, acs, n] = process.argv.slice(2);
const key = fs.readFileSync(keyFile, 'utf8');
const cert = fs.readFileSync(certFile, 'utf8').replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
const id = () => '_' + crypto.randomBytes(16).toString('hex');

const out = [];
for (let i = 0; i < Number(n); i++) {
  const now = Date.now();
  const xml = '<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ' +
    `ID="${id()}" Version="2.0" IssueInstant="${iso(now)}" Destination="${acs}">` +
    `<saml:Issuer>${idpEntity}</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>` +
    `<saml:Assertion xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" ID="${id()}" Version="2.0" IssueInstant="${iso(now)}">` +
    `<saml:Issuer>${idpEntity}</saml:Issuer>` +
    '<saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">alice@example.com</saml:NameID>' +
    `<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData NotOnOrAfter="${iso(now + 3600000)}" Recipient="${acs}"/></saml:SubjectConfirmation></saml:Subject>` +
    `<saml:Conditions NotBefore="${iso(now - 60000)}" NotOnOrAfter="${iso(now + 3600000)}"><saml:AudienceRestriction><saml:Audience>${spEntity}</saml:Audience></saml:AudienceRestriction></saml:Conditions>` +
    `<saml:AuthnStatement AuthnInstant="${iso(now)}" SessionIndex="${id()}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>` +
    '<saml:AttributeStatement>' +
    '<saml:Attribute Name="email"><saml:AttributeValue xsi:type="xs:string">alice@example.com</saml:AttributeValue></saml:Attribute>' +
    '<saml:Attribute Name="displayName"><saml:AttributeValue xsi:type="xs:string">Alice Liddell</saml:AttributeValue></saml:Attribute>' +
    '<saml:Attribute Name="groups"><saml:AttributeValue xsi:type="xs:string">staff</saml:AttributeValue><saml:AttributeValue xsi:type="xs:string">admins</saml:AttributeValue></saml:Attribute>' +
    '</saml:AttributeStatement></saml:Assertion></samlp:Response>';
  const signed = samlify.SamlLib.constructSAMLSignature({
    rawSamlMessage: xml,
    referenceTagXPath: "/*[local-name(.)='Response']/*[local-name(.)='Assertion']",
    privateKey: key,
    signingCert: cert,
    signatureAlgorithm: 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',
    isBase64Output: true,
    signatureConfig: {
      prefix: 'ds',
      location: { reference: "/*[local-name(.)='Response']/*[local-name(.)='Assertion']/*[local-name(.)='Issuer']", action: 'after' },
    },
  });
  out.push(signed);
}
process.stdout.write(out.join('\n') + '\n');
