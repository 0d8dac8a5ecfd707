// The passkey operations of Keyhold's GraphQL API, as a web page calls them. The options
// Keyhold gives are the WebAuthn JSON form: PublicKeyCredential.parseCreationOptionsFromJSON
// and parseRequestOptionsFromJSON read them as they are, and a credential's toJSON() is
// what Keyhold takes back.
"use strict";

async function graphql(query, variables, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const response = await fetch("/graphql", {
    method: "POST",
    headers,
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) {
    const e = body.errors[0];
    throw new Error((e.extensions && e.extensions.code) + ": " + e.message);
  }
  return body.data;
}

function show(text) {
  document.getElementById("status").textContent = text;
}

// Signs in with the password, then registers a passkey on this device.
async function addPasskey(email, password, name) {
  const login = (await graphql(
    "mutation($e: EmailAddress!, $p: String!) { login(credentials: { email: $e, password: $p }) { status token } }",
    { e: email, p: password })).login;
  if (login.status !== 200) throw new Error("this example does not do the second factor");
  const started = (await graphql(
    "mutation($p: String) { startPasskeyRegistration(password: $p) { challengeId options } }",
    { p: password }, login.token)).startPasskeyRegistration;
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(JSON.parse(started.options));
  const credential = await navigator.credentials.create({ publicKey });
  const passkey = (await graphql(
    "mutation($id: String!, $c: String!, $n: String) { finishPasskeyRegistration(challengeId: $id, credential: $c, name: $n) { id name } }",
    { id: started.challengeId, c: JSON.stringify(credential.toJSON()), n: name },
    login.token)).finishPasskeyRegistration;
  return passkey;
}

// Signs in with a passkey, usernameless: the passkey names its account.
async function signInWithPasskey() {
  const started = (await graphql(
    "mutation { startPasskeyLogin { challengeId options } }", {})).startPasskeyLogin;
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(JSON.parse(started.options));
  const credential = await navigator.credentials.get({ publicKey });
  return (await graphql(
    "mutation($id: String!, $c: String!) { finishPasskeyLogin(challengeId: $id, credential: $c) { status token userProfile { email } } }",
    { id: started.challengeId, c: JSON.stringify(credential.toJSON()) })).finishPasskeyLogin;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("register").addEventListener("submit", async (event) => {
    event.preventDefault();
    show("Adding a passkey…");
    try {
      const passkey = await addPasskey(
        document.getElementById("email").value,
        document.getElementById("password").value,
        document.getElementById("name").value);
      show("Added passkey " + passkey.name + " (" + passkey.id + ")");
    } catch (e) {
      show("Failed: " + e.message);
    }
  });
  document.getElementById("signin").addEventListener("click", async () => {
    show("Signing in…");
    try {
      const signedIn = await signInWithPasskey();
      show("Signed in as " + signedIn.userProfile.email);
    } catch (e) {
      show("Failed: " + e.message);
    }
  });
});
