"""The web page served at ``/``: type, choose, play.

Everything it offers comes from ``GET /v1/voices`` (voices, emotions, the
speed range, the longest text, the formats), so it never offers what the
server would refuse; an error the server does return is shown beside the
field it concerns. The text being spoken is highlighted character by
character from the answer's ``timestamps`` (engines that report none say
so), and the result's subtitles can be downloaded.
"""

PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ttsha 语音合成</title>
<style>
 body { font-family: system-ui, "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif;
        max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
 textarea { width: 100%; min-height: 8rem; font-size: 1.1rem; box-sizing: border-box; }
 .row { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; margin: .8rem 0; }
 .hint { color: #555; font-size: .9rem; }
 .error { color: #b00020; font-size: .9rem; min-height: 1.2em; }
 .invalid { outline: 2px solid #b00020; }
 #status { color: #555; min-height: 1.4em; }
 #status.error { color: #b00020; }
 audio { width: 100%; margin-top: .5rem; }
 #spoken { font-size: 1.4rem; line-height: 2.2rem; margin: .8rem 0; min-height: 2.2rem; }
 #spoken span.speaking { background: #ffd54f; border-radius: .2rem; }
</style>
</head>
<body>
<h1>ttsha 语音合成</h1>
<label for="text">文本</label>
<textarea id="text" maxlength="2000" aria-describedby="text-count text-error">欢迎使用语音合成服务。</textarea>
<div class="row hint"><span id="text-count"></span></div>
<div id="text-error" class="error" role="alert"></div>
<div class="row">
 <label>声音 <select id="voice"></select></label>
 <label>情感 <select id="emotion"></select></label>
 <label>格式 <select id="format"></select></label>
 <label>语速 <input id="speed" type="range" min="0.5" max="2" step="0.1" value="1">
  <output id="speed-value">1.0</output></label>
 <label><input id="ssml" type="checkbox"> SSML</label>
 <button id="play" type="button">合成并播放</button>
</div>
<div id="field-error" class="error" role="alert"></div>
<div id="status" role="status"></div>
<div id="spoken" lang="zh-CN" aria-live="off"></div>
<audio id="player" controls></audio>
<div class="row hint"><a id="download" href="" download hidden>下载音频</a>
 <a id="subtitles" href="" download hidden>下载字幕（WebVTT）</a></div>
<script>
const $ = (id) => document.getElementById(id);
const EMOTIONS = { neutral: "中性", happy: "高兴", sad: "悲伤", angry: "生气", calm: "平静",
                   fear: "恐惧", surprise: "惊讶", disgust: "厌恶" };
const FORMATS = { wav: "WAV（无损）", mp3: "MP3", opus: "Opus（Ogg）", flac: "FLAC（无损）" };
// Which field each of the server's error codes is about.
const FIELD_OF = { empty_text: "text", text_too_long: "text", nothing_to_say: "text", bad_text: "text",
                   unknown_voice: "voice", bad_voice: "voice", unknown_emotion: "emotion", bad_emotion: "emotion",
                   bad_speed: "speed", bad_format: "format", bad_ssml: "text" };
let maxChars = 2000;
const status = (text, error) => { $("status").textContent = text; $("status").className = error ? "error" : ""; };
function clearErrors() {
  $("text-error").textContent = ""; $("field-error").textContent = "";
  for (const id of ["text", "voice", "emotion", "speed", "format"]) $(id).classList.remove("invalid");
}
function showError(code, message) {
  const field = FIELD_OF[code];
  if (field) $(field).classList.add("invalid");
  (field === "text" ? $("text-error") : $("field-error")).textContent = message;
  status("合成失败", true);
}
function count() {
  const n = $("text").value.length;
  $("text-count").textContent = `${n} / ${maxChars} 字`;
}
$("text").addEventListener("input", () => { count(); clearErrors(); });
// The text as the server says it, one span per timed character (or rewritten token: "12" said 十二).
let marks = [];
function showSpoken(body) {
  marks = [];
  const box = $("spoken");
  box.replaceChildren();
  if (!body.timestamps) {
    box.textContent = "";
    return body.timestamps_unavailable ? "（此引擎不提供逐字时间）" : "";
  }
  let at = 0;
  for (const t of body.timestamps) {
    if (t.offset > at) box.append(body.text.slice(at, t.offset));
    const span = document.createElement("span");
    span.textContent = t.text;
    box.append(span);
    marks.push({ start: t.start, end: t.end, span });
    at = t.offset + t.length;
  }
  box.append(body.text.slice(at));
  return "";
}
function highlight() {
  const now = $("player").currentTime;
  for (const m of marks) m.span.classList.toggle("speaking", m.start <= now && now < m.end);
}
function follow() { highlight(); if (!$("player").paused) requestAnimationFrame(follow); }
$("player").addEventListener("play", () => requestAnimationFrame(follow));
for (const e of ["timeupdate", "seeked", "pause", "ended"]) $("player").addEventListener(e, highlight);
$("speed").addEventListener("input", () => { $("speed-value").textContent = Number($("speed").value).toFixed(1); });
async function loadVoices() {
  let info;
  try {
    const resp = await fetch("/v1/voices");
    if (!resp.ok) throw new Error(resp.status);
    info = await resp.json();
  } catch (err) {
    status("服务尚未就绪，请稍候…", true); setTimeout(loadVoices, 2000); return;
  }
  $("voice").replaceChildren(
    ...info.voices.map((v) => new Option(v, v, v === info.default_voice, v === info.default_voice)));
  $("emotion").replaceChildren(...info.emotions.map(
    (e) => new Option(EMOTIONS[e] || e, e, e === "neutral", e === "neutral")));
  // Raw PCM has no header a browser can play.
  $("format").replaceChildren(...info.formats.filter((f) => f !== "pcm").map(
    (f) => new Option(FORMATS[f] || f, f, f === "wav", f === "wav")));
  const [low, high] = info.speed_range;
  $("speed").min = low; $("speed").max = high; $("speed").disabled = low === high;
  maxChars = info.max_chars;
  $("text").maxLength = maxChars;
  count();
  status(`引擎 ${info.engine} · ${info.sample_rate} Hz · 语速 ${low}–${high}`);
}
$("play").addEventListener("click", async () => {
  $("play").disabled = true;
  clearErrors();
  status("合成中…");
  try {
    const resp = await fetch("/v1/synthesize?return=json", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("text").value, voice: $("voice").value, emotion: $("emotion").value,
                             speed: Number($("speed").value), format: $("format").value,
                             ssml: $("ssml").checked, timestamps: true }),
    });
    const body = await resp.json();
    if (!resp.ok) { showError(body.error, body.message || "合成失败"); return; }
    const note = showSpoken(body);
    $("player").src = body.url;
    $("download").href = body.url; $("download").hidden = false;
    $("subtitles").href = `/v1/audio/${body.id}.vtt`; $("subtitles").hidden = false;
    status(`${body.duration_s.toFixed(2)} 秒 · ${body.format.toUpperCase()}${body.cached ? "（缓存）" : ""}${note}`);
    $("player").play().catch(() => {});
  } catch (err) {
    status("请求失败：" + err, true);
  } finally {
    $("play").disabled = false;
  }
});
count();
loadVoices();
</script>
</body>
</html>
"""
