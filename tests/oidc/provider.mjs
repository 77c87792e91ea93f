// A real OpenID Connect provider for the sign-in tests (npm `oidc-provider` v9, certified).
// Usage: node provider.mjs PORT REDIRECT_URI CLIENT_SECRET GROUPS_JSON
// Its development login page accepts any login and password; the login is the account id
// (`sub`, `preferred_username`). Its `groups` are read from GROUPS_JSON ({"alice": ["crowd"]})
// at each look-up, so a test can move someone between groups. Scope claims (groups, email)
// come from userinfo, not the ID token, as with many real providers.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, redirectUri, secret, groupsFile] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const groupsOf = (id) => JSON.parse(readFileSync(groupsFile, 'utf8'))[id] ?? [];
const provider = new Provider(issuer, {
  // Sign-out comes back to the site's /login (RP-initiated logout, the site's default).
  clients: [{ client_id: 'cxrlabel', client_secret: secret, redirect_uris: [redirectUri],
              post_logout_redirect_uris: [new URL('/login', redirectUri).href] }],
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, preferred_username: id, email: `${id}@hospital.example`,
                           groups: groupsOf(id) }),
  }),
  claims: { openid: ['sub'], email: ['email'], profile: ['preferred_username'],
            groups: ['groups'] },
  pkce: { required: () => true },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`listening ${issuer}`));
