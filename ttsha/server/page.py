"""The minimal web page served at ``/``: type, choose, play."""

PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ttsha 语音合成</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
 textarea { width: 100%; min-height: 8rem; font-size: 1.1rem; }
 .row { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; margin: .8rem 0; }
 #status { color: #555; min-height: 1.4em; }
 #status.error { color: #b00020; }
 audio { width: 100%; margin-top: .5rem; }
</style>
</head>
<body>
<h1>ttsha 语音合成</h1>
<textarea id="text" maxlength="2000">欢迎使用语音合成服务。</textarea>
<div class="row">
 <label>声音 <select id="voice"></select></label>
 <label>情感 <select id="emotion"></select></label>
 <label>语速 <input id="speed" type="range" min="0.5" max="2" step="0.1" value="1">
  <output id="speed-value">1.0</output></label>
 <button id="play" type="button">合成并播放</button>
</div>
<div id="status" role="status"></div>
<audio id="player" controls></audio>
<script>
const $ = (id) => document.getElementById(id);
const status = (text, error) => { $("status").textContent = text; $("status").className = error ? "error" : ""; };
$("speed").addEventListener("input", () => { $("speed-value").textContent = Number($("speed").value).toFixed(1); });
async function loadVoices() {
  const resp = await fetch("/v1/voices");
  if (!resp.ok) { status("服务尚未就绪，请稍候…", true); setTimeout(loadVoices, 2000); return; }
  const info = await resp.json();
  $("voice").replaceChildren(
    ...info.voices.map((v) => new Option(v, v, v === info.default_voice, v === info.default_voice)));
  $("emotion").replaceChildren(...info.emotions.map((e) => new Option(e, e, e === "neutral", e === "neutral")));
  const [low, high] = info.engine === "sambert" ? [1, 1] : [0.5, 2];
  $("speed").min = low; $("speed").max = high;
  status(`引擎 ${info.engine} · ${info.sample_rate} Hz`);
}
$("play").addEventListener("click", async () => {
  $("play").disabled = true;
  status("合成中…");
  try {
    const resp = await fetch("/v1/synthesize?return=json", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("text").value, voice: $("voice").value,
                             emotion: $("emotion").value, speed: Number($("speed").value) }),
    });
    const body = await resp.json();
    if (!resp.ok) { status(body.message || "合成失败", true); return; }
    $("player").src = body.url;
    status(`${body.duration_s.toFixed(2)} 秒${body.cached ? "（缓存）" : ""}`);
    $("player").play().catch(() => {});
  } catch (err) {
    status("请求失败：" + err, true);
  } finally {
    $("play").disabled = false;
  }
});
loadVoices();
</script>
</body>
</html>
"""
