// The OpenID provider of the console tests: oidc-provider (a certified OpenID Connect
// implementation) over HTTPS on loopback, configured by the JSON file named on the command
// line (tests/oidc_support.py writes it):
//   {"host", "cert", "key", "clients": [client metadata], "users": {login: claims}}
// It listens on a port the system picks (no race with other processes for a "free" port);
// the issuer is https://HOST:PORT.
// Sign-in uses the package's own development interaction pages (any password; the login
// must be one of `users`). Consent is granted for the registered clients without a page, as
// a first-party deployment does (oidc-provider's documented loadExistingGrant hook).
// Prints "ready ISSUER" on stdout once it listens.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

function signingKey(type, options, kid, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

const keys = [
  signingKey('rsa', { modulusLength: 2048 }, 'rsa-1', 'RS256'),
  signingKey('ec', { namedCurve: 'P-256' }, 'ec-1', 'ES256'),
];

async function findAccount(_ctx, id) {
  const claims = config.users[id];
  if (!claims) {
    return undefined;
  }
  return {
    accountId: id,
    async claims() {
      return { sub: id, ...claims };
    },
  };
}

async function loadExistingGrant(ctx) {
  const grantId = ctx.oidc.result?.consent?.grantId
    || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
  if (grantId) {
    return ctx.oidc.provider.Grant.find(grantId);
  }
  const grant = new ctx.oidc.provider.Grant({
    clientId: ctx.oidc.client.clientId,
    accountId: ctx.oidc.session.accountId,
  });
  grant.addOIDCScope('openid email');
  await grant.save();
  return grant;
}

const server = https.createServer({
  cert: fs.readFileSync(config.cert),
  key: fs.readFileSync(config.key),
});
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const issuer = `https://${config.host}:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys },
  findAccount,
  loadExistingGrant,
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  // The email claims in the ID token itself, as most providers put them (Sceau reads the
  // identity from the signed ID token only).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
});

server.on('request', provider.callback());
process.stdout.write(`ready ${issuer}\n`);

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
