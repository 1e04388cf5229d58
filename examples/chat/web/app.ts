// A chat page on the Hearth web client: sign up or in, join a room through the `joinRoom`
// function, see its messages live, who is here and who is typing. The room is the page's
// path (`/rooms/NAME`; `/` is the lobby), which `hearth serve --public` answers with this page.
import { HearthError, channel, createClient, onSnapshot, serverTime, type Unsubscribe } from "@hearth/client";

interface Message {
  author: string;
  name: string;
  text: string;
  sent_at?: unknown;
}

const hearth = createClient(location.origin);
// For the console (and the browser tests): `hearth.auth.currentUser`, `hearth.doc(...)`.
(globalThis as { hearth?: unknown }).hearth = hearth;

const room = /^\/rooms\/([A-Za-z0-9_-]{1,64})$/.exec(location.pathname)?.[1] ?? "lobby";
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
$("room").textContent = room;

const showError = (error: unknown) => {
  $("error").textContent = error instanceof HearthError ? `${error.code}: ${error.message}` : String(error);
};

$<HTMLFormElement>("auth").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = $<HTMLInputElement>("auth-email").value;
  const password = $<HTMLInputElement>("auth-password").value;
  const signUp = (event.submitter as HTMLButtonElement | null)?.value === "up";
  try {
    if (signUp) await hearth.auth.signUp(email, password);
    else if ((await hearth.auth.signIn(email, password)).mfaRequired) showError("this account asks for a second factor");
  } catch (error) {
    showError(error);
  }
});
$("sign-out").addEventListener("click", () => void hearth.auth.signOut());

let leave: Unsubscribe[] = [];
hearth.auth.onAuthStateChanged(async (user) => {
  leave.forEach((stop) => stop());
  leave = [];
  $("error").textContent = "";
  $("auth").hidden = user !== null;
  $("me").hidden = $("chat").hidden = user === null;
  $("email").textContent = user?.email ?? "";
  $("messages").replaceChildren();
  if (!user) return;
  try {
    await hearth.call("joinRoom", { room });
  } catch (error) {
    return showError(error);
  }
  leave = [listenToMessages(), ...joinChannel(user.email?.split("@")[0] ?? "guest")];
});

function listenToMessages(): Unsubscribe {
  const messages = hearth.collection<Message>(`rooms/${room}/messages`).orderBy("sent_at").limit(100);
  return onSnapshot(
    messages,
    (snapshot) => {
      $("messages").replaceChildren(
        ...snapshot.docs.map((doc) => {
          const item = document.createElement("li");
          item.dataset.id = doc.id;
          const name = document.createElement("b");
          name.textContent = doc.data.name;
          item.append(name, doc.data.text);
          return item;
        }),
      );
    },
    showError,
  );
}

function joinChannel(name: string): Unsubscribe[] {
  const here = channel<{ name: string }>(hearth, `room:${room}`);
  const typing = new Map<string, ReturnType<typeof setTimeout>>();
  const showTyping = () => {
    $("typing").textContent = typing.size ? `${[...typing.keys()].join(", ")} typing…` : "";
  };
  const stops = [
    here.onPresence((members) => {
      const names = [...new Set([...members.values()].map((member) => member.state.name))].sort();
      $("who").replaceChildren(...names.map((who) => Object.assign(document.createElement("li"), { textContent: who })));
    }),
    here.onBroadcast((event, payload) => {
      const who = (payload as { name?: string } | null)?.name;
      if (event !== "typing" || !who) return;
      clearTimeout(typing.get(who));
      typing.set(who, setTimeout(() => (typing.delete(who), showTyping()), 2_000));
      showTyping();
    }),
  ];
  here.join({ name });
  let lastTyping = 0;
  const input = $<HTMLInputElement>("text");
  const onInput = () => {
    if (Date.now() - lastTyping > 1_000) here.broadcast("typing", { name });
    lastTyping = Date.now();
  };
  input.addEventListener("input", onInput);
  const form = $<HTMLFormElement>("send");
  const onSend = async (event: SubmitEvent) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    try {
      const author = hearth.auth.currentUser!.id;
      await hearth.collection<Message>(`rooms/${room}/messages`).add({ author, name, text, sent_at: serverTime() });
    } catch (error) {
      showError(error);
    }
  };
  form.addEventListener("submit", onSend);
  return [
    ...stops,
    () => here.leave(),
    () => input.removeEventListener("input", onInput),
    () => form.removeEventListener("submit", onSend),
  ];
}
