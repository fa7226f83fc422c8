// The hashrec page: a photo in, its hashtags out, each with why; keep the ones you like.
// Talks to the gateway's JSON API only (/api/recommend, /api/feedback, /api/retrieve,
// /api/account/*, /api/me*). Who you are is the session cookie's business, never a field.

const $ = (id) => document.getElementById(id);

const state = {
  photo: null,          // the chosen File or Blob
  sha256: null,         // the gateway's id of the uploaded photo
  hashtags: [],         // the last answer's hashtags
  selected: new Set(),  // the ones the person keeps
  extra: [],            // hashtags the person added
  maxBytes: 20 * 1024 * 1024,
  sequence: 0,          // only the newest request may render
  me: null,             // {user, name} when signed in
  auth: "local",        // how the gateway signs people in
  saveId: null,         // the request id of the save being tried (sent again on a retry)
};

const METHOD_NAMES = {
  frequency: "how often it is used",
  knn: "photos that look like this one",
  mlp: "the trained classifier",
  word: "the labels' Word2Vec neighbours",
  graph: "the photo–hashtag graph",
  semantic: "words close to what the photo shows",
  autorec: "AutoRec",
  autorec_masked: "AutoRec",
  instahash: "InstaHash",
  user: "your own habits",
};

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = !message;
}

function setStatus(element, message, busy = false) {
  element.textContent = message;
  element.classList.toggle("busy", busy);
  element.setAttribute("aria-busy", busy ? "true" : "false");
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new Error("The hashrec service cannot be reached. Is it running? Try again in a moment.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.message ? body.message : `the service answered ${response.status}`;
    const error = new Error(message.charAt(0).toUpperCase() + message.slice(1));
    error.status = response.status;
    throw error;
  }
  return body;
}

async function loadConfig() {
  try {
    const config = await api("/api/config");
    state.maxBytes = config.max_upload_bytes;
    state.auth = config.auth;
    showCommunities(config.communities || []);
  } catch {
    // The page still works with the defaults.
  }
  await loadMe();
}

// The photo sets the model was trained on; the person may say where they post.
const COMMUNITY_NAMES = { instagram: "Instagram", flickr: "Flickr", food: "a food blog" };

function communityName(name) {
  return COMMUNITY_NAMES[name] || name;
}

function showCommunities(names) {
  const select = $("community");
  for (const name of names) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = communityName(name);
    select.append(option);
  }
  $("community-row").hidden = names.length === 0;
}

function showRouting(answer) {
  const routed = $("routed");
  const shares = answer.communities || [];
  routed.hidden = shares.length === 0;
  if (routed.hidden) return;
  if (answer.community_from === "request") {
    const chosen = shares.reduce((a, b) => (b.weight > a.weight ? b : a));
    routed.textContent = `Hashtags as people post them on ${communityName(chosen.name)}.`;
  } else {
    const read = shares.filter((s) => s.weight >= 0.05)
      .sort((a, b) => b.weight - a.weight)
      .map((s) => `${communityName(s.name)} ${Math.round(100 * s.weight)} %`);
    const why = answer.community_from === "user"
      ? "From where you usually post and how the photo looks, it goes to"
      : "This photo looks like one posted to";
    routed.textContent = `${why} ${read.join(", ")}; ` +
      "say where you post it above to get that community's hashtags.";
  }
}

async function loadMe() {
  try {
    const me = await api("/api/me");
    state.me = me.user ? me : null;
  } catch {
    state.me = null;
  }
  showAccount();
}

function showAccount() {
  const signedIn = state.me !== null;
  $("signin-form").hidden = signedIn || state.auth !== "local";
  $("signed-in").hidden = !signedIn;
  $("whoami").textContent = signedIn ? `Signed in as ${state.me.name}` : "";
  $("save").hidden = !signedIn;
  $("save-hint").hidden = signedIn;
  updateActions();
}

async function account(path) {
  const name = $("name").value.trim();
  const password = $("password").value;
  if (!name || !password) {
    showError("Enter a name and a password.");
    return;
  }
  showError("");
  try {
    state.me = await api(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name, password }),
    });
    $("password").value = "";
    showAccount();
    await recommend();  // now with your profile
  } catch (error) {
    showError(error.message);
  }
}

async function signOut() {
  try {
    await api("/api/account/signout", { method: "POST" });
  } catch {
    // signed out here either way
  }
  state.me = null;
  showAccount();
  $("gallery").hidden = true;
}

async function deleteMe() {
  if (!confirm("Delete your profile, your uploads and your account? This cannot be undone.")) {
    return;
  }
  try {
    const reply = await api("/api/me", { method: "DELETE" });
    state.me = null;
    showAccount();
    $("gallery").hidden = true;
    setStatus($("status"), `Deleted: your profile and ${reply.photos_removed} ` +
      `photo${reply.photos_removed === 1 ? "" : "s"}.`);
  } catch (error) {
    showError(error.message);
  }
}

function newRequestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function choose(file) {
  showError("");
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`That file is ${file.type}, not a photo. Choose a JPEG, PNG, WebP or GIF.`);
    return;
  }
  if (file.size > state.maxBytes) {
    const mb = (state.maxBytes / 1024 / 1024).toFixed(0);
    showError(`That photo is ${(file.size / 1024 / 1024).toFixed(1)} MB; the limit is ${mb} MB.`);
    return;
  }
  state.photo = file;
  state.selected.clear();
  state.extra = [];
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = "Drop or paste another photo, or choose a file";
  recommend();
}

async function recommend() {
  if (!state.photo) return;
  const sequence = ++state.sequence;
  showError("");
  setStatus($("status"), "Finding hashtags…", true);
  const form = new FormData();
  form.append("image", state.photo, state.photo.name || "photo");
  form.append("k", "15");
  if ($("community").value) form.append("community", $("community").value);
  try {
    const answer = await api("/api/recommend", { method: "POST", body: form });
    if (sequence !== state.sequence) return;
    state.sha256 = answer.image_sha256;
    state.hashtags = answer.hashtags;
    render(answer);
    const who = state.me ? state.me.name : "";
    setStatus($("status"), `${answer.hashtags.length} hashtags${who ? ` for ${who}` : ""}` +
      ` (model ${answer.model_version})`);
  } catch (error) {
    if (sequence !== state.sequence) return;
    setStatus($("status"), "");
    showError(error.message);
    if (error.status === 400 || error.status === 413) {
      $("results").hidden = true;
      state.photo = null;
    }
  }
}

function whyList(hashtag) {
  const why = document.createElement("div");
  why.className = "why";
  why.setAttribute("role", "tooltip");
  why.id = `why-${hashtag.hashtag}`;
  const title = document.createElement("div");
  const fromUser = hashtag.signals.some((s) => s.method === "user");
  if (!hashtag.outside_vocabulary) {
    title.textContent = `#${hashtag.hashtag}: why`;
  } else if (fromUser) {
    title.textContent = `#${hashtag.hashtag}: not among the photo model's hashtags; ` +
      "it comes from your own habits";
  } else {
    title.textContent = `#${hashtag.hashtag}: never seen with a training photo; ` +
      "proposed from what it means";
  }
  why.append(title);
  const list = document.createElement("ul");
  const signals = hashtag.signals.length ? hashtag.signals : null;
  if (!signals) {
    const item = document.createElement("li");
    item.textContent = "ranked by the fusion of every method (no single method put it in its top 20)";
    list.append(item);
  } else {
    for (const signal of signals) {
      const item = document.createElement("li");
      const name = METHOD_NAMES[signal.method] || signal.method;
      item.textContent = `${name} (${signal.method}): rank ${signal.rank}, ` +
        `${Math.round(signal.score * 100)} %`;
      list.append(item);
    }
  }
  why.append(list);
  return why;
}

function chip(hashtag, best) {
  const item = document.createElement("li");
  item.className = "chip";
  item.dataset.hashtag = hashtag.hashtag;
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "toggle";
  toggle.setAttribute("aria-pressed", state.selected.has(hashtag.hashtag) ? "true" : "false");
  toggle.setAttribute("aria-describedby", `why-${hashtag.hashtag}`);
  const label = document.createElement("span");
  label.textContent = `#${hashtag.hashtag}`;
  toggle.append(label);
  if (hashtag.outside_vocabulary) {
    const outside = document.createElement("span");
    outside.className = "tag-outside";
    outside.textContent = hashtag.signals.some((s) => s.method === "user")
      ? "from your habits" : "new to the photo model";
    toggle.append(outside);
  }
  const bar = document.createElement("span");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.max(4, Math.round(100 * hashtag.score / best))}%`;
  bar.append(fill);
  toggle.append(bar);
  toggle.addEventListener("click", () => {
    const on = !state.selected.has(hashtag.hashtag);
    if (on) state.selected.add(hashtag.hashtag); else state.selected.delete(hashtag.hashtag);
    state.saveId = null;  // another choice: another request
    toggle.setAttribute("aria-pressed", on ? "true" : "false");
    updateActions();
  });
  const grid = document.createElement("button");
  grid.type = "button";
  grid.className = "grid";
  grid.textContent = "▦";
  grid.setAttribute("aria-label", `Photos tagged #${hashtag.hashtag}`);
  grid.title = `Photos tagged #${hashtag.hashtag}`;
  grid.addEventListener("click", () => gallery(hashtag.hashtag));
  item.append(toggle, grid, whyList(hashtag));
  // A tap on a touch screen shows why, as hover does with a mouse.
  item.addEventListener("touchstart", () => item.classList.add("show-why"), { passive: true });
  item.addEventListener("touchend", () => setTimeout(() => item.classList.remove("show-why"), 2500));
  return item;
}

function render(answer) {
  $("results").hidden = false;
  showRouting(answer);
  const degraded = $("degraded");
  degraded.hidden = !answer.degraded;
  degraded.textContent = answer.degraded
    ? `Some signals could not contribute this time: ${answer.degraded_reasons.join("; ")}`
    : "";
  const chips = $("chips");
  chips.replaceChildren();
  const all = [...answer.hashtags,
    ...state.extra.filter((h) => !answer.hashtags.some((a) => a.hashtag === h))
      .map((h) => ({ hashtag: h, score: 0, signals: [], outside_vocabulary: false, added: true }))];
  const best = Math.max(...all.map((h) => h.score), 1e-9);
  for (const hashtag of all) chips.append(chip(hashtag, best));
  updateActions();
}

function updateActions() {
  const none = state.selected.size === 0;
  $("copy").disabled = none;
  $("save").disabled = none || state.me === null;
}

function normalise(text) {
  return text.trim().replace(/^#+/, "").toLowerCase().replace(/\s+/g, "");
}

function addOwn(event) {
  event.preventDefault();
  const input = $("add");
  const hashtag = normalise(input.value);
  if (!hashtag) return;
  if (!state.extra.includes(hashtag)) state.extra.push(hashtag);
  state.selected.add(hashtag);
  input.value = "";
  render({ hashtags: state.hashtags, degraded: !$("degraded").hidden,
    degraded_reasons: [$("degraded").textContent] });
}

async function copySelected() {
  const text = [...state.selected].map((h) => `#${h}`).join(" ");
  try {
    await navigator.clipboard.writeText(text);
    setStatus($("saved"), `Copied: ${text}`);
  } catch {
    setStatus($("saved"), `Copy this: ${text}`);
  }
}

async function save() {
  if (!state.me) {
    showAccount();
    return;
  }
  showError("");
  setStatus($("saved"), "Saving…", true);
  // One id per save: a retry after a lost answer is applied once, not twice.
  state.saveId = state.saveId || newRequestId();
  try {
    const reply = await api("/api/feedback", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ hashtags: [...state.selected], image_sha256: state.sha256,
        request_id: state.saveId, community: $("community").value }),
    });
    state.saveId = null;
    let message = `Saved to ${state.me.name}'s profile: ` +
      `${reply.accepted.map((h) => `#${h}`).join(" ")}` +
      ` (${reply.posts} post${reply.posts === 1 ? "" : "s"} so far).`;
    if (reply.ignored.length) message += ` Not learned: ${reply.ignored.join("; ")}.`;
    setStatus($("saved"), message);
    await recommend();  // the ranking for this user now reflects what they kept
  } catch (error) {
    setStatus($("saved"), "");
    showError(error.message);
  }
}

async function gallery(hashtag) {
  const section = $("gallery");
  section.hidden = false;
  $("gallery-title").textContent = `Photos for #${hashtag}`;
  const photos = $("photos");
  photos.replaceChildren();
  setStatus($("gallery-status"), "Looking for photos…", true);
  const query = new URLSearchParams({ hashtag, k: "12" });
  try {
    const answer = await api(`/api/retrieve?${query}`);
    const shown = answer.photos.filter((p) => p.url);
    for (const photo of shown) {
      const image = document.createElement("img");
      image.src = photo.url;
      image.alt = `a photo for #${hashtag}`;
      image.loading = "lazy";
      photos.append(image);
    }
    setStatus($("gallery-status"), shown.length ? "" : "No photos to show for this hashtag.");
  } catch (error) {
    setStatus($("gallery-status"), error.message);
  }
  section.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function myPhotos() {
  const section = $("gallery");
  section.hidden = false;
  $("gallery-title").textContent = "Your photos";
  const photos = $("photos");
  photos.replaceChildren();
  setStatus($("gallery-status"), "Looking for your photos…", true);
  try {
    const answer = await api("/api/me/photos");
    for (const photo of answer.photos) {
      const figure = document.createElement("figure");
      figure.className = "mine";
      figure.dataset.photo = photo.photo_id;
      if (photo.url) {
        const image = document.createElement("img");
        image.src = photo.url;
        image.alt = "a photo you saved";
        figure.append(image);
      }
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "danger";
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", "Delete this photo from your profile");
      remove.addEventListener("click", async () => {
        try {
          await api(`/api/me/photos/${photo.photo_id}`, { method: "DELETE" });
          figure.remove();
        } catch (error) {
          setStatus($("gallery-status"), error.message);
        }
      });
      figure.append(remove);
      photos.append(figure);
    }
    setStatus($("gallery-status"), answer.photos.length ? "" : "You have saved no photos yet.");
  } catch (error) {
    setStatus($("gallery-status"), error.message);
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  $("community").addEventListener("change", () => recommend());
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    choose(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])][0];
    if (file) choose(file);
  });
  $("file").addEventListener("focus", () => document.body.classList.add("file-focus"));
  $("file").addEventListener("blur", () => document.body.classList.remove("file-focus"));
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    account("/api/account/signin");
  });
  $("signup").addEventListener("click", () => account("/api/account/signup"));
  $("signout").addEventListener("click", signOut);
  $("delete-me").addEventListener("click", deleteMe);
  $("my-photos").addEventListener("click", myPhotos);
  $("add-form").addEventListener("submit", addOwn);
  $("copy").addEventListener("click", copySelected);
  $("save").addEventListener("click", save);
  loadConfig();
}

wire();
