// An OpenID Connect provider on loopback for the OAuth2 tests: panva's oidc-provider
// (npm, OpenID Certified), installed into .tools/ by `make test`.
//
//   node oidc_provider.mjs PORT ACCESS_TOKEN_SECONDS
//
// Environment: OIDC_PROVIDER_MODULE (path of the package's entry file), CLIENT_SECRET
// (the pipeline's client, "dicomflow") and GATE_SECRET (the resource server, "gate",
// which introspects tokens). The pipeline's client may use client credentials, the
// authorization code flow (through the provider's development login pages) and refresh
// tokens. Access tokens live ACCESS_TOKEN_SECONDS; refresh tokens an hour.
import { pathToFileURL } from 'node:url';

const [port, accessTokenSeconds] = process.argv.slice(2).map(Number);
const { default: Provider } = await import(pathToFileURL(process.env.OIDC_PROVIDER_MODULE).href);

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    {
      client_id: 'dicomflow',
      client_secret: process.env.CLIENT_SECRET,
      grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
      redirect_uris: ['http://127.0.0.1/callback'],
      response_types: ['code'],
      scope: 'openid offline_access dicomweb',
    },
    {
      client_id: 'gate',
      client_secret: process.env.GATE_SECRET,
      grant_types: [],
      redirect_uris: [],
      response_types: [],
    },
  ],
  scopes: ['openid', 'offline_access', 'dicomweb'],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: true },
  },
  pkce: { required: () => false },
  ttl: {
    AccessToken: accessTokenSeconds,
    ClientCredentials: accessTokenSeconds,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
    RefreshToken: 3600,
  },
});
provider.listen(port, '127.0.0.1');
console.log(`oidc-provider listening on ${port}`);
