// salon-bridge admin: small enhancements; every page works without this file.
"use strict";

// A form with data-confirm asks first; without JavaScript the server shows a confirmation page.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) return;
  if (!window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  const confirmed = document.createElement("input");
  confirmed.type = "hidden";
  confirmed.name = "confirmed";
  confirmed.value = "1";
  form.appendChild(confirmed);
});

// The e-mail's "as sent" / "text version" tabs; without this file both are shown one below the other.
function setUpTabs(root) {
  for (const list of root.querySelectorAll(".tabs")) {
    const buttons = [...list.querySelectorAll("[data-tab]")];
    const show = (chosen) => {
      for (const button of buttons) {
        const selected = button === chosen;
        button.setAttribute("aria-selected", String(selected));
        const panel = document.getElementById(button.dataset.tab);
        if (panel) panel.hidden = !selected;
      }
    };
    for (const button of buttons) button.addEventListener("click", () => show(button));
    list.hidden = false;
    show(buttons[0]);
  }
}
setUpTabs(document);

// While an action is queued, sending or retrying, refresh the actions every few seconds.
(function liveActions() {
  const section = document.getElementById("actions");
  if (!section || !section.dataset.live) return;
  const started = Date.now();
  const refresh = async () => {
    if (document.hidden) return schedule();
    try {
      const response = await fetch(window.location.pathname, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok || response.redirected) return;  // logged out, or gone: stop quietly
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("actions");
      if (!fresh) return;
      section.innerHTML = fresh.innerHTML;
      setUpTabs(section);
      if (!fresh.dataset.live) {
        delete section.dataset.live;
        return;
      }
    } catch (error) {
      // network hiccup: try again on the next tick
    }
    schedule();
  };
  const schedule = () => {
    if (Date.now() - started < 10 * 60 * 1000) window.setTimeout(refresh, 2000);
  };
  schedule();
})();
