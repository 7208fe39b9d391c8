/* Progressive enhancement for the public pages; everything works without it.
 * - the statement page's list of signatories follows the live stream (server-sent events);
 * - an invitation link's page tells the server it was opened, on the first keypress or tap
 *   (never on load: mail scanners fetch links, and some run scripts);
 * - a form shown again with errors moves the focus to its list of errors. */
(function () {
  "use strict";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function organisations(list) {
    var names = {};
    list.querySelectorAll(".org").forEach(function (node) { names[node.textContent] = true; });
    return names;
  }

  function render(list, data, before) {
    var fresh = document.createDocumentFragment();
    var added = [];
    data.groups.forEach(function (group) {
      var id = "country-" + group.code.toLowerCase();
      var section = el("section", "country");
      section.setAttribute("aria-labelledby", id);
      var heading = el("h3", "", group.name + " ");
      heading.id = id;
      heading.appendChild(el("span", "count", "(" + group.count + ")"));
      var items = el("ul");
      group.signatories.forEach(function (s) {
        var item = el("li");
        item.appendChild(el("span", "org", s.organisation));
        if (s.name) {
          item.appendChild(document.createTextNode(" "));
          item.appendChild(el("span", "person", s.title ? s.name + ", " + s.title : s.name));
        }
        if (!before[s.organisation]) {
          item.classList.add("new");
          added.push(s.organisation + " (" + group.name + ")");
        }
        items.appendChild(item);
      });
      section.appendChild(heading);
      section.appendChild(items);
      fresh.appendChild(section);
    });
    list.replaceChildren(fresh);
    return added;
  }

  function follow(box) {
    var list = document.getElementById("signatory-list");
    var summary = document.getElementById("signatory-summary");
    var announce = document.getElementById("live-status");
    var status = document.getElementById("statement-status");
    var url = box.getAttribute("data-live") + "?after=" +
      encodeURIComponent(box.getAttribute("data-after") || "0");
    var source = new EventSource(url);
    source.addEventListener("open", function () {
      document.getElementById("live-note").hidden = false;
    });
    source.addEventListener("signatories", function (event) {
      var data = JSON.parse(event.data);
      var count = data.signatories.count;
      var before = organisations(list);
      var added = render(list, data.signatories, before);
      summary.textContent = data.signatories.summary + ".";
      if (status && data.status) {
        status.textContent = data.status.text;
        status.className = "status status-" + data.status.key;
      }
      box.setAttribute("data-after", event.lastEventId);
      var left = Object.keys(before).length + added.length - count;
      if (added.length) announce.textContent = "Signed just now: " + added.join(", ") + ".";
      else if (left > 0) announce.textContent = "An endorsement was withdrawn.";
    });
  }

  function beacon(form) {
    var sent = false;
    var kinds = ["keydown", "pointerdown", "touchstart", "focusin"];
    function send() {
      if (sent) return;
      sent = true;
      kinds.forEach(function (kind) { document.removeEventListener(kind, send, true); });
      var body = new URLSearchParams();
      body.set("csrf", form.elements.csrf.value);
      var url = form.getAttribute("data-opened");
      if (!(navigator.sendBeacon && navigator.sendBeacon(url, body))) {
        fetch(url, { method: "POST", body: body, credentials: "same-origin", keepalive: true })
          .catch(function () {});
      }
    }
    kinds.forEach(function (kind) { document.addEventListener(kind, send, true); });
  }

  function start() {
    var box = document.getElementById("signatories");
    if (box && box.getAttribute("data-live") && window.EventSource) follow(box);
    var form = document.querySelector("form[data-opened]");
    if (form) beacon(form);
    var errors = document.getElementById("error-summary");
    if (errors) errors.focus();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
