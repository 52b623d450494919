(function () {
  var every = REFRESH_MS;
  var title = document.title;
  function swap() {
    fetch(location.href, { cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html");
        var fresh = next.getElementById("page");
        var old = document.getElementById("page");
        if (fresh && old) { old.replaceWith(fresh); title = next.title; document.title = title; }
        document.body.classList.remove("offline");
      })
      .catch(function (e) {
        // The exporter did not answer: what is on screen is old. Say so at the top, grey the
        // decision and mark the tab, until a refresh succeeds again.
        document.body.classList.add("offline");
        document.title = "NOT UPDATING \u00b7 " + title;
        var at = (document.getElementById("rendered") || {}).textContent || "?";
        var text = "\u26a0 NOT UPDATING: the exporter did not answer (" + e.message + ") at " +
          new Date().toISOString().slice(11, 19) + " UTC. Everything below is as of " + at +
          "; retrying every " + every / 1000 + " s.";
        var note = document.getElementById("offline");
        if (!note) {
          note = document.createElement("p");
          note.id = "offline";
          note.setAttribute("role", "alert");
          var page = document.getElementById("page");
          if (page) { page.insertBefore(note, page.firstChild); }
        }
        note.textContent = text;
        var foot = document.getElementById("refresh-note");
        if (foot) { foot.textContent = "Could not refresh (" + e.message + "); retrying every " + every / 1000 + " s."; }
      });
  }
  setInterval(swap, every);
})();
