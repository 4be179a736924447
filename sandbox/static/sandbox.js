// The sandbox page: shows the emulator like Discord's client and acts for the member picked below.
// The server sends the whole state for that member over a websocket, then every change; actions go
// to /api/* and their effects come back through the same websocket.
"use strict";

const OPTION = { SUB: 1, GROUP: 2, STRING: 3, INTEGER: 4, BOOLEAN: 5, USER: 6, CHANNEL: 7, ROLE: 8, MENTIONABLE: 9, NUMBER: 10, ATTACHMENT: 11 };
const BUTTON_STYLES = { 1: "primary", 2: "secondary", 3: "success", 4: "danger", 5: "link" };
const QUICK_EMOJI = ["🔄", "❌", "⭐", "✉️", "👍", "❤️", "😂", "🎉"];
const AVATAR_COLOURS = ["#5865f2", "#3ba55c", "#faa61a", "#ed4245", "#eb459e", "#9b59b6", "#1abc9c"];

const $ = (id) => document.getElementById(id);
const state = {
  me: null, bot: "", members: [], guild: { name: "", channels: [] }, dm: null, users: {}, roles: {},
  messages: new Map(), channel: null, commands: [], hidden: [], command: null, unread: new Set(),
  uploadLimit: 10 * 1024 * 1024, stick: true,
};
let socket = null;

// -- helpers ---------------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "html") node.innerHTML = value;  // only ever markdown(), which escapes first
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// Discord's markdown, the parts bots use: code, bold, italics, underline, strike, mentions, links.
function markdown(text) {
  const codes = [];
  let html = escapeHtml(text || "")
    .replace(/```(?:[a-z]*\n)?([\s\S]*?)```/g, (_, code) => `\u0000${codes.push(`<pre>${code}</pre>`) - 1}\u0000`)
    .replace(/`([^`\n]+)`/g, (_, code) => `\u0000${codes.push(`<code>${code}</code>`) - 1}\u0000`);
  html = html
    .replace(/\*\*(.+?)\*\*/gs, "<b>$1</b>")
    .replace(/__(.+?)__/gs, "<u>$1</u>")
    .replace(/~~(.+?)~~/gs, "<s>$1</s>")
    .replace(/(^|[^*\w])\*([^*\n]+)\*/g, "$1<i>$2</i>")
    .replace(/(^|\W)_([^_\n]+)_(?=\W|$)/g, "$1<i>$2</i>")
    .replace(/&lt;@!?(\d+)&gt;/g, (_, id) => `<span class="mention">@${escapeHtml(state.users[id] || "unknown-user")}</span>`)
    .replace(/&lt;@&amp;(\d+)&gt;/g, (_, id) => `<span class="mention">@${escapeHtml(state.roles[id] || "unknown-role")}</span>`)
    .replace(/&lt;#(\d+)&gt;/g, (_, id) => `<span class="mention">#${escapeHtml(channelName(id))}</span>`)
    .replace(/\bhttps?:\/\/[^\s<]+/g, (url) => `<a href="${url}" target="_blank" rel="noopener">${url}</a>`);
  return html.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[Number(i)]);
}

function channelName(id) {
  const channel = allChannels().find((c) => c.id === id);
  return channel ? channel.name : "unknown-channel";
}

function allChannels() {
  return state.dm ? [...state.guild.channels, state.dm] : state.guild.channels;
}

function currentChannel() {
  return allChannels().find((c) => c.id === state.channel);
}

function avatarColour(name) {
  let hash = 0;
  for (const c of name) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  return AVATAR_COLOURS[hash % AVATAR_COLOURS.length];
}

function notice(text, kind = "error") {
  const box = $("notice");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
  clearTimeout(notice.timer);
  if (text) notice.timer = setTimeout(() => { box.hidden = true; }, 10000);
}

async function api(path, body) {
  const options = body instanceof FormData ? { method: "POST", body }
    : body ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) } : {};
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// -- the live feed ---------------------------------------------------------------------------------

function connect() {
  socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  socket.addEventListener("open", () => {
    $("banner").hidden = true;
    socket.send(JSON.stringify({ user: state.me || "alice" }));
  });
  socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
  socket.addEventListener("close", () => {
    $("banner").hidden = false;
    setTimeout(connect, 1000);
  });
}

function receive(update) {
  if (update.type === "state") {
    Object.assign(state, {
      me: update.me, bot: update.bot, members: update.members, guild: update.guild, dm: update.dm,
      users: update.users, roles: update.roles, uploadLimit: update.upload_limit,
      messages: new Map(update.messages.map((m) => [m.id, m])), unread: new Set(),
    });
    if (!currentChannel()) state.channel = state.guild.channels[0].id;
    renderSidebar();
    selectChannel(state.channel);
    document.body.dataset.me = state.me;
  } else if (update.type === "message") {
    const message = update.message;
    const isNew = !state.messages.has(message.id);
    state.messages.set(message.id, message);
    if (message.channel === state.channel) renderMessage(message);
    else if (isNew) { state.unread.add(message.channel); renderChannels(); }
  } else if (update.type === "delete") {
    state.messages.delete(update.id);
    const node = document.querySelector(`.msg[data-id="${update.id}"]`);
    if (node) node.remove();
  } else if (update.type === "commands") {
    loadCommands();
  }
}

// -- sidebar ---------------------------------------------------------------------------------------

function renderSidebar() {
  $("guild-name").textContent = state.guild.name;
  const select = $("member");
  select.replaceChildren(...state.members.map((m) =>
    el("option", { value: m.name, selected: m.name === state.me }, m.powers.length ? `${m.name} (${m.powers[0]})` : m.name)));
  const me = state.members.find((m) => m.name === state.me);
  $("member-powers").textContent = me && me.roles.length ? `Roles: ${me.roles.join(", ")}` : "No roles";
  renderChannels();
}

function channelButton(channel, icon, label) {
  const classes = [channel.id === state.channel ? "current" : "", state.unread.has(channel.id) ? "unread" : ""].join(" ");
  return el("li", {}, el("button", {
    type: "button", class: classes, dataset: { channel: channel.name }, title: [channel.topic, ...channel.notes].filter(Boolean).join(" · "),
    onclick: () => selectChannel(channel.id),
  }, el("span", { class: "hash" }, icon), el("span", {}, label),
  channel.notes.length ? el("span", { class: "note" }, channel.notes[0] === "age-restricted" ? "18+" : "no files") : null));
}

function renderChannels() {
  $("channels").replaceChildren(...state.guild.channels.map((c) => channelButton(c, "#", c.name)));
  $("dms").replaceChildren(channelButton(state.dm, "@", state.bot));
}

function selectChannel(id) {
  state.channel = id;
  state.unread.delete(id);
  const channel = currentChannel();
  renderChannels();
  $("channel-title").textContent = channel.dm ? `@${state.bot}` : `#${channel.name}`;
  $("channel-notes").replaceChildren(...channel.notes.map((n) => el("span", { class: "note" }, n)));
  $("channel-topic").textContent = channel.dm ? `Your direct messages with ${state.bot}` : channel.topic;
  $("input").placeholder = channel.dm ? `Message @${state.bot} — / for commands` : `Message #${channel.name} — / for commands`;
  renderMessages();
  closeCommand();
  loadCommands();
}

// -- messages --------------------------------------------------------------------------------------

function renderMessages() {
  const list = $("messages");
  const shown = [...state.messages.values()].filter((m) => m.channel === state.channel).sort((a, b) => a.time - b.time);
  list.replaceChildren(...(shown.length ? shown.map(messageNode) : [el("div", { class: "empty" }, "No messages yet. Type / to see the bot's commands.")]));
  state.stick = true;
  toBottom();
}

function renderMessage(message) {
  const list = $("messages");
  const node = messageNode(message);
  const old = list.querySelector(`.msg[data-id="${message.id}"]`);
  if (old) old.replaceWith(node);
  else {
    list.querySelector(".empty")?.remove();
    list.append(node);
  }
  if (state.stick) toBottom();
}

function messageNode(m) {
  const time = new Date(m.time * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const inEmbeds = new Set(m.embeds.flatMap((e) => [e.image?.url, e.thumbnail?.url]).filter((u) => u?.startsWith("attachment://")).map((u) => u.slice(13)));
  const attachments = m.attachments.filter((a) => !inEmbeds.has(a.filename));
  return el("article", { class: `msg${m.ephemeral ? " ephemeral" : ""}`, dataset: { id: m.id, author: m.author.name } },
    el("div", { class: "avatar", style: `background:${avatarColour(m.author.name)}`, "aria-hidden": "true" }, m.author.name[0].toUpperCase()),
    m.command ? el("div", { class: "used" }, el("b", {}, m.command.user), " used ", el("b", {}, `/${m.command.name}`)) : null,
    el("div", { class: "head" }, el("span", { class: "author" }, m.author.name), m.author.bot ? el("span", { class: "tag" }, "APP") : null,
      el("span", { class: "time" }, time), m.edited ? el("span", { class: "edited" }, "(edited)") : null),
    el("div", { class: "body" },
      m.loading ? el("div", { class: "thinking" }, `${m.author.name} is thinking`) : null,
      m.content ? el("div", { class: "content", html: markdown(m.content) }) : null,
      ...m.embeds.map((e) => embedNode(e, m)),
      attachments.length ? el("div", { class: "attachments" }, ...attachments.map(attachmentNode)) : null,
      componentsNode(m),
      m.ephemeral || m.loading ? null : reactionsNode(m),  // Discord takes no reactions on these
      m.ephemeral ? el("div", { class: "ephemeral-note" }, "👁 Only you can see this") : null),
  );
}

function attachmentUrl(url, m) {
  if (url && url.startsWith("attachment://")) return m.attachments.find((a) => a.filename === url.slice(13));
  return url ? { url, filename: url.split("/").pop(), id: null } : null;
}

function embedNode(e, m) {
  const image = attachmentUrl(e.image?.url, m);
  const thumbnail = attachmentUrl(e.thumbnail?.url, m);
  const colour = e.color !== undefined && e.color !== null ? `#${e.color.toString(16).padStart(6, "0")}` : null;
  const fields = (e.fields || []).map((f) => el("div", { class: `embed-field${f.inline ? " inline" : ""}` },
    el("div", { class: "embed-field-name" }, f.name), el("div", { class: "embed-field-value", html: markdown(f.value) })));
  return el("div", { class: "embed", style: colour ? `border-left-color:${colour}` : null },
    el("div", { class: "embed-main" },
      e.author?.name ? el("div", { class: "embed-author" }, e.author.name) : null,
      e.title ? el("div", { class: "embed-title" }, e.title) : null,
      e.description ? el("div", { class: "embed-description", html: markdown(e.description) }) : null,
      fields.length ? el("div", { class: "embed-fields" }, ...fields) : null),
    thumbnail ? el("img", { class: "embed-thumbnail", src: thumbnail.url, alt: thumbnail.filename, onclick: () => enlarge(thumbnail) }) : null,
    image ? el("img", { class: "embed-image", src: image.url, alt: image.filename, onclick: () => enlarge(image) }) : null,
    e.footer?.text ? el("div", { class: "embed-footer" }, e.footer.text) : null);
}

function attachmentNode(a) {
  if (a.content_type.startsWith("image/")) {
    return el("img", {
      src: a.url, alt: a.filename, title: `${a.filename} — click to enlarge`, width: a.width, height: a.height,
      onclick: () => enlarge(a),
      onload: () => { if (state.stick) toBottom(); },
    });
  }
  return el("a", { class: "file", href: a.url, download: a.filename }, `📄 ${a.filename} (${Math.ceil(a.size / 1024)} KiB)`);
}

function componentsNode(m) {
  const rows = m.components.filter((row) => row.type === 1).map((row) => el("div", { class: "row" },
    ...row.components.filter((c) => c.type === 2).map((c) => buttonNode(c, m))));
  return rows.length ? el("div", { class: "components" }, ...rows) : null;
}

function buttonNode(c, m) {
  const style = BUTTON_STYLES[c.style] || "secondary";
  const text = [c.emoji?.name, c.label].filter(Boolean).join(" ");
  if (style === "link") return el("a", { class: "btn", href: c.url, target: "_blank", rel: "noopener" }, text, " ↗");
  return el("button", {
    type: "button", class: `btn ${style}`, disabled: c.disabled, dataset: { customId: c.custom_id },
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        const answer = await api("/api/click", { user: state.me, message: m.id, custom_id: c.custom_id });
        notice("");
        if (answer.modal) openModal(answer.interaction, answer.modal);
      } catch (error) { notice(error.message); }
      finally { button.disabled = Boolean(c.disabled); }
    },
  }, text);
}

function reactionsNode(m) {
  const chips = m.reactions.map((r) => el("button", {
    type: "button", class: `reaction${r.me ? " me" : ""}`, dataset: { emoji: r.emoji }, "aria-pressed": r.me ? "true" : "false",
    title: r.me ? "Remove your reaction" : "React", onclick: () => react(m, r.emoji, !r.me),
  }, el("span", {}, r.emoji), el("span", { class: "count" }, String(r.count))));
  const add = el("button", {
    type: "button", class: "add-reaction", title: "Add reaction", "aria-label": "Add reaction",
    onclick: (event) => openEmojiPicker(m, event.currentTarget),
  }, "☺+");
  return el("div", { class: "reactions" }, ...chips, add);
}

async function react(m, emoji, add) {
  try { await api("/api/react", { user: state.me, message: m.id, emoji, add }); notice(""); }
  catch (error) { notice(error.message); }
}

// -- overlays: the image viewer and the emoji picker --------------------------------------------------

async function enlarge(a) {
  $("lightbox-image").src = a.url;
  $("lightbox-image").alt = a.filename;
  $("lightbox-name").textContent = a.width ? `${a.filename} · ${a.width}×${a.height}` : a.filename;
  $("lightbox-open").href = a.url;
  $("parameters").textContent = "";
  $("lightbox").hidden = false;
  if (a.id) {
    try {
      const { parameters } = await api(`/api/attachments/${a.id}/parameters`);
      $("parameters").textContent = parameters || "No PNG parameters in this image.";
    } catch (error) {
      $("parameters").textContent = error.message;
    }
  }
}

let reactingTo = null;
function openEmojiPicker(m, anchor) {
  reactingTo = m;
  const picker = $("emoji-picker");
  picker.hidden = false;
  const box = anchor.getBoundingClientRect();
  const width = picker.offsetWidth;
  const height = picker.offsetHeight;
  picker.style.left = `${Math.max(8, Math.min(box.left, innerWidth - width - 8))}px`;
  picker.style.top = `${box.top - height - 6 > 8 ? box.top - height - 6 : box.bottom + 6}px`;
  $("emoji-input").value = "";
}

function closeOverlays() {
  $("lightbox").hidden = true;
  $("emoji-picker").hidden = true;
  reactingTo = null;
}

function setupOverlays() {
  $("emoji-quick").append(...QUICK_EMOJI.map((e) => el("button", { type: "button", title: e, onclick: () => pickEmoji(e) }, e)));
  $("emoji-form").addEventListener("submit", (event) => { event.preventDefault(); pickEmoji($("emoji-input").value.trim()); });
  $("lightbox").addEventListener("click", (event) => { if (event.target === $("lightbox")) closeOverlays(); });
  $("lightbox-close").addEventListener("click", closeOverlays);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") { closeOverlays(); closeCommand(); } });
  document.addEventListener("click", (event) => {
    if (!$("emoji-picker").hidden && !$("emoji-picker").contains(event.target) && !event.target.closest(".add-reaction")) closeOverlays();
  });
}

function pickEmoji(emoji) {
  const message = reactingTo;
  closeOverlays();
  if (!emoji || !message) return;
  const mine = message.reactions.find((r) => r.emoji === emoji && r.me);
  if (!mine) react(message, emoji, true);
}

// -- a modal form the bot opened (interaction response type 9): text inputs, as Discord's client shows them

const TEXT_INPUT = 4, LABEL = 18, PARAGRAPH = 2;
let modalFor = null;  // the interaction that opened the form on screen

function textInputs(components, label) {  // [{input, label}] in action rows (type 1) or labels (type 18)
  return components.flatMap((c) => c.type === TEXT_INPUT ? [{ input: c, label: label || c.label }]
    : c.type === LABEL ? textInputs([c.component], c.label)
    : textInputs(c.components || [], label));
}

function openModal(interaction, modal) {
  modalFor = interaction;
  $("modal-title").textContent = modal.title;
  $("modal-fields").replaceChildren(...textInputs(modal.components).map(({ input, label }) => {
    const props = {
      id: `modal-${input.custom_id}`, name: input.custom_id, placeholder: input.placeholder,
      maxlength: input.max_length, minlength: input.min_length, required: input.required !== false,
    };
    const control = input.style === PARAGRAPH ? el("textarea", { ...props, rows: 4 }) : el("input", { ...props, type: "text" });
    control.value = input.value || "";
    return el("div", { class: "field", dataset: { input: input.custom_id } },
      el("label", { class: "field-label", for: props.id }, el("b", {}, label), input.required !== false ? "*" : ""), control);
  }));
  $("modal").hidden = false;
  $("modal-fields").querySelector("input, textarea")?.focus();
}

function closeModal() {
  $("modal").hidden = true;
  modalFor = null;
}

async function submitModal(event) {
  event.preventDefault();
  const values = {};
  let valid = true;
  for (const field of $("modal-fields").querySelectorAll(".field")) {
    const control = field.querySelector("input, textarea");
    field.querySelector(".field-error")?.remove();
    const missing = control.required && !control.value.trim();
    field.classList.toggle("invalid", missing);
    if (missing) { field.append(el("div", { class: "field-error" }, "This field is required.")); valid = false; }
    values[control.name] = control.value;
  }
  if (!valid) return;
  const interaction = modalFor;
  closeModal();
  try { await api("/api/modal", { user: state.me, interaction, values }); notice(""); }
  catch (error) { notice(error.message); }
}

function setupModal() {
  $("modal-form").addEventListener("submit", submitModal);
  $("modal-close").addEventListener("click", closeModal);
  $("modal-cancel").addEventListener("click", closeModal);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && !$("modal").hidden) closeModal(); });
}

// -- the command box -------------------------------------------------------------------------------

async function loadCommands() {
  if (!state.me || !state.channel) return;
  try {
    const data = await api(`/api/commands?user=${encodeURIComponent(state.me)}&channel=${state.channel}`);
    state.commands = data.commands;
    state.hidden = data.hidden;
  } catch (error) {
    notice(error.message);
  }
  showPicker();
}

function showPicker() {
  const text = $("input").value;
  const picker = $("picker");
  if (!text.startsWith("/") || state.command) { picker.hidden = true; return; }
  const typed = text.slice(1).trim().toLowerCase();
  const matches = state.commands.filter((c) => c.name.startsWith(typed) || (typed && c.name.includes(typed)));
  const hidden = state.hidden.filter((c) => typed && c.name.startsWith(typed.split(" ")[0]));
  const items = matches.slice(0, 25).map((c, i) => el("li", {
    role: "option", class: i === 0 ? "active" : "", dataset: { command: c.name },
    onmousedown: (event) => { event.preventDefault(); chooseCommand(c); },
  }, el("span", { class: "name" }, `/${c.name}`), el("span", { class: "description" }, c.description)));
  if (!matches.length && hidden.length) {
    const why = [...new Set(hidden.map((c) => c.why))].join("; ");
    items.push(el("li", { class: "hidden-command" }, `/${hidden[0].name.split(" ")[0]} is hidden from ${state.me} here: ${why}`));
  } else if (!items.length) {
    items.push(el("li", { class: "hidden-command" }, `No command matches /${typed}`));
  }
  picker.replaceChildren(...items);
  picker.hidden = false;
}

function chooseCommand(command) {
  state.command = command;
  $("input").value = "";
  $("picker").hidden = true;
  $("message-form").hidden = true;
  $("command-form").hidden = false;
  $("command-name").textContent = `/${command.name}`;
  $("command-description").textContent = command.description;
  $("fields").replaceChildren();
  for (const option of command.options.filter((o) => o.required)) addField(option);
  renderOptional();
  const first = $("fields").querySelector("input, select");
  (first || $("command-send")).focus();
}

function closeCommand() {
  if (!state.command) return;
  state.command = null;
  $("command-form").hidden = true;
  $("message-form").hidden = false;
  $("input").focus();
}

function renderOptional() {
  const present = new Set([...$("fields").children].map((f) => f.dataset.option));
  const rest = state.command.options.filter((o) => !present.has(o.name));
  $("optional").replaceChildren(...(rest.length ? [el("span", { class: "label" }, "Optional:")] : []),
    ...rest.map((o) => el("button", { type: "button", title: o.description, dataset: { option: o.name }, onclick: () => {
      addField(o);
      renderOptional();
      $("fields").querySelector(`[data-option="${o.name}"] input, [data-option="${o.name}"] select`)?.focus();
    } }, `+ ${o.name}`)));
}

function choiceSelect(choices) {
  return el("select", {}, el("option", { value: "" }, "Choose…"),
    ...choices.map((c) => el("option", { value: JSON.stringify(c.value) }, c.name)));
}

function inputFor(option) {
  if (option.choices?.length) return choiceSelect(option.choices);
  switch (option.type) {
    case OPTION.BOOLEAN: return choiceSelect([{ name: "True", value: true }, { name: "False", value: false }]);
    case OPTION.USER: case OPTION.MENTIONABLE:
      return choiceSelect(state.members.map((m) => ({ name: m.name, value: m.id })));
    case OPTION.CHANNEL: return choiceSelect(state.guild.channels.map((c) => ({ name: `#${c.name}`, value: c.id })));
    case OPTION.ROLE: return choiceSelect(Object.entries(state.roles).map(([id, name]) => ({ name, value: id })));
    case OPTION.ATTACHMENT: return el("input", { type: "file" });
    case OPTION.INTEGER: case OPTION.NUMBER:
      return el("input", { type: "number", step: option.type === OPTION.INTEGER ? "1" : "any", min: option.min_value, max: option.max_value, placeholder: option.description });
    default:
      return el("input", { type: "text", minlength: option.min_length, maxlength: option.max_length, placeholder: option.description });
  }
}

function addField(option) {
  const input = inputFor(option);
  input.name = option.name;
  input.setAttribute("aria-label", option.name);
  const field = el("div", { class: `field${option.type === OPTION.STRING && !option.choices?.length ? " wide" : ""}`, dataset: { option: option.name } },
    el("label", { class: "field-label" }, el("b", {}, option.name), option.required ? null : el("span", {}, "optional"),
      option.required ? null : el("button", { type: "button", class: "remove", title: `Remove ${option.name}`, onclick: () => { field.remove(); renderOptional(); } }, "×")),
    input, el("div", { class: "field-error" }));
  field.title = option.description;
  if (option.autocomplete) setupAutocomplete(field, input, option);
  $("fields").append(field);
}

// Autocomplete: the bot answers as you type (Discord sends what is typed so far in the focused option).
function setupAutocomplete(field, input, option) {
  const list = el("ul", { class: "suggestions", hidden: true });
  field.append(list);
  let timer = null;
  let asked = 0;
  const ask = async () => {
    const mine = ++asked;
    try {
      const { choices } = await api("/api/autocomplete", {
        user: state.me, channel: state.channel, command: state.command.name, focused: option.name,
        options: { ...collect(false).values, [option.name]: input.value },
      });
      if (mine !== asked || document.activeElement !== input) return;
      list.replaceChildren(...choices.map((c) => el("li", {
        dataset: { value: String(c.value) }, onmousedown: (event) => { event.preventDefault(); input.value = String(c.value); list.hidden = true; },
      }, c.name)));
      list.hidden = !choices.length;
    } catch (error) {
      list.replaceChildren(el("li", {}, error.message));
      list.hidden = false;
    }
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(ask, 150); });
  input.addEventListener("focus", ask);
  input.addEventListener("blur", () => { list.hidden = true; });
}

// The values of the command box, checked like Discord's client does before it sends anything.
function collect(strict) {
  const values = {};
  const files = {};
  let ok = true;
  for (const field of $("fields").children) {
    const option = state.command.options.find((o) => o.name === field.dataset.option);
    const input = field.querySelector("input, select");
    const error = field.querySelector(".field-error");
    let problem = "";
    if (option.type === OPTION.ATTACHMENT) {
      const file = input.files[0];
      if (file && file.size > state.uploadLimit) problem = `${file.name} is larger than the upload limit (${Math.floor(state.uploadLimit / 1048576)} MiB).`;
      else if (file) files[option.name] = file;
      else if (option.required) problem = "This field is required.";
    } else if (input.value === "") {
      if (option.required) problem = "This field is required.";
    } else if (input.tagName === "SELECT") {
      values[option.name] = JSON.parse(input.value);
    } else if (option.type === OPTION.INTEGER || option.type === OPTION.NUMBER) {
      const number = Number(input.value);
      if (!Number.isFinite(number) || (option.type === OPTION.INTEGER && !Number.isInteger(number))) problem = `Must be ${option.type === OPTION.INTEGER ? "a whole number" : "a number"}.`;
      else if ((option.min_value ?? -Infinity) > number || (option.max_value ?? Infinity) < number) problem = `Must be between ${option.min_value ?? "−∞"} and ${option.max_value ?? "∞"}.`;
      else values[option.name] = number;
    } else {
      if (option.min_length && input.value.length < option.min_length) problem = `At least ${option.min_length} characters.`;
      values[option.name] = input.value;
    }
    if (strict) {
      field.classList.toggle("invalid", Boolean(problem));
      error.textContent = problem;
    }
    ok = ok && !problem;
  }
  return { ok, values, files };
}

async function sendCommand(event) {
  event.preventDefault();
  const { ok, values, files } = collect(true);
  if (!ok) return;
  const button = $("command-send");
  button.disabled = true;
  try {
    for (const [name, file] of Object.entries(files)) {
      const form = new FormData();
      form.append("file", file, file.name);
      values[name] = (await api("/api/upload", form)).id;
    }
    await api("/api/invoke", { user: state.me, channel: state.channel, command: state.command.name, options: values });
    notice("");
    closeCommand();
  } catch (error) {
    notice(error.message);
  } finally {
    button.disabled = false;
  }
}

async function sendMessage(event) {
  event.preventDefault();
  const text = $("input").value;
  if (text.startsWith("/")) {
    const typed = text.slice(1).trim().toLowerCase();
    const exact = state.commands.find((c) => c.name === typed) || state.commands.find((c) => c.name.startsWith(typed));
    if (exact) chooseCommand(exact);
    return;
  }
  if (!text.trim()) return;
  try {
    await api("/api/send", { user: state.me, channel: state.channel, content: text });
    $("input").value = "";
  } catch (error) {
    notice(error.message);
  }
}

// Stay at the newest message while the list grows (images load) or shrinks (the command box opens),
// unless the member scrolled up: only scrolling right after their wheel, touch, key or mouse counts.
function toBottom() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function setupScrolling() {
  const list = $("messages");
  let lastInput = -Infinity;
  for (const kind of ["wheel", "touchmove", "keydown", "mousedown"]) {
    list.addEventListener(kind, () => { lastInput = performance.now(); }, { passive: true });
  }
  list.addEventListener("scroll", () => {
    if (performance.now() - lastInput < 1000) state.stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  });
  new ResizeObserver(() => { if (state.stick) toBottom(); }).observe(list);
}

function setupComposer() {
  $("input").addEventListener("input", showPicker);
  $("input").addEventListener("keydown", (event) => {
    const picker = $("picker");
    if (picker.hidden || !["ArrowDown", "ArrowUp", "Tab"].includes(event.key)) return;
    const items = [...picker.querySelectorAll("li[data-command]")];
    const at = items.findIndex((li) => li.classList.contains("active"));
    if (event.key === "Tab" && at >= 0) {
      event.preventDefault();
      chooseCommand(state.commands.find((c) => c.name === items[at].dataset.command));
      return;
    }
    if (!items.length) return;
    event.preventDefault();
    const next = (at + (event.key === "ArrowUp" ? items.length - 1 : 1)) % items.length;
    items.forEach((li, i) => li.classList.toggle("active", i === next));
    $("input").value = `/${items[next].dataset.command}`;
  });
  $("message-form").addEventListener("submit", sendMessage);
  $("command-form").addEventListener("submit", sendCommand);
  $("command-cancel").addEventListener("click", closeCommand);
  $("member").addEventListener("change", (event) => {
    state.me = event.target.value;
    document.body.dataset.me = "";
    socket.send(JSON.stringify({ user: state.me }));
  });
}

setupOverlays();
setupModal();
setupScrolling();
setupComposer();
connect();
