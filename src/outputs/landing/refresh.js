(function () {
  var every = REFRESH_MS;
  function swap() {
    fetch(location.href, { cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html");
        var fresh = next.getElementById("page");
        var old = document.getElementById("page");
        if (fresh && old) { old.replaceWith(fresh); document.title = next.title; }
      })
      .catch(function (e) {
        var note = document.getElementById("refresh-note");
        if (note) { note.textContent = "Could not refresh (" + e.message + "); retrying every " + every / 1000 + " s."; }
      });
  }
  setInterval(swap, every);
})();
