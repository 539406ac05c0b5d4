// The console's one script (no library): live run updates over server-sent events, the STOP button, and the
// playground's streamed completion. Served from this server; nothing is fetched from anywhere else.
"use strict";

function followRun() {
  const live = document.getElementById("live");
  if (!live || live.dataset.live !== "yes" || !window.EventSource) return;
  const source = new EventSource(live.dataset.events);
  source.addEventListener("update", (event) => {
    const data = JSON.parse(event.data);
    live.innerHTML = data.html;
    if (data.state !== "running" && data.state !== "stopping") {
      const stop = document.getElementById("stop");
      if (stop) stop.disabled = true;
    }
  });
  source.addEventListener("end", () => {
    source.close();
    const stop = document.getElementById("stop");
    if (stop) stop.disabled = true;
  });
}

function stopButton() {
  const stop = document.getElementById("stop");
  if (!stop) return;
  stop.addEventListener("click", async () => {
    if (!window.confirm("Stop this run before its next experiment?")) return;
    stop.disabled = true;
    const note = document.getElementById("stop-note");
    const reply = await fetch(`/console/runs/${encodeURIComponent(stop.dataset.run)}/stop`, {
      method: "POST",
      headers: { "X-Autonas-Console": "stop" },
      credentials: "same-origin",
    });
    const body = await reply.json();
    note.textContent = reply.ok ? "stop requested: " + body.note : body.error;
    if (!reply.ok) stop.disabled = false;
  });
}

function playground() {
  const form = document.getElementById("playground");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = document.getElementById("prompt").value;
    const out = document.getElementById("generated");
    const speed = document.getElementById("speed");
    document.getElementById("prompt-echo").textContent = prompt;
    out.textContent = "";
    speed.textContent = "waiting for the first token…";
    const started = performance.now();
    let first = null, pieces = 0, failed = null;
    const reply = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({
        model: document.getElementById("model").value,
        prompt: prompt,
        max_tokens: Number(document.getElementById("max-tokens").value),
        temperature: Number(document.getElementById("temperature").value),
        stream: true,
      }),
    });
    if (!reply.ok) {
      const body = await reply.json().catch(() => ({}));
      speed.textContent = "error: " + ((body.error && body.error.message) || reply.status);
      return;
    }
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const show = () => {
      const now = performance.now();
      const after = first === null ? 0 : (now - first) / 1000;
      const rate = pieces > 1 && after > 0 ? ((pieces - 1) / after).toFixed(1) : "…";
      const ms = pieces > 1 ? ((now - first) / (pieces - 1)).toFixed(1) : "…";
      const ttft = first === null ? "…" : (first - started).toFixed(0);
      speed.textContent = `${pieces} tokens · ${rate} tokens/s · ${ms} ms/token · first token after ${ttft} ms`;
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) { failed = chunk.error.message; continue; }
        const text = chunk.choices[0].text;
        if (text) {
          if (first === null) first = performance.now();
          pieces += 1;
          out.textContent += text;
          show();
        }
      }
    }
    show();
    speed.textContent += failed ? ` · error: ${failed}` : " · done";
    speed.dataset.done = "yes";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  followRun();
  stopButton();
  playground();
});
