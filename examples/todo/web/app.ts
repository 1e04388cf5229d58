// An offline-first todo list on the Hearth web client: todos are kept in IndexedDB, so
// the page loads and works without the server; what is done offline shows at once and
// is sent, in order, when the server answers again. Rules: `examples/todo/rules.toml`.
import { HearthError, createClient, enableOffline, onSnapshot, serverTime, type Unsubscribe } from "@hearth/client";

interface Todo {
  owner: string;
  title: string;
  done: boolean;
  at?: unknown;
}

const hearth = createClient(location.origin);
const offline = enableOffline(hearth);
// For the console (and the browser tests).
Object.assign(globalThis, { hearth, offline });
// The page itself loads offline too (sw.js keeps its files).
void navigator.serviceWorker?.register("/sw.js");

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const showError = (error: unknown) => {
  $("error").textContent = error instanceof HearthError ? `${error.code}: ${error.message}` : String(error);
};
offline.onWriteRejected(({ error }) => showError(error));

$<HTMLFormElement>("auth").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = $<HTMLInputElement>("auth-email").value;
  const password = $<HTMLInputElement>("auth-password").value;
  try {
    if ((event.submitter as HTMLButtonElement | null)?.value === "up") await hearth.auth.signUp(email, password);
    else if ((await hearth.auth.signIn(email, password)).mfaRequired) showError("this account asks for a second factor");
  } catch (error) {
    showError(error);
  }
});
$("sign-out").addEventListener("click", () => void hearth.auth.signOut());

let stop: Unsubscribe | undefined;
hearth.auth.onAuthStateChanged((user) => {
  stop?.();
  $("auth").hidden = user !== null;
  $("me").hidden = $("list").hidden = user === null;
  $("email").textContent = user?.email ?? "";
  $("todos").replaceChildren();
  if (!user) return;
  const todos = hearth.collection<Todo>("todos").where("owner", "==", user.id).orderBy("at").limit(500);
  stop = onSnapshot(
    todos,
    (snapshot) => {
      $("todos").replaceChildren(
        ...snapshot.docs.map((doc) => {
          const item = document.createElement("li");
          item.dataset.id = doc.id;
          item.classList.toggle("done", doc.data.done);
          const done = Object.assign(document.createElement("input"), { type: "checkbox", checked: doc.data.done });
          done.setAttribute("aria-label", `done: ${doc.data.title}`);
          done.addEventListener("change", () => void hearth.doc(doc.path).update({ done: done.checked }).catch(showError));
          const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "✕" });
          remove.setAttribute("aria-label", `delete: ${doc.data.title}`);
          remove.addEventListener("click", () => void hearth.doc(doc.path).delete().catch(showError));
          item.append(done, Object.assign(document.createElement("span"), { textContent: doc.data.title }), remove);
          return item;
        }),
      );
      $("status").textContent = snapshot.hasPendingWrites ? "saved here, not yet on the server" : snapshot.fromCache ? "offline" : "";
    },
    showError,
  );
});

$<HTMLFormElement>("add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $<HTMLInputElement>("title");
  const title = input.value.trim();
  input.value = "";
  if (!title) return;
  try {
    await hearth.collection<Todo>("todos").add({ owner: hearth.auth.currentUser!.id, title, done: false, at: serverTime() });
  } catch (error) {
    showError(error);
  }
});
