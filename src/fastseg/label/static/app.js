/* fastseg label: the labeling page. Plain JavaScript, no build step, nothing fetched but this server's API.
 *
 * Coordinates: image pixels are integers (x, y), pixel (x, y) covering [x, x+1] x [y, y+1]; a click on
 * pixel (x, y) sends the point [x, y]. The view maps image to canvas (CSS pixels) as
 * cx = ox + x * scale, cy = oy + y * scale.
 *
 * Masks come as {"size": [H, W], "counts": [...]}: run lengths over the image in row-major order, the
 * first run counting zeros. They are decoded to their bounding box only, painted (fill + outline) on a
 * small offscreen canvas, and drawn scaled on the main canvas. When the image is shown smaller than
 * its pixels, masks are painted at a lower resolution (max pooling: thin parts stay visible), so a
 * 1080p mask costs a few milliseconds and its outline keeps a visible width on the screen.
 *
 * The mask of a click comes at the resolution it is shown at: the page asks for the best candidate
 * only, on a grid of about one cell per screen pixel ({"size": [h, w], "runs": base64 varints}, see
 * the server's mask_view), fetches the other candidates after the frame is drawn, and asks again
 * at a finer grid when the view is zoomed in past it. What is drawn is that approximation (a cell
 * is set if any image pixel under it is); what is accepted is the server's full-resolution mask.
 */
"use strict";

(() => {
  // ---------------------------------------------------------------------------------------------
  // Constants and state

  const PALETTE = [
    [255, 99, 99], [77, 171, 247], [81, 207, 102], [252, 196, 25], [204, 93, 232],
    [255, 146, 43], [34, 184, 207], [240, 101, 149], [148, 216, 45], [132, 94, 247],
  ];
  const WHITE = [255, 255, 255];
  const STAGE = "#101318"; // the stage's background (style.css --canvas)
  const DRAG_THRESHOLD = 4; // CSS pixels before a press becomes a box
  const QUIET_MS = 120; // the longest a click waits for its answer before the point is drawn alone
  const MAX_SCALE = 40;
  const MIN_SCALE = 0.02;
  const IMAGE_CACHE = 6;
  const VIEW_STEPS = 32; // a click's mask grid is asked for at a scale rounded up to 1/32

  const $ = (id) => document.getElementById(id);
  const el = {
    canvas: $("canvas"), imageLayer: $("image-layer"), stage: $("stage"), labels: $("labels"), modelName: $("model-name"),
    modelWeights: $("model-weights"), model: $("model"), imageList: $("image-list"), countDone: $("count-done"),
    countTotal: $("count-total"), progress: $("progress-bar"), instanceList: $("instance-list"),
    instanceCount: $("instance-count"), noInstances: $("no-instances"), refineNote: $("refine-note"),
    candidates: $("candidates"), proposalsBar: $("proposals-bar"), proposalsText: $("proposals-text"),
    busy: $("busy"), busyText: $("busy-text"), toasts: $("toasts"), zoom: $("zoom"), imageTitle: $("image-title"),
    empty: $("empty"), exportMenu: $("export-menu"),
    btn: {
      everything: $("btn-everything"), accept: $("btn-accept"), clear: $("btn-clear"), undo: $("btn-undo"),
      prev: $("btn-prev"), next: $("btn-next"), done: $("btn-done"), export: $("btn-export"),
      acceptAll: $("btn-accept-all"), dismiss: $("btn-dismiss"),
      toolPrompt: $("tool-prompt"), toolHand: $("tool-hand"), toolFit: $("tool-fit"),
    },
  };
  const ctx = el.canvas.getContext("2d");
  const imageCtx = el.imageLayer.getContext("2d", { alpha: false });

  const S = {
    labels: [],
    model: {},
    images: [],
    index: -1,
    openSeq: 0,
    img: null, // HTMLImageElement of the current image
    width: 0,
    height: 0,
    label: 0, // index into labels for new instances
    steps: [], // prompt steps: {id, kind: "point"|"box", x, y, label | box, result, pending}
    stepSeq: 0,
    candidate: 0, // shown candidate of the current result
    refine: null, // {inst, base: {points, labels, box}, promptId, candidate} while refining an instance
    instances: [],
    selected: null, // instance id
    hover: null, // instance id hovered in the list
    proposals: null, // [{rle, box, score, area, mask, color}]
    hoverProposal: null,
    undo: new Map(), // image index -> stack of instance actions
    tool: "prompt",
    space: false,
    view: { scale: 1, ox: 0, oy: 0 },
    res: 1, // overlays are painted at this fraction of the image resolution (1, 1/2, 1/4...: follows the zoom)
    outline: 1, // outline thickness in painted pixels
    press: null, // pointer press on the canvas
    pan: null,
    pointer: null, // last pointer position on the canvas (client)
    cw: 0,
    ch: 0,
    pending: 0,
    ready: false,
    loading: false,
    accepting: false,
    settled: false, // the view has rested since the last pan or zoom step
  };

  const imageCache = new Map(); // index -> Promise<HTMLImageElement>

  window.fastsegTimings = [];

  /** Keep a timing in window.fastsegTimings and announce it (a "fastseg:timing" event on window, so a
   * test or a benchmark can wait for it without polling the page). */
  function recordTiming(entry) {
    window.fastsegTimings.push(entry);
    window.dispatchEvent(new CustomEvent("fastseg:timing", { detail: entry }));
  }

  // ---------------------------------------------------------------------------------------------
  // Server

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body, meta) {
    const options = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    S.pending += 1;
    document.body.dataset.pending = String(S.pending);
    try {
      let response;
      try {
        response = await fetch(path, options);
      } catch (err) {
        throw new ApiError(`${method} ${path}: no answer from the server (${err.message}). Is fastseg label still running?`, 0);
      }
      const text = await response.text();
      if (meta) meta.bytes = text.length;
      let data = null;
      if (text) {
        try {
          data = JSON.parse(text);
        } catch (err) {
          data = null;
        }
      }
      if (!response.ok) {
        const message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
        throw new ApiError(message, response.status);
      }
      if (data && typeof data === "object" && !Array.isArray(data) && typeof data.error === "string") {
        throw new ApiError(data.error, response.status);
      }
      return data;
    } finally {
      S.pending -= 1;
      document.body.dataset.pending = String(S.pending);
    }
  }

  function fail(err) {
    const message = err instanceof ApiError ? err.message : `Unexpected error: ${err && err.message ? err.message : err}`;
    toast(message, "error");
    if (!(err instanceof ApiError)) console.error(err);
  }

  // ---------------------------------------------------------------------------------------------
  // Toasts

  function toast(message, kind = "info", options = {}) {
    const node = document.createElement("div");
    node.className = `toast ${kind}`;
    node.setAttribute("role", kind === "error" ? "alert" : "status");
    const msg = document.createElement("div");
    msg.className = "msg";
    msg.textContent = message;
    if (options.link) {
      msg.append(" ");
      const a = document.createElement("a");
      a.href = options.link.href;
      a.textContent = options.link.text;
      a.setAttribute("download", "");
      msg.append(a);
    }
    const close = document.createElement("button");
    close.className = "close";
    close.setAttribute("aria-label", "Close");
    close.textContent = "\u00d7";
    close.addEventListener("click", () => node.remove());
    node.append(msg, close);
    el.toasts.append(node);
    while (el.toasts.children.length > 5) el.toasts.firstElementChild.remove();
    const ms = options.ms || (kind === "error" ? 9000 : 3500);
    setTimeout(() => node.remove(), ms);
    return node;
  }

  // ---------------------------------------------------------------------------------------------
  // Masks: decode, paint, hit-test

  /** Decode a mask RLE into its bounding box: {x, y, w, h, data: Uint8Array(w*h), area, H, W, sx, sy},
   * sx and sy the image pixels per mask pixel (1: a full-resolution mask). */
  function decodeMask(rle) {
    if (!rle || !Array.isArray(rle.size) || rle.size.length !== 2) {
      throw new ApiError(`a mask must be {"size": [H, W], "counts": [...]}, got ${JSON.stringify(rle).slice(0, 80)}`);
    }
    if (!Array.isArray(rle.counts)) throw new ApiError("a mask's counts must be a list of row-major run lengths");
    return decodeRuns(rle.counts, rle.size[0], rle.size[1]);
  }

  /** A click's mask as sent for display ({"size": [h, w], "image": [H, W], "runs": base64 varints}), on
   * its grid; `q` is the scale it was asked for. */
  function decodeView(view, q) {
    if (!view || !Array.isArray(view.size) || typeof view.runs !== "string") {
      throw new ApiError(`a mask view must be {"size": [h, w], "runs": "..."}, got ${JSON.stringify(view).slice(0, 80)}`);
    }
    const [h, w] = view.size;
    const [H, W] = Array.isArray(view.image) ? view.image : [S.height, S.width];
    const mask = decodeRuns(varints(base64Bytes(view.runs)), h, w);
    mask.sx = W / w;
    mask.sy = H / h;
    mask.q = q;
    return mask;
  }

  function base64Bytes(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  /** Unsigned LEB128 varints (7 bits a byte, low bits first, high bit: more bytes follow). */
  function varints(bytes) {
    const out = new Float64Array(bytes.length);
    let n = 0, value = 0, shift = 1;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      value += (b & 127) * shift;
      if (b & 128) {
        shift *= 128;
      } else {
        out[n++] = value;
        value = 0;
        shift = 1;
      }
    }
    if (shift !== 1) throw new ApiError("a mask's run lengths end inside a number");
    return out.subarray(0, n);
  }

  /** Row-major run lengths (zeros first) of an H x W mask, decoded into their bounding box. */
  function decodeRuns(counts, H, W) {
    // pass 1: bounding box and area
    let pos = 0;
    let minX = W, minY = H, maxX = -1, maxY = -1, area = 0;
    for (let i = 0; i < counts.length; i++) {
      const n = counts[i];
      if ((i & 1) === 1 && n > 0) {
        const end = pos + n - 1;
        const y0 = (pos / W) | 0;
        const y1 = (end / W) | 0;
        if (y0 < minY) minY = y0;
        if (y1 > maxY) maxY = y1;
        if (y0 === y1) {
          const x0 = pos - y0 * W;
          const x1 = end - y1 * W;
          if (x0 < minX) minX = x0;
          if (x1 > maxX) maxX = x1;
        } else {
          minX = 0;
          maxX = W - 1;
        }
        area += n;
      }
      pos += n;
    }
    if (pos !== H * W) {
      throw new ApiError(`a mask's run lengths add up to ${pos}, not H * W = ${H * W}`);
    }
    if (area === 0) return { x: 0, y: 0, w: 0, h: 0, data: new Uint8Array(0), area: 0, H, W, sx: 1, sy: 1 };
    const w = maxX - minX + 1;
    const h = maxY - minY + 1;
    const data = new Uint8Array(w * h);
    // pass 2: fill the runs of ones, row by row
    pos = 0;
    for (let i = 0; i < counts.length; i++) {
      const n = counts[i];
      if ((i & 1) === 1 && n > 0) {
        let start = pos;
        const stop = pos + n; // exclusive
        while (start < stop) {
          const y = (start / W) | 0;
          const x = start - y * W;
          const rowEnd = Math.min(stop, (y + 1) * W);
          const base = (y - minY) * w - minX;
          data.fill(1, base + x, base + x + (rowEnd - start));
          start = rowEnd;
        }
      }
      pos += n;
    }
    return { x: minX, y: minY, w, h, data, area, H, W, sx: 1, sy: 1 };
  }

  const littleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  function pack(rgb, alpha) {
    const a = Math.round(alpha * 255);
    return littleEndian
      ? ((a << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0
      : ((rgb[0] << 24) | (rgb[1] << 16) | (rgb[2] << 8) | a) >>> 0;
  }

  /** The RGBA pixels (as uint32) of a decoded mask: `fill` inside, `edge` on the outline, the mask
   * pixels with a pixel outside the mask within `t` pixels left, right, above or below. `px` starts
   * zeroed (transparent) and keeps zeros outside the mask. */
  function maskPixels(mask, fill, edge, t, px) {
    const d = mask.data;
    const w = mask.w;
    const h = mask.h;
    for (let y = 0; y < h; y++) {
      const row = y * w;
      const rows = y >= t && y + t < h; // the t rows above and below are inside the box
      let x = 0;
      while (x < w) {
        // the next run of ones in this row (short runs are common: plain loops, no fill() calls)
        while (x < w && d[row + x] === 0) x++;
        if (x >= w) break;
        const start = x;
        while (x < w && d[row + x] !== 0) x++;
        const stop = x; // exclusive
        // horizontal edges: the first and last t pixels of the run
        const left = Math.min(stop, start + t);
        const right = Math.max(left, stop - t);
        for (let j = row + start; j < row + left; j++) px[j] = edge;
        for (let j = row + right; j < row + stop; j++) px[j] = edge;
        // vertical edges: a zero within t rows above or below
        for (let i = row + left; i < row + right; i++) {
          let inside = rows;
          for (let k = 1; inside && k <= t; k++) inside = d[i - k * w] !== 0 && d[i + k * w] !== 0;
          px[i] = inside ? fill : edge;
        }
      }
    }
    return px;
  }

  /** Canvases of prompt results that are gone, painted again for the next ones: a click then
   * allocates no canvas (a 1080p mask's is megabytes, and their garbage made clicks stutter). */
  const canvasPool = [];
  function recycleCanvas(canvas) {
    if (canvas && canvasPool.length < 8 && !canvasPool.includes(canvas)) canvasPool.push(canvas);
  }
  function recycle(result) {
    if (!result || !result.canvases) return;
    result.canvases.forEach(recycleCanvas);
    result.canvases.fill(null);
  }

  /** A zeroed ImageData of w x h, on a buffer kept between calls (it is consumed by putImageData at
   * once, so painting a mask allocates nothing when the buffer is large enough). */
  let scratch = new ArrayBuffer(0);
  function scratchImage(w, h) {
    const n = 4 * w * h;
    if (scratch.byteLength < n) scratch = new ArrayBuffer(Math.max(n, Math.ceil(scratch.byteLength * 1.5)));
    const bytes = new Uint8ClampedArray(scratch, 0, n);
    new Uint32Array(scratch, 0, w * h).fill(0);
    return new ImageData(bytes, w, h);
  }

  /** A decoded mask shrunk by the integer factor k (a painted pixel is set if any of its k x k is). */
  function poolMask(mask, k) {
    if (k === 1) return mask;
    const { w, h, data } = mask;
    const pw = Math.ceil(w / k);
    const ph = Math.ceil(h / k);
    const out = new Uint8Array(pw * ph);
    const row = new Uint8Array(w);
    for (let v = 0; v < ph; v++) {
      row.fill(0);
      const y1 = Math.min(h, (v + 1) * k);
      for (let y = v * k; y < y1; y++) {
        const base = y * w;
        for (let x = 0; x < w; x++) row[x] |= data[base + x];
      }
      const o = v * pw;
      for (let x = 0; x < w; x++) if (row[x]) out[o + ((x / k) | 0)] = 1;
    }
    return { x: mask.x, y: mask.y, w: pw, h: ph, data: out, area: mask.area, sx: mask.sx, sy: mask.sy };
  }

  /** Paint a decoded mask on an offscreen canvas of its box, at the current paint resolution (a
   * full-resolution mask) or on its own grid (a click's mask view): translucent fill, opaque outline of
   * `t` painted pixels. `canvas.k` is the mask pixels per painted pixel. */
  function paintMask(mask, fillRgb, fillAlpha, edgeRgb, edgeAlpha, t) {
    const k = mask.sx === 1 && mask.sy === 1 ? Math.round(1 / S.res) : 1;
    const small = mask.area === 0 ? mask : poolMask(mask, k);
    const canvas = canvasPool.pop() || document.createElement("canvas");
    // a recycled canvas keeps its size if it fits (putImageData below replaces every pixel)
    if (canvas.width !== Math.max(1, small.w)) canvas.width = Math.max(1, small.w);
    if (canvas.height !== Math.max(1, small.h)) canvas.height = Math.max(1, small.h);
    canvas.k = k;
    if (mask.area === 0) return canvas;
    const c = canvas.getContext("2d");
    const image = scratchImage(small.w, small.h);
    maskPixels(small, pack(fillRgb, fillAlpha), pack(edgeRgb, edgeAlpha), t, new Uint32Array(scratch, 0, small.w * small.h));
    c.putImageData(image, 0, 0);
    return canvas;
  }

  /** Draw a painted mask in image coordinates (the context's transform maps image to screen). */
  function drawMask(canvas, mask) {
    const kx = canvas.k * mask.sx;
    const ky = canvas.k * mask.sy;
    ctx.drawImage(canvas, mask.x * mask.sx, mask.y * mask.sy, canvas.width * kx, canvas.height * ky);
  }

  /** The outline width, in mask pixels, of a click's mask view at the current zoom. */
  function viewOutline(mask) {
    return S.view.scale * (window.devicePixelRatio || 1) * mask.sx < 0.8 ? 2 : 1;
  }

  /** The scale a click's mask is asked for at: screen pixels per image pixel, rounded up, at most 1. */
  function viewScale() {
    const s = S.view.scale * (window.devicePixelRatio || 1);
    return Math.min(1, Math.ceil(s * VIEW_STEPS - 1e-6) / VIEW_STEPS);
  }

  function maskContains(mask, x, y) {
    if (!mask || mask.area === 0) return false;
    const lx = x - mask.x;
    const ly = y - mask.y;
    if (lx < 0 || ly < 0 || lx >= mask.w || ly >= mask.h) return false;
    return mask.data[ly * mask.w + lx] === 1;
  }

  // ---------------------------------------------------------------------------------------------
  // Labels and colours

  function labelColor(label) {
    const i = S.labels.indexOf(label);
    if (i >= 0) return PALETTE[i % PALETTE.length];
    let hash = 0;
    for (const ch of String(label)) hash = (hash * 31 + ch.charCodeAt(0)) | 0;
    return PALETTE[Math.abs(hash) % PALETTE.length];
  }
  const css = (rgb, a = 1) => `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${a})`;
  const currentLabel = () => S.labels[S.label];

  function renderLabels() {
    el.labels.textContent = "";
    S.labels.forEach((label, i) => {
      const chip = document.createElement("button");
      chip.className = "label-chip" + (i === S.label ? " active" : "");
      chip.style.setProperty("--c", css(labelColor(label)));
      chip.setAttribute("role", "radio");
      chip.setAttribute("aria-checked", i === S.label ? "true" : "false");
      chip.dataset.label = label;
      chip.title = i < 9 ? `${label} (${i + 1})` : label;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      const name = document.createElement("span");
      name.textContent = label;
      chip.append(swatch, name);
      if (i < 9) {
        const key = document.createElement("span");
        key.className = "key";
        key.textContent = String(i + 1);
        chip.append(key);
      }
      chip.addEventListener("click", () => {
        chip.blur();
        pickLabel(i);
      });
      el.labels.append(chip);
    });
  }

  function pickLabel(i) {
    if (i < 0 || i >= S.labels.length) return;
    S.label = i;
    renderLabels();
    if (S.result) repaintResult();
    renderNow();
  }

  // ---------------------------------------------------------------------------------------------
  // Sidebar: images and counter

  const STATE_TEXT = { new: "not started", in_progress: "in progress", done: "done" };

  function renderImageList() {
    el.imageList.textContent = "";
    S.images.forEach((image, i) => {
      const li = document.createElement("li");
      li.dataset.index = String(i);
      li.addEventListener("click", () => {
        if (i !== S.index || S.loading) openImage(i);
      });
      el.imageList.append(li);
      updateImageRow(i);
    });
    updateCounter();
  }

  function updateImageRow(i) {
    const li = el.imageList.children[i];
    const image = S.images[i];
    if (!li || !image) return;
    li.className = i === S.index ? "current" : "";
    li.dataset.state = image.state;
    li.title = image.error ? `${image.file}: ${image.error}` : image.file;
    li.textContent = "";
    const file = document.createElement("span");
    file.className = "file";
    file.textContent = image.file;
    const n = document.createElement("span");
    n.className = "n";
    n.textContent = image.instances ? String(image.instances) : "";
    n.title = `${image.instances || 0} instance${image.instances === 1 ? "" : "s"}`;
    const state = document.createElement("span");
    state.className = `state ${image.error ? "error" : image.state}`;
    const dot = document.createElement("span");
    dot.className = "dot";
    const text = document.createElement("span");
    text.className = "state-text";
    text.textContent = image.error ? "cannot be read" : STATE_TEXT[image.state] || image.state;
    state.append(dot, text);
    li.append(file, n, state);
  }

  function updateCounter() {
    const done = S.images.filter((im) => im.state === "done").length;
    el.countDone.textContent = String(done);
    el.countTotal.textContent = String(S.images.length);
    el.progress.style.width = S.images.length ? `${(100 * done) / S.images.length}%` : "0";
    document.title = S.images.length ? `${done}/${S.images.length} done \u00b7 fastseg label` : "fastseg label";
  }

  function setLocalState(i, state) {
    if (!S.images[i]) return;
    S.images[i].state = state;
    updateImageRow(i);
    updateCounter();
    if (i === S.index) updateButtons();
  }

  function syncCurrentRow() {
    const image = S.images[S.index];
    if (!image) return;
    image.instances = S.instances.length;
    if (image.state === "new" && S.instances.length > 0) image.state = "in_progress";
    updateImageRow(S.index);
    updateCounter();
  }

  // ---------------------------------------------------------------------------------------------
  // Opening images

  function loadImage(index) {
    if (imageCache.has(index)) {
      const hit = imageCache.get(index);
      imageCache.delete(index); // most recently used last
      imageCache.set(index, hit);
      return hit;
    }
    const promise = new Promise((resolve, reject) => {
      const img = new Image();
      img.decoding = "async";
      img.onload = () => {
        img.decode().then(() => resolve(img), () => resolve(img));
      };
      img.onerror = () => reject(new ApiError(`could not load image ${index} (${S.images[index] ? S.images[index].file : "?"}) from the server`));
      img.src = `/api/image/${index}`;
    });
    promise.catch(() => imageCache.delete(index));
    imageCache.set(index, promise);
    while (imageCache.size > IMAGE_CACHE) imageCache.delete(imageCache.keys().next().value);
    return promise;
  }

  async function openImage(index, startTime) {
    if (index < 0 || index >= S.images.length) return;
    const t0 = startTime === undefined ? performance.now() : startTime;
    const seq = ++S.openSeq;
    const previous = S.index;
    S.index = index;
    S.loading = true;
    clearPrompt();
    S.instances = [];
    S.selected = null;
    S.hover = null;
    S.proposals = null;
    S.hoverProposal = null;
    if (previous >= 0) updateImageRow(previous);
    updateImageRow(index);
    scrollIntoViewIfNeeded(el.imageList.children[index]);
    const slow = setTimeout(() => seq === S.openSeq && showBusy("Encoding image\u2026"), 250);
    try {
      const [img, opened, instances] = await Promise.all([
        loadImage(index),
        api("POST", `/api/images/${index}/open`),
        api("GET", `/api/images/${index}/instances`),
      ]);
      if (seq !== S.openSeq) return;
      S.loading = false;
      S.img = img;
      S.width = opened && opened.width ? opened.width : img.naturalWidth;
      S.height = opened && opened.height ? opened.height : img.naturalHeight;
      if (img.naturalWidth !== S.width || img.naturalHeight !== S.height) {
        toast(`The image shown is ${img.naturalWidth}\u00d7${img.naturalHeight} but the model sees ${S.width}\u00d7${S.height}`, "error");
      }
      S.instances = (Array.isArray(instances) ? instances : instances.instances || []).map(prepareInstance);
      fitView();
      renderInstances();
      syncCurrentRow();
      updateTitle();
      updateButtons();
      renderNow();
      afterPaint(() => {
        if (seq === S.openSeq) recordTiming({ kind: "open", ms: performance.now() - t0, index });
      });
      // the server encodes the next images; the page fetches their pixels
      for (const next of [index + 1, index + 2]) if (next < S.images.length) loadImage(next).catch(() => {});
    } catch (err) {
      if (seq === S.openSeq) {
        S.loading = false;
        S.img = null; // nothing to label on: what is shown must be the image the server answers about
        updateTitle();
        updateButtons();
        renderNow();
        fail(err);
      }
    } finally {
      clearTimeout(slow);
      if (seq === S.openSeq) hideBusy();
    }
  }

  function updateTitle() {
    const image = S.images[S.index];
    if (!image) {
      el.imageTitle.hidden = true;
      return;
    }
    el.imageTitle.hidden = false;
    el.imageTitle.textContent = "";
    const b = document.createElement("b");
    b.textContent = image.file;
    el.imageTitle.append(b, `  \u00b7  ${S.width} \u00d7 ${S.height}  \u00b7  ${S.index + 1} / ${S.images.length}`);
  }

  function scrollIntoViewIfNeeded(node) {
    if (!node) return;
    const box = node.getBoundingClientRect();
    const list = el.imageList.getBoundingClientRect();
    if (box.top < list.top || box.bottom > list.bottom) node.scrollIntoView({ block: "nearest" });
  }

  function move(delta, startTime) {
    if (!S.images.length) return;
    const target = Math.min(S.images.length - 1, Math.max(0, (S.index < 0 ? 0 : S.index) + delta));
    if (target !== S.index) openImage(target, startTime);
  }

  // ---------------------------------------------------------------------------------------------
  // Instances

  function prepareInstance(raw) {
    const inst = Object.assign({}, raw);
    inst.mask = decodeMask(raw.rle);
    inst.canvas = null;
    inst.paintKey = "";
    return inst;
  }

  function instanceCanvas(inst, highlight) {
    const color = labelColor(inst.label);
    const key = `${color.join(",")}|${S.res}|${S.outline}|${highlight ? 1 : 0}`;
    if (inst.paintKey !== key) {
      inst.canvas = highlight
        ? paintMask(inst.mask, color, 0.5, WHITE, 1, S.outline + 1)
        : paintMask(inst.mask, color, 0.33, color, 1, S.outline);
      inst.paintKey = key;
    }
    return inst.canvas;
  }

  function findInstance(id) {
    return S.instances.find((inst) => inst.id === id) || null;
  }

  function undoStack() {
    if (!S.undo.has(S.index)) S.undo.set(S.index, []);
    return S.undo.get(S.index);
  }

  function renderInstances() {
    el.instanceList.textContent = "";
    S.hover = null; // the rows are new: none is under the pointer until it moves
    S.instances.forEach((inst, n) => {
      const li = document.createElement("li");
      li.dataset.id = String(inst.id);
      li.style.setProperty("--c", css(labelColor(inst.label)));
      if (inst.id === S.selected) li.classList.add("selected");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.title = `#${n + 1}`;
      const select = document.createElement("select");
      select.setAttribute("aria-label", `Label of instance ${n + 1}`);
      const options = S.labels.includes(inst.label) ? S.labels : S.labels.concat([inst.label]);
      options.forEach((label, i) => {
        const option = document.createElement("option");
        option.value = label;
        option.textContent = label;
        option.selected = label === inst.label;
        select.append(option);
      });
      select.addEventListener("click", (e) => e.stopPropagation());
      select.addEventListener("change", () => {
        relabel(inst.id, select.value);
        select.blur();
      });
      const meta = document.createElement("span");
      meta.className = "meta";
      const score = inst.score === null || inst.score === undefined ? "\u2013" : Number(inst.score).toFixed(2);
      meta.innerHTML = "";
      meta.append(`score ${score}`, document.createElement("br"), `${formatInt(inst.area)} px`);
      const del = document.createElement("button");
      del.className = "del";
      del.title = "Delete (Del)";
      del.setAttribute("aria-label", `Delete instance ${n + 1}`);
      del.textContent = "\u00d7";
      del.addEventListener("click", (e) => {
        e.stopPropagation();
        deleteInstance(inst.id);
      });
      li.append(swatch, select, meta, del);
      li.addEventListener("click", () => selectInstance(inst.id === S.selected ? null : inst.id));
      li.addEventListener("mouseenter", () => {
        S.hover = inst.id;
        scheduleRender();
      });
      li.addEventListener("mouseleave", () => {
        if (S.hover === inst.id) S.hover = null;
        scheduleRender();
      });
      el.instanceList.append(li);
    });
    el.instanceCount.textContent = String(S.instances.length);
    el.noInstances.hidden = S.instances.length > 0;
    updateNote();
  }

  function formatInt(n) {
    return Number(n || 0).toLocaleString("en-US");
  }

  function selectInstance(id) {
    // a prompt in progress belongs to what was selected before
    if ((S.steps.length || S.refine) && !(S.refine && S.refine.inst.id === id)) clearPrompt();
    S.selected = id;
    renderInstances();
    updateButtons();
    renderNow();
    const node = id === null ? null : el.instanceList.querySelector(`li[data-id="${id}"]`);
    if (node) node.scrollIntoView({ block: "nearest" });
  }

  function updateNote() {
    const inst = S.selected === null ? null : findInstance(S.selected);
    if (!inst) {
      el.refineNote.hidden = true;
      return;
    }
    const n = S.instances.indexOf(inst) + 1;
    el.refineNote.hidden = false;
    el.refineNote.textContent = S.refine
      ? `Refining #${n} (${inst.label}): click to add points, Enter replaces it, Esc cancels.`
      : `#${n} (${inst.label}) selected: click on the image to refine it, 1\u20139 relabels, Del deletes, Esc deselects.`;
  }

  async function acceptPrompt() {
    if (S.accepting) return; // one accept at a time: a second Enter must not store the mask twice
    S.accepting = true;
    try {
      await acceptShown();
    } finally {
      S.accepting = false;
    }
  }

  async function acceptShown() {
    if (S.proposals && !S.steps.length) return;
    let step = lastStep();
    if (!step) return;
    if (!step.result && step.pending) await step.pending;
    step = lastStep();
    if (!step || !step.result) return;
    const result = step.result;
    if (!result.candidates.length || result.candidates[S.candidate].area === 0) {
      toast("The mask is empty: there is nothing to accept. Add a point or a box.", "info");
      return;
    }
    const index = S.index;
    const candidate = S.candidate;
    const refining = S.refine;
    const prompt = currentPrompt();
    const label = refining ? refining.inst.label : currentLabel();
    const stack = undoStack();
    try {
      const created = await api("POST", `/api/images/${index}/instances`, {
        label, prompt_id: result.prompt_id, candidate,
      });
      if (index !== S.index) return;
      const inst = prepareInstance(created);
      inst.promptId = result.prompt_id;
      inst.candidate = candidate;
      inst.prompt = prompt;
      S.instances.push(inst);
      S.selected = null;
      clearPrompt();
      if (refining) {
        // the refined mask replaces the instance
        try {
          await api("DELETE", `/api/instances/${refining.inst.id}`);
          S.instances = S.instances.filter((other) => other.id !== refining.inst.id);
          stack.push({ type: "refine", newId: inst.id, old: refining.inst });
        } catch (err) {
          stack.push({ type: "accept", ids: [inst.id] });
          throw err;
        }
      } else {
        stack.push({ type: "accept", ids: [inst.id] });
      }
    } catch (err) {
      fail(err);
    } finally {
      if (index === S.index) {
        renderInstances();
        syncCurrentRow();
        updateButtons();
        renderNow();
      }
    }
  }

  async function relabel(id, label) {
    const inst = findInstance(id);
    if (!inst || inst.label === label) return;
    const from = inst.label;
    try {
      const updated = await api("PATCH", `/api/instances/${id}`, { label });
      inst.label = updated && updated.label ? updated.label : label;
      inst.paintKey = "";
      undoStack().push({ type: "relabel", id, from });
    } catch (err) {
      fail(err);
    }
    renderInstances();
    renderNow();
  }

  async function deleteInstance(id) {
    const inst = findInstance(id);
    if (!inst) return;
    try {
      await api("DELETE", `/api/instances/${id}`);
      S.instances = S.instances.filter((other) => other.id !== id);
      if (S.selected === id) S.selected = null;
      if (S.refine && S.refine.inst.id === id) clearPrompt();
      undoStack().push({ type: "delete", inst });
      renderInstances();
      syncCurrentRow();
      updateButtons();
      renderNow();
    } catch (err) {
      fail(err);
    }
  }

  async function restoreInstance(inst) {
    const restored = await api("POST", `/api/instances/${inst.id}/restore`);
    const fresh = restored && restored.rle ? prepareInstance(restored) : inst;
    fresh.promptId = inst.promptId;
    fresh.candidate = inst.candidate;
    fresh.prompt = inst.prompt;
    S.instances.push(fresh);
    S.instances.sort((a, b) => a.id - b.id);
  }

  async function undo() {
    if (S.steps.length) {
      popStep();
      return;
    }
    const stack = undoStack();
    const action = stack.pop();
    if (!action) {
      toast("Nothing to undo", "info", { ms: 1500 });
      return;
    }
    try {
      if (action.type === "accept") {
        for (const id of action.ids.slice().reverse()) {
          await api("DELETE", `/api/instances/${id}`);
          S.instances = S.instances.filter((inst) => inst.id !== id);
          if (S.selected === id) S.selected = null;
        }
        if (action.proposals && S.proposals) S.proposals.push(...action.proposals);
        else if (action.proposals) S.proposals = action.proposals.slice();
        if (S.proposals) sortProposals();
      } else if (action.type === "delete") {
        await restoreInstance(action.inst);
      } else if (action.type === "relabel") {
        const inst = findInstance(action.id);
        await api("PATCH", `/api/instances/${action.id}`, { label: action.from });
        if (inst) {
          inst.label = action.from;
          inst.paintKey = "";
        }
      } else if (action.type === "refine") {
        await api("DELETE", `/api/instances/${action.newId}`);
        S.instances = S.instances.filter((inst) => inst.id !== action.newId);
        await restoreInstance(action.old);
      }
    } catch (err) {
      fail(err);
    }
    renderInstances();
    syncCurrentRow();
    updateProposalsBar();
    updateButtons();
    renderNow();
  }

  // ---------------------------------------------------------------------------------------------
  // Prompts and predictions

  function lastStep() {
    return S.steps.length ? S.steps[S.steps.length - 1] : null;
  }

  /** The prompt as sent: the refined instance's own prompt, then the steps. */
  function currentPrompt() {
    const base = S.refine ? S.refine.base : null;
    const points = base ? base.points.slice() : [];
    const labels = base ? base.labels.slice() : [];
    let box = base ? base.box : null;
    for (const step of S.steps) {
      if (step.kind === "point") {
        points.push([step.x, step.y]);
        labels.push(step.label);
      } else {
        box = step.box;
      }
    }
    return { points, labels, box };
  }

  /** The result to show: the newest step's, or while it is on its way the one before. */
  function shownResult() {
    for (let i = S.steps.length - 1; i >= 0; i--) if (S.steps[i].result) return S.steps[i].result;
    return null;
  }

  Object.defineProperty(S, "result", { get: shownResult });

  function addStep(step, clickTime) {
    if (S.index < 0 || !S.img || S.loading) return;
    if (S.proposals) return;
    if (S.selected !== null && !S.refine) startRefine(findInstance(S.selected));
    step.id = ++S.stepSeq;
    step.result = null;
    S.steps.push(step);
    predict(step, clickTime);
    // Nothing is drawn while the answer is on its way (up to QUIET_MS): the point appears with its mask.
    // Where the browser and the server share a few cores, a frame drawn now (the point, the buttons:
    // software raster and compositing) took cores from the decoder and made the answer ~17 ms slower
    // (mobile_sam on 2 cores, benchmarks/label_latency.py). A late answer gets the point drawn at QUIET_MS.
    step.quiet = setTimeout(() => {
      step.quiet = 0;
      if (!step.result && S.steps.includes(step)) {
        updateButtons();
        renderNow();
      }
    }, QUIET_MS);
  }

  function startRefine(inst) {
    if (!inst) return;
    const prompts = inst.prompt || null;
    const base = { points: [], labels: [], box: null };
    if (prompts && Array.isArray(prompts.points)) {
      base.points = prompts.points.map((p) => [p[0], p[1]]);
      base.labels = Array.isArray(prompts.labels) ? prompts.labels.slice() : base.points.map(() => 1);
      base.box = Array.isArray(prompts.box) ? prompts.box.slice() : null;
    }
    const promptId = inst.promptId || null;
    const candidate = inst.candidate !== undefined ? inst.candidate : 0;
    S.refine = { inst, base, promptId, candidate };
    updateNote();
  }

  function popStep() {
    const step = S.steps.pop();
    if (!step) return;
    recycle(step.result);
    const result = shownResult();
    S.candidate = result ? Math.max(0, Math.min(result.cand, result.candidates.length - 1)) : 0;
    if (!S.steps.length && S.refine && S.selected === null) S.refine = null;
    if (result) repaintResult();
    renderCandidates();
    updateButtons();
    updateNote();
    renderNow();
  }

  function clearPrompt() {
    for (const step of S.steps) recycle(step.result);
    S.steps = [];
    S.candidate = 0;
    S.refine = null;
    S.press = null;
    renderCandidates();
    updateButtons();
    updateNote();
  }

  function predictBody(step) {
    const prompt = currentPrompt();
    const index = S.steps.indexOf(step);
    const prior = index > 0 ? S.steps[index - 1].result : null;
    const body = {
      index: S.index,
      points: prompt.points,
      labels: prompt.labels,
      box: prompt.box,
      mask_input: null,
      multimask: !S.refine && prompt.points.length + (prompt.box ? 1 : 0) === 1 && !prompt.box,
      view: { scale: viewScale(), candidates: "best" },
    };
    if (S.refine) {
      // refine: the previous low-res logits (the instance's, then this refinement's) as mask input
      const promptId = prior ? prior.prompt_id : S.refine.promptId;
      const candidate = prior ? prior.cand : S.refine.candidate;
      if (promptId) {
        body.mask_input = "previous";
        body.previous = promptId;
        body.candidate = candidate;
      }
    }
    return body;
  }

  async function askServer(body, meta) {
    try {
      return await api("POST", "/api/predict", body, meta);
    } catch (err) {
      // the server keeps the logits of its latest predictions only: refine an older mask without them
      if (err instanceof ApiError && err.status === 404 && body.mask_input === "previous") {
        const retry = Object.assign({}, body, { mask_input: null });
        delete retry.previous;
        delete retry.candidate;
        return api("POST", "/api/predict", retry, meta);
      }
      throw err;
    }
  }

  function predict(step, clickTime) {
    const body = predictBody(step);
    const index = S.index;
    step.pending = (async () => {
      try {
        const sent = performance.now();
        const meta = {};
        const res = await askServer(body, meta);
        const answered = performance.now();
        if (index !== S.index || !S.steps.includes(step)) return;
        if (!res || !Array.isArray(res.candidates)) throw new ApiError("the server's answer to the prompt has no candidates");
        const best = Number.isInteger(res.best) ? res.best : 0;
        if (!res.candidates.length || res.candidates[best].area === 0) {
          toast("No mask for these prompts: try another point or a box.", "info");
        }
        const n = res.candidates.length;
        step.result = {
          prompt_id: res.prompt_id,
          index,
          candidates: res.candidates,
          masks: new Array(n).fill(null),
          canvases: new Array(n).fill(null),
          keys: new Array(n).fill(""),
          fetching: new Array(n).fill(0),
          best,
          cand: best,
          ms: res.ms,
        };
        // the masks sent with the answer (the best one), on the grid asked for
        res.candidates.forEach((c, i) => {
          if (c.view) step.result.masks[i] = decodeView(c.view, body.view.scale);
          delete c.view;
        });
        if (lastStep() !== step) return; // a newer click is on its way
        clearTimeout(step.quiet);
        const unpacked = performance.now();
        S.candidate = best;
        repaintResult();
        const decoded = performance.now();
        renderCandidates();
        updateButtons();
        renderNow();
        const drawn = performance.now();
        afterPaint(() => {
          if (clickTime !== undefined) {
            recordTiming({
              kind: "click",
              ms: performance.now() - clickTime, // from the click to the frame with the mask painted
              server_ms: res.ms, // the server's own time for the request
              predict_ms: res.predict_ms, // of which Predictor.predict
              request_ms: answered - sent, // the request as the page saw it (server + HTTP + JSON)
              decode_ms: unpacked - answered, // mask decoded
              raster_ms: decoded - unpacked, // mask painted offscreen
              draw_ms: drawn - decoded, // the canvas redrawn
              paint_ms: performance.now() - drawn, // until the frame was painted
              bytes: meta.bytes, // the answer's size
            });
          }
          // the other candidates, for Tab, once the mask is on the screen
          setTimeout(() => fetchOthers(step.result), 0);
        });
      } catch (err) {
        if (index !== S.index) return;
        // the prompt the server refused is taken back, so what is drawn is what has a mask
        const at = S.steps.indexOf(step);
        if (at >= 0) S.steps.splice(at, 1);
        fail(err);
        renderCandidates();
        updateButtons();
        renderNow();
      } finally {
        step.pending = null;
      }
    })();
  }

  function resultColor() {
    return S.refine ? labelColor(S.refine.inst.label) : labelColor(currentLabel());
  }

  /** Whether candidate i of a result needs its mask (again): none yet, or one coarser than the view. */
  function needsView(result, i) {
    const mask = result.masks[i];
    return !mask || mask.q < viewScale();
  }

  /** Fetch candidate i's mask at the current view scale; it is drawn if it is still the one shown. */
  async function fetchView(result, i) {
    const q = viewScale();
    if (result.fetching[i] >= q) return; // on its way already, at this grid or a finer one
    result.fetching[i] = q;
    try {
      const res = await api("GET", `/api/predictions/${encodeURIComponent(result.prompt_id)}/candidates/${i}?scale=${q}`);
      const mask = decodeView(res.view, q);
      if (!result.masks[i] || result.masks[i].q < q) {
        result.masks[i] = mask;
        recycleCanvas(result.canvases[i]);
        result.canvases[i] = null;
      }
      if (shownResult() === result && S.candidate === i && result.index === S.index) {
        repaintResult();
        renderNow();
      }
    } catch (err) {
      if (shownResult() === result && S.candidate === i) fail(err);
    } finally {
      if (result.fetching[i] === q) result.fetching[i] = 0;
    }
  }

  /** The candidates not sent with the answer, fetched while the person looks at the best one. */
  function fetchOthers(result) {
    if (!result || result.index !== S.index || !S.steps.some((st) => st.result === result)) return;
    result.candidates.forEach((c, i) => {
      if (needsView(result, i) && c.area > 0) fetchView(result, i);
    });
  }

  /** Decode and paint the shown candidate of the shown result (cached per candidate); a candidate
   * whose mask is not here yet (or is coarser than the view) is fetched, and drawn when it comes. */
  function repaintResult() {
    const result = shownResult();
    if (!result || !result.candidates.length) return;
    result.cand = S.candidate;
    const i = S.candidate;
    if (needsView(result, i) && result.candidates[i].area > 0) fetchView(result, i);
    const mask = result.masks[i];
    if (!mask) {
      if (result.candidates[i].area === 0) result.masks[i] = decodeRuns([0], 0, 0);
      return;
    }
    const t = viewOutline(mask) + 1;
    const key = `${resultColor().join(",")}|${t}`;
    if (result.keys[i] !== key || !result.canvases[i]) {
      recycleCanvas(result.canvases[i]);
      result.canvases[i] = null;
      result.canvases[i] = paintMask(mask, resultColor(), 0.45, WHITE, 1, t);
      result.keys[i] = key;
    }
  }

  function cycleCandidate(delta) {
    const result = shownResult();
    if (!result || result.candidates.length < 2) return;
    const n = result.candidates.length;
    S.candidate = (S.candidate + delta + n) % n;
    repaintResult();
    renderCandidates();
    renderNow();
  }

  function renderCandidates() {
    const result = shownResult();
    el.candidates.textContent = "";
    if (!result || result.candidates.length < 2 || S.proposals) {
      el.candidates.hidden = true;
      return;
    }
    el.candidates.hidden = false;
    result.candidates.forEach((c, i) => {
      const b = document.createElement("button");
      b.className = "cand" + (i === S.candidate ? " active" : "");
      b.dataset.candidate = String(i);
      const name = document.createElement("span");
      name.textContent = `Mask ${i + 1}`;
      const score = document.createElement("b");
      score.textContent = Number(c.score).toFixed(3);
      b.append(name, score);
      b.title = `Show mask ${i + 1} (Tab cycles)`;
      b.addEventListener("click", () => {
        b.blur();
        S.candidate = i;
        repaintResult();
        renderCandidates();
        renderNow();
      });
      el.candidates.append(b);
    });
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.innerHTML = "<kbd>Tab</kbd> next";
    el.candidates.append(hint);
  }

  // ---------------------------------------------------------------------------------------------
  // Everything proposals

  async function everything() {
    if (S.index < 0 || !S.img) return;
    const index = S.index;
    clearPrompt();
    S.selected = null;
    el.btn.everything.classList.add("busy");
    el.btn.everything.disabled = true;
    showBusy("Finding masks\u2026");
    try {
      const res = await api("POST", `/api/images/${index}/everything`);
      if (index !== S.index) return;
      const proposals = (res && res.proposals) || [];
      S.proposals = proposals
        .map((p, i) => ({
          rle: p.rle, box: p.box, score: p.score, area: p.area,
          mask: decodeMask(p.rle),
          color: hsl((i * 137.508) % 360),
          canvas: null, paintKey: "",
        }))
        .filter((p) => p.mask.area > 0);
      sortProposals();
      if (!S.proposals.length) {
        S.proposals = null;
        toast("No masks proposed for this image", "info");
      }
    } catch (err) {
      fail(err);
    } finally {
      el.btn.everything.classList.remove("busy");
      hideBusy();
      renderInstances();
      updateProposalsBar();
      renderCandidates();
      updateButtons();
      renderNow();
    }
  }

  function sortProposals() {
    S.proposals.sort((a, b) => b.mask.area - a.mask.area); // big ones drawn first, small ones on top
  }

  function hsl(h) {
    // HSL(h, 75%, 60%) to RGB
    const s = 0.75, l = 0.6;
    const f = (n) => {
      const k = (n + h / 30) % 12;
      const a = s * Math.min(l, 1 - l);
      return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
    };
    return [f(0), f(8), f(4)];
  }

  function proposalCanvas(p, highlight) {
    const key = `${S.res}|${S.outline}|${highlight ? 1 : 0}`;
    if (p.paintKey !== key) {
      p.canvas = highlight ? paintMask(p.mask, p.color, 0.55, WHITE, 1, S.outline + 1) : paintMask(p.mask, p.color, 0.3, p.color, 0.95, S.outline);
      p.paintKey = key;
    }
    return p.canvas;
  }

  function proposalAt(x, y) {
    if (!S.proposals) return null;
    for (let i = S.proposals.length - 1; i >= 0; i--) if (maskContains(S.proposals[i].mask, x, y)) return S.proposals[i];
    return null;
  }

  async function acceptProposals(list) {
    if (!list.length) return;
    const index = S.index;
    const label = currentLabel();
    const stack = undoStack();
    const ids = [];
    const accepted = [];
    if (list.length > 1) showBusy(`Accepting ${list.length} masks\u2026`);
    try {
      for (const p of list) {
        const created = await api("POST", `/api/images/${index}/instances`, { label, rle: p.rle, score: p.score });
        if (index !== S.index) return;
        ids.push(created.id);
        accepted.push(p);
        S.instances.push(prepareInstance(created));
        S.proposals = S.proposals ? S.proposals.filter((q) => q !== p) : null;
      }
    } catch (err) {
      fail(err);
    } finally {
      if (list.length > 1) hideBusy();
      if (ids.length) stack.push({ type: "accept", ids, proposals: accepted });
      if (S.proposals && !S.proposals.length) S.proposals = null;
      S.hoverProposal = null;
      renderInstances();
      syncCurrentRow();
      updateProposalsBar();
      updateButtons();
      renderNow();
    }
  }

  function dismissProposals() {
    S.proposals = null;
    S.hoverProposal = null;
    updateProposalsBar();
    renderCandidates();
    renderNow();
  }

  function updateProposalsBar() {
    if (!S.proposals) {
      el.proposalsBar.hidden = true;
      return;
    }
    el.proposalsBar.hidden = false;
    el.proposalsText.textContent = "";
    const b = document.createElement("b");
    b.textContent = String(S.proposals.length);
    el.proposalsText.append(b, ` proposal${S.proposals.length === 1 ? "" : "s"}: click one to accept it as `);
    const l = document.createElement("b");
    l.textContent = currentLabel() || "";
    el.proposalsText.append(l);
  }

  // ---------------------------------------------------------------------------------------------
  // Image state and export

  async function toggleDone() {
    const image = S.images[S.index];
    if (!image) return;
    const index = S.index;
    const state = image.state === "done" ? (S.instances.length ? "in_progress" : "new") : "done";
    try {
      await api("POST", `/api/images/${index}/state`, { state: state === "new" ? "in_progress" : state });
      setLocalState(index, state === "new" ? "in_progress" : state);
      if (state === "done") {
        // on to the next image not done, from here on, then from the top
        let next = S.images.findIndex((im, i) => i > index && im.state !== "done");
        if (next < 0) next = S.images.findIndex((im) => im.state !== "done");
        if (next >= 0) openImage(next);
        else if (S.images.every((im) => im.state === "done")) toast("Every image is done. Export from the menu at the top right.", "ok");
      }
    } catch (err) {
      fail(err);
    }
  }

  async function exportAs(format, segmentation) {
    closeMenu();
    showBusy("Exporting\u2026");
    try {
      const res = await api("POST", "/api/export", { format, segmentation });
      const what = `${res.instances} instance${res.instances === 1 ? "" : "s"} in ${res.images} image${res.images === 1 ? "" : "s"}`;
      toast(`Exported ${what} to ${res.path}`, "ok", {
        ms: 8000,
        link: format === "coco" ? { href: `/api/export/coco.json?segmentation=${segmentation}`, text: "Download" } : undefined,
      });
      window.fastsegLastExport = res;
    } catch (err) {
      fail(err);
    } finally {
      hideBusy();
    }
  }

  function openMenu() {
    el.exportMenu.hidden = false;
    el.btn.export.setAttribute("aria-expanded", "true");
  }
  function closeMenu() {
    el.exportMenu.hidden = true;
    el.btn.export.setAttribute("aria-expanded", "false");
  }

  // ---------------------------------------------------------------------------------------------
  // Busy indicator and buttons

  let busyCount = 0;
  function showBusy(text) {
    busyCount += 1;
    el.busyText.textContent = text;
    el.busy.hidden = false;
  }
  function hideBusy() {
    busyCount = Math.max(0, busyCount - 1);
    if (!busyCount) el.busy.hidden = true;
  }

  /** Set a property of a node only if it changes (a write of the same text still costs the browser a
   * layout and a repaint, which a click must not pay while the server computes its mask). */
  function setIf(node, name, value) {
    if (node[name] !== value) node[name] = value;
  }

  function updateButtons() {
    const hasImage = S.index >= 0 && !!S.img;
    const shown = shownResult();
    setIf(el.btn.accept, "disabled", !(S.steps.length && ((shown && shown.candidates.length) || lastStep().pending)));
    setIf(el.btn.clear, "disabled", !S.steps.length && !S.proposals && S.selected === null);
    setIf(el.btn.prev, "disabled", S.index <= 0);
    setIf(el.btn.next, "disabled", S.index < 0 || S.index >= S.images.length - 1);
    setIf(el.btn.everything, "disabled", !hasImage || el.btn.everything.classList.contains("busy"));
    const image = S.images[S.index];
    const done = !!(image && image.state === "done");
    setIf(el.btn.done, "textContent", done ? "Reopen" : "Mark done");
    if (el.btn.done.classList.contains("done-on") !== done) el.btn.done.classList.toggle("done-on", done);
    setIf(el.btn.done, "title", done ? "Mark this image as in progress again (D)" : "Mark this image done and go to the next (D)");
    setIf(el.btn.done, "disabled", !image);
  }

  // ---------------------------------------------------------------------------------------------
  // View: fit, zoom, pan, coordinates

  function resizeCanvas() {
    const rect = el.stage.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const hadSize = S.cw > 0;
    const oldCw = S.cw, oldCh = S.ch;
    S.cw = rect.width;
    S.ch = rect.height;
    el.canvas.width = el.imageLayer.width = Math.max(1, Math.round(rect.width * dpr));
    el.canvas.height = el.imageLayer.height = Math.max(1, Math.round(rect.height * dpr));
    imageKey = ""; // setting a canvas's size clears it
    if (hadSize && S.img) {
      // keep the image centre where it was relative to the stage
      S.view.ox += (S.cw - oldCw) / 2;
      S.view.oy += (S.ch - oldCh) / 2;
    } else if (S.img) {
      fitView();
    }
    renderNow();
  }

  function fitView() {
    if (!S.width || !S.height || !S.cw) return;
    const padX = 24;
    const padY = 58; // clear of the floating tool bars above and the candidates below
    const scale = Math.min((S.cw - 2 * padX) / S.width, (S.ch - 2 * padY) / S.height, 8);
    S.view.scale = Math.max(MIN_SCALE, scale);
    S.view.ox = Math.round((S.cw - S.width * S.view.scale) / 2);
    S.view.oy = Math.round((S.ch - S.height * S.view.scale) / 2);
    zoomChanged(true);
  }

  let outlineTimer = 0;
  function zoomChanged(now) {
    el.zoom.textContent = `${Math.round(S.view.scale * 100)}%`;
    // screen pixels per image pixel; masks are painted at 1, 1/2, 1/4... of the image resolution so
    // that a painted pixel covers at most one screen pixel, and outlines stay at least ~1.2 px wide
    const s = S.view.scale * (window.devicePixelRatio || 1);
    const res = s >= 1 ? 1 : Math.pow(2, Math.ceil(Math.log2(Math.max(s, 1 / 64))));
    const t = s / res < 0.8 ? 2 : 1;
    clearTimeout(outlineTimer);
    const apply = () => {
      const changed = res !== S.res || t !== S.outline;
      S.res = res;
      S.outline = t;
      // a click's mask is painted on its own grid: again if the outline changes, fetched again if
      // the view now shows it larger than its grid
      if (shownResult()) repaintResult();
      if (changed || shownResult()) scheduleRender();
    };
    if (now) apply();
    else outlineTimer = setTimeout(apply, 160);
  }

  function zoomAt(cx, cy, factor) {
    const v = S.view;
    const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, v.scale * factor));
    const ix = (cx - v.ox) / v.scale;
    const iy = (cy - v.oy) / v.scale;
    v.scale = scale;
    v.ox = cx - ix * scale;
    v.oy = cy - iy * scale;
    zoomChanged(false);
    scheduleRender();
  }

  function localPoint(clientX, clientY) {
    const rect = el.canvas.getBoundingClientRect();
    return { x: clientX - rect.left, y: clientY - rect.top };
  }

  /** Image coordinates (continuous) of a client point. */
  function clientToImage(clientX, clientY) {
    const p = localPoint(clientX, clientY);
    return { x: (p.x - S.view.ox) / S.view.scale, y: (p.y - S.view.oy) / S.view.scale };
  }

  /** Client coordinates of the centre of image pixel (x, y). */
  function imageToClient(x, y) {
    const rect = el.canvas.getBoundingClientRect();
    return { x: rect.left + S.view.ox + (x + 0.5) * S.view.scale, y: rect.top + S.view.oy + (y + 0.5) * S.view.scale };
  }

  function pixelAt(clientX, clientY) {
    const p = clientToImage(clientX, clientY);
    return { x: Math.floor(p.x), y: Math.floor(p.y), inside: p.x >= 0 && p.y >= 0 && p.x < S.width && p.y < S.height };
  }

  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  window.fastsegView = {
    imageToClient,
    clientToImage,
    get scale() { return S.view.scale; },
    get offset() { return { x: S.view.ox, y: S.view.oy }; },
    fit() { fitView(); renderNow(); },
    zoomAt(clientX, clientY, factor) {
      const p = localPoint(clientX, clientY);
      zoomAt(p.x, p.y, factor);
      renderNow();
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Drawing

  let frame = 0;
  function scheduleRender() {
    if (!frame) frame = requestAnimationFrame(() => {
      frame = 0;
      renderNow();
    });
  }

  /** Run fn after the next frame has been painted. */
  function afterPaint(fn) {
    requestAnimationFrame(() => {
      const channel = new MessageChannel();
      channel.port1.onmessage = () => fn();
      channel.port2.postMessage(null);
    });
  }

  function renderNow() {
    if (frame) {
      cancelAnimationFrame(frame);
      frame = 0;
    }
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, el.canvas.width, el.canvas.height);
    el.empty.hidden = !(S.ready && S.images.length === 0);
    renderImageLayer();
    if (!S.img) return;
    const v = S.view;
    ctx.setTransform(dpr * v.scale, 0, 0, dpr * v.scale, dpr * v.ox, dpr * v.oy);
    ctx.imageSmoothingEnabled = v.scale < 1;
    // accepted instances
    const hiding = S.refine && shownResult() ? S.refine.inst.id : null;
    for (const inst of S.instances) {
      if (inst.id === hiding || inst.mask.area === 0) continue;
      const highlight = inst.id === S.selected || inst.id === S.hover;
      drawMask(instanceCanvas(inst, highlight), inst.mask);
    }
    // proposals
    if (S.proposals) {
      for (const p of S.proposals) {
        if (p.mask.area === 0) continue;
        drawMask(proposalCanvas(p, p === S.hoverProposal), p.mask);
      }
    }
    // the current mask
    const result = shownResult();
    if (result && S.steps.length && result.candidates.length) {
      const c = result.canvases[S.candidate];
      const m = result.masks[S.candidate];
      if (c && m && m.area) drawMask(c, m);
    }
    // prompts, in screen pixels
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const prompt = S.steps.length || S.refine ? currentPrompt() : null;
    if (prompt) {
      if (prompt.box) drawBox(prompt.box, false);
      prompt.points.forEach((p, i) => drawPoint(p[0], p[1], prompt.labels[i]));
    }
    if (S.press && S.press.drag) {
      const a = clientToImage(S.press.x, S.press.y);
      const b = S.pointer ? clientToImage(S.pointer.x, S.pointer.y) : a;
      drawBox([Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)], true);
    }
  }

  /** The image, on its own canvas under the overlays: redrawn only when the view changes, so a click
   * repaints the masks and not a large photo. Smoothed when shrunk (high quality once the view
   * rests), crisp pixels when zoomed in. */
  let imageKey = "";
  let imageFast = false; // drawn at low quality during a pan or zoom
  let settleTimer = 0;
  function renderImageLayer() {
    const v = S.view;
    const c = el.imageLayer;
    const src = S.img ? S.img.src : "";
    const key = `${src}|${v.scale}|${v.ox}|${v.oy}|${c.width}|${c.height}`;
    if (key === imageKey && !(imageFast && S.settled)) return;
    const moving = key !== imageKey && imageKey.startsWith(`${src}|`);
    imageKey = key;
    imageFast = moving;
    S.settled = false;
    clearTimeout(settleTimer);
    if (moving) {
      settleTimer = setTimeout(() => {
        S.settled = true;
        scheduleRender();
      }, 150);
    }
    const dpr = window.devicePixelRatio || 1;
    imageCtx.setTransform(1, 0, 0, 1, 0, 0);
    imageCtx.fillStyle = STAGE;
    imageCtx.fillRect(0, 0, c.width, c.height);
    if (!S.img) return;
    imageCtx.setTransform(dpr * v.scale, 0, 0, dpr * v.scale, dpr * v.ox, dpr * v.oy);
    imageCtx.shadowColor = "rgba(0,0,0,0.5)";
    imageCtx.shadowBlur = 20 * dpr; // not scaled by the transform
    imageCtx.fillStyle = "#000";
    imageCtx.fillRect(0, 0, S.width, S.height);
    imageCtx.shadowBlur = 0;
    imageCtx.shadowColor = "transparent";
    imageCtx.imageSmoothingEnabled = v.scale < 2;
    imageCtx.imageSmoothingQuality = moving ? "low" : "high";
    imageCtx.drawImage(S.img, 0, 0, S.width, S.height);
  }

  function toScreen(x, y) {
    return { x: S.view.ox + x * S.view.scale, y: S.view.oy + y * S.view.scale };
  }

  function drawPoint(x, y, label) {
    const p = toScreen(x + 0.5, y + 0.5);
    ctx.beginPath();
    ctx.arc(p.x, p.y, 7, 0, Math.PI * 2);
    ctx.fillStyle = label === 1 ? "#2fbf71" : "#f0435a";
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(p.x - 3.5, p.y);
    ctx.lineTo(p.x + 3.5, p.y);
    if (label === 1) {
      ctx.moveTo(p.x, p.y - 3.5);
      ctx.lineTo(p.x, p.y + 3.5);
    }
    ctx.lineWidth = 1.8;
    ctx.stroke();
  }

  function drawBox(box, dragging) {
    const a = toScreen(box[0], box[1]);
    const b = toScreen(box[2], box[3]);
    ctx.save();
    ctx.lineWidth = 3.5;
    ctx.strokeStyle = "rgba(0,0,0,0.45)";
    ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
    ctx.lineWidth = 1.6;
    ctx.strokeStyle = "#fff";
    if (dragging) ctx.setLineDash([6, 4]);
    ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
    ctx.setLineDash([]);
    ctx.fillStyle = "#fff";
    for (const [x, y] of [[a.x, a.y], [b.x, a.y], [a.x, b.y], [b.x, b.y]]) ctx.fillRect(x - 3, y - 3, 6, 6);
    ctx.restore();
  }

  // ---------------------------------------------------------------------------------------------
  // Pointer input

  function panning(e) {
    return e.button === 1 || (e.button === 0 && (S.space || S.tool === "hand"));
  }

  el.canvas.addEventListener("contextmenu", (e) => e.preventDefault());

  el.canvas.addEventListener("pointerdown", (e) => {
    el.canvas.focus({ preventScroll: true });
    closeMenu();
    if (!S.img) return;
    if (panning(e)) {
      e.preventDefault();
      S.pan = { x: e.clientX, y: e.clientY, ox: S.view.ox, oy: S.view.oy, id: e.pointerId };
      el.canvas.setPointerCapture(e.pointerId);
      el.canvas.classList.add("panning");
      return;
    }
    if (e.button !== 0 && e.button !== 2) return;
    S.press = { x: e.clientX, y: e.clientY, button: e.button, shift: e.shiftKey, alt: e.altKey, drag: false, id: e.pointerId };
    el.canvas.setPointerCapture(e.pointerId);
  });

  el.canvas.addEventListener("pointermove", (e) => {
    S.pointer = { x: e.clientX, y: e.clientY };
    if (S.pan) {
      S.view.ox = S.pan.ox + (e.clientX - S.pan.x);
      S.view.oy = S.pan.oy + (e.clientY - S.pan.y);
      scheduleRender();
      return;
    }
    if (S.press) {
      if (!S.press.drag && S.press.button === 0 && !S.proposals &&
          Math.hypot(e.clientX - S.press.x, e.clientY - S.press.y) > DRAG_THRESHOLD) {
        S.press.drag = true;
      }
      if (S.press.drag) scheduleRender();
      return;
    }
    if (S.proposals && S.img) {
      const p = pixelAt(e.clientX, e.clientY);
      const hit = p.inside ? proposalAt(p.x, p.y) : null;
      if (hit !== S.hoverProposal) {
        S.hoverProposal = hit;
        el.canvas.classList.toggle("pick", !!hit);
        scheduleRender();
      }
    }
  });

  function endPointer(e, cancelled) {
    if (S.pan && e.pointerId === S.pan.id) {
      S.pan = null;
      el.canvas.classList.remove("panning");
      return;
    }
    const press = S.press;
    if (!press || e.pointerId !== press.id) return;
    S.press = null;
    if (cancelled) {
      renderNow();
      return;
    }
    const time = performance.now();
    if (press.drag) {
      const a = clientToImage(press.x, press.y);
      const b = clientToImage(e.clientX, e.clientY);
      const box = [
        clamp(Math.floor(Math.min(a.x, b.x)), 0, S.width - 1),
        clamp(Math.floor(Math.min(a.y, b.y)), 0, S.height - 1),
        clamp(Math.floor(Math.max(a.x, b.x)), 0, S.width - 1),
        clamp(Math.floor(Math.max(a.y, b.y)), 0, S.height - 1),
      ];
      if (box[2] <= box[0] || box[3] <= box[1]) {
        renderNow();
        return;
      }
      addStep({ kind: "box", box }, time);
      return;
    }
    const p = pixelAt(press.x, press.y);
    if (!p.inside) {
      renderNow();
      return;
    }
    if (press.alt) {
      // Alt+click selects the instance under the pointer
      let hit = null;
      for (const inst of S.instances.slice().sort((a, b) => a.mask.area - b.mask.area)) {
        if (maskContains(inst.mask, p.x, p.y)) {
          hit = inst;
          break;
        }
      }
      selectInstance(hit ? hit.id : null);
      return;
    }
    if (S.proposals) {
      const hit = proposalAt(p.x, p.y);
      if (hit) acceptProposals([hit]);
      return;
    }
    addStep({ kind: "point", x: p.x, y: p.y, label: press.button === 2 || press.shift ? 0 : 1 }, time);
  }

  el.canvas.addEventListener("pointerup", (e) => endPointer(e, false));
  el.canvas.addEventListener("pointercancel", (e) => endPointer(e, true));
  el.canvas.addEventListener("pointerleave", () => {
    if (S.hoverProposal) {
      S.hoverProposal = null;
      scheduleRender();
    }
  });
  el.canvas.addEventListener("auxclick", (e) => e.preventDefault());
  el.canvas.addEventListener("mousedown", (e) => {
    if (e.button === 1) e.preventDefault(); // no autoscroll: the middle button pans
  });

  el.canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    if (!S.img) return;
    const p = localPoint(e.clientX, e.clientY);
    let delta = e.deltaY;
    if (e.deltaMode === 1) delta *= 16;
    else if (e.deltaMode === 2) delta *= 400;
    zoomAt(p.x, p.y, Math.exp(-delta * 0.0015));
  }, { passive: false });

  // ---------------------------------------------------------------------------------------------
  // Keyboard

  function setTool(tool) {
    S.tool = tool;
    el.btn.toolPrompt.classList.toggle("active", tool === "prompt");
    el.btn.toolHand.classList.toggle("active", tool === "hand");
    el.canvas.classList.toggle("pan", tool === "hand" || S.space);
  }

  function escape() {
    if (!el.exportMenu.hidden) closeMenu();
    else if (S.steps.length || S.refine) clearPrompt(); // the selection stays: a second Esc deselects
    else if (S.proposals) dismissProposals();
    else if (S.selected !== null) selectInstance(null);
    renderInstances();
    updateButtons();
    renderNow();
  }

  window.addEventListener("keydown", (e) => {
    const target = e.target;
    const typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT");
    if (typing && e.key !== "Escape") return;
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && (e.key === "z" || e.key === "Z") && !e.shiftKey) {
      e.preventDefault();
      undo();
      return;
    }
    if (ctrl || e.altKey) return;
    const key = e.key;
    // a held key repeats only moves (a held Enter or D must not accept twice or toggle back)
    if (e.repeat && !["n", "N", "p", "P", "Tab", "+", "=", "-", " "].includes(key)) {
      e.preventDefault();
      return;
    }
    if (key === " ") {
      e.preventDefault();
      if (!S.space) {
        S.space = true;
        el.canvas.classList.add("pan");
      }
      return;
    }
    if (/^[1-9]$/.test(key)) {
      e.preventDefault();
      const i = Number(key) - 1;
      if (i >= S.labels.length) return;
      if (S.selected !== null && !S.steps.length) relabel(S.selected, S.labels[i]);
      else pickLabel(i);
      if (S.proposals) updateProposalsBar();
      return;
    }
    switch (key) {
      case "Tab":
        e.preventDefault();
        cycleCandidate(e.shiftKey ? -1 : 1);
        break;
      case "Enter":
        e.preventDefault();
        acceptPrompt();
        break;
      case "Escape":
        e.preventDefault();
        if (typing) target.blur();
        escape();
        break;
      case "Delete":
      case "Backspace":
        if (S.selected !== null) {
          e.preventDefault();
          deleteInstance(S.selected);
        }
        break;
      case "n":
      case "N":
        e.preventDefault();
        move(1, performance.now());
        break;
      case "p":
      case "P":
        e.preventDefault();
        move(-1, performance.now());
        break;
      case "d":
      case "D":
        e.preventDefault();
        toggleDone();
        break;
      case "e":
      case "E":
        e.preventDefault();
        if (S.proposals) dismissProposals();
        else everything();
        break;
      case "f":
      case "F":
      case "0":
        e.preventDefault();
        fitView();
        renderNow();
        break;
      case "h":
      case "H":
        setTool("hand");
        break;
      case "v":
      case "V":
        setTool("prompt");
        break;
      case "+":
      case "=":
        zoomAt(S.cw / 2, S.ch / 2, 1.25);
        break;
      case "-":
        zoomAt(S.cw / 2, S.ch / 2, 0.8);
        break;
      default:
        break;
    }
  });

  window.addEventListener("keyup", (e) => {
    if (e.key === " ") {
      S.space = false;
      el.canvas.classList.toggle("pan", S.tool === "hand");
    }
  });
  window.addEventListener("blur", () => {
    S.space = false;
    el.canvas.classList.toggle("pan", S.tool === "hand");
  });

  // ---------------------------------------------------------------------------------------------
  // Buttons

  function onClick(button, fn) {
    button.addEventListener("click", (e) => {
      button.blur();
      fn(e);
    });
  }
  onClick(el.btn.everything, () => everything());
  onClick(el.btn.accept, () => acceptPrompt());
  onClick(el.btn.clear, () => escape());
  onClick(el.btn.undo, () => undo());
  onClick(el.btn.prev, () => move(-1, performance.now()));
  onClick(el.btn.next, () => move(1, performance.now()));
  onClick(el.btn.done, () => toggleDone());
  onClick(el.btn.acceptAll, () => S.proposals && acceptProposals(S.proposals.slice().reverse()));
  onClick(el.btn.dismiss, () => dismissProposals());
  onClick(el.btn.toolPrompt, () => setTool("prompt"));
  onClick(el.btn.toolHand, () => setTool("hand"));
  onClick(el.btn.toolFit, () => {
    fitView();
    renderNow();
  });
  onClick(el.btn.export, (e) => {
    e.stopPropagation();
    if (el.exportMenu.hidden) openMenu();
    else closeMenu();
  });
  el.exportMenu.querySelectorAll("button").forEach((b) => {
    onClick(b, () => exportAs(b.dataset.format, b.dataset.segmentation));
  });
  document.addEventListener("click", (e) => {
    if (!el.exportMenu.hidden && !el.exportMenu.contains(e.target) && e.target !== el.btn.export) closeMenu();
  });

  window.addEventListener("error", (e) => toast(`Unexpected error: ${e.message}`, "error"));
  window.addEventListener("unhandledrejection", (e) => fail(e.reason));

  // ---------------------------------------------------------------------------------------------
  // Start

  function renderModel() {
    const m = S.model || {};
    el.modelName.textContent = [m.name, m.precision].filter(Boolean).join(" \u00b7 ");
    const weights = String(m.weights || "");
    const random = /random|synthetic/i.test(weights);
    el.modelWeights.hidden = !random;
    el.model.title = `model ${m.name || "?"} (${m.family || "?"}), weights: ${weights || "unknown"}, ` +
      `${m.backend || "?"} at ${m.precision || "?"}` +
      (random ? "\nThese weights are random: the masks mean nothing. Export a model from its official checkpoint." : "");
  }

  async function start() {
    try {
      const state = await api("GET", "/api/state");
      S.labels = state.labels && state.labels.length ? state.labels.slice() : ["object"];
      S.model = state.model || {};
      S.images = state.images || [];
      renderLabels();
      renderModel();
      renderImageList();
      S.ready = true;
      resizeCanvas();
      updateButtons();
      if (S.images.length) {
        const resume = S.images.findIndex((im) => im.state !== "done");
        await openImage(resume >= 0 ? resume : 0);
      } else {
        renderNow();
      }
    } catch (err) {
      fail(err);
    } finally {
      S.ready = true;
      document.body.dataset.ready = "1";
    }
  }

  new ResizeObserver(() => resizeCanvas()).observe(el.stage);

  window.fastsegApp = {
    get state() {
      const result = shownResult();
      return {
        index: S.index,
        file: S.images[S.index] ? S.images[S.index].file : null,
        width: S.width,
        height: S.height,
        labels: S.labels.slice(),
        label: currentLabel(),
        prompt: currentPrompt(),
        steps: S.steps.length,
        waiting: S.steps.some((s) => s.pending),
        candidate: S.candidate,
        candidates: result ? result.candidates.map((c) => c.score) : [],
        promptId: result ? result.prompt_id : null,
        refining: S.refine ? S.refine.inst.id : null,
        selected: S.selected,
        instances: S.instances.map((i) => ({ id: i.id, label: i.label, score: i.score, area: i.area })),
        proposals: S.proposals ? S.proposals.length : 0,
        images: S.images.map((im) => ({ file: im.file, state: im.state, instances: im.instances })),
        pending: S.pending,
      };
    },
    open: (i) => openImage(i),
    /** A pixel [x, y] inside each proposal where a click picks it, the one drawn on top first. */
    proposalPixels() {
      if (!S.proposals) return [];
      return S.proposals.slice().reverse().map((p) => {
        const m = p.mask;
        const step = Math.max(1, Math.floor(Math.sqrt(m.area / 4000)));
        const cx = m.x + m.w / 2, cy = m.y + m.h / 2;
        let best = null, bestD = Infinity;
        for (let y = m.y; y < m.y + m.h; y += step) {
          for (let x = m.x; x < m.x + m.w; x += step) {
            if (!maskContains(m, x, y) || proposalAt(x, y) !== p) continue;
            const d = (x - cx) ** 2 + (y - cy) ** 2;
            if (d < bestD) { bestD = d; best = [x, y]; }
          }
        }
        return best;
      }).filter(Boolean);
    },
    select: (id) => selectInstance(id),
  };

  start();
})();
