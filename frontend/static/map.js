// pollinid — the offline map: Natural Earth land, lakes, rivers and borders, and city names, drawn on a canvas in
// the Web Mercator projection from the files in /static/map/ (built by tools/map-build; nothing comes from
// outside the service). Drag or use the arrow keys to move, the wheel, a pinch, the buttons or +/− to zoom; a
// click or a tap (or Enter, at the centre) places the marker, which can be dragged. A circle shows how precise
// the place is. The component's state is mirrored on its element's data- attributes (data-latitude, …).
import { formatNumber, t } from "./i18n.js";

const DATA = "/static/map/";
const TILE = 256; // the world is TILE · 2^zoom pixels wide
const MIN_ZOOM = 1;
const MAX_ZOOM = 17;
const MAX_LAT = 85.05112878; // Web Mercator's square world
const EARTH_CIRCUMFERENCE = 40075016.686; // metres at the equator
const PICK_PIXELS = 5; // how far off a click or a tap may land, in CSS pixels
// Each detail level of Natural Earth from the zoom where it starts being useful (1:110M, 1:50M, 1:10M).
const LEVELS = [{ name: "110m", from: 0 }, { name: "50m", from: 3 }, { name: "10m", from: 5 }];
const COLOURS = {
  water: "#cfe2ee", land: "#f4f1e6", coast: "#6f8f9e", lake: "#cfe2ee", river: "#86b3d3", border: "#9b7b93",
  city: "#3b3b3b", halo: "rgba(255,255,255,0.85)", accuracy: "rgba(26,86,196,0.16)", accuracyLine: "#1a56c4",
  marker: "#b3261e", crosshair: "rgba(28,31,26,0.7)",
};

// -- data: fetched once per page, shared by every map on it -------------------------------------------------

const levelCache = new Map();
let citiesPromise = null;

function mercatorX(lon) { return (lon + 180) / 360; }
function mercatorY(lat) {
  const phi = (Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * Math.PI) / 180;
  return (1 - Math.log(Math.tan(Math.PI / 4 + phi / 2)) / Math.PI) / 2;
}
function longitudeOf(x) { return x * 360 - 180; }
function latitudeOf(y) { return (Math.atan(Math.sinh(Math.PI * (1 - 2 * y))) * 180) / Math.PI; }

/** Decode a delta-encoded ring or line into Mercator coordinates (0‥1) with its bounding box. */
function decodeShape(flat, scale) {
  const n = flat.length / 2;
  const xy = new Float64Array(flat.length);
  let lon = 0;
  let lat = 0;
  let minX = Infinity; let minY = Infinity; let maxX = -Infinity; let maxY = -Infinity;
  for (let i = 0; i < n; i += 1) {
    lon += flat[2 * i];
    lat += flat[2 * i + 1];
    const x = mercatorX(lon / scale);
    const y = mercatorY(lat / scale);
    xy[2 * i] = x; xy[2 * i + 1] = y;
    if (x < minX) minX = x; if (x > maxX) maxX = x;
    if (y < minY) minY = y; if (y > maxY) maxY = y;
  }
  return { xy, minX, minY, maxX, maxY };
}

async function fetchJson(name) {
  const response = await fetch(DATA + name, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${name}: ${response.status}`);
  return response.json();
}

function loadLevel(name) {
  if (!levelCache.has(name)) {
    const promise = fetchJson(`world-${name}.json`).then((body) => {
      const layers = {};
      for (const [layer, shapes] of Object.entries(body.layers)) {
        layers[layer] = shapes.map((flat) => decodeShape(flat, body.scale));
      }
      return layers;
    });
    promise.catch(() => levelCache.delete(name)); // try again on the next draw
    levelCache.set(name, promise);
  }
  return levelCache.get(name);
}

function loadCities() {
  if (!citiesPromise) {
    citiesPromise = fetchJson("cities.json").then((body) => body.cities.map(([lon, lat, name, minZoom]) => ({
      x: mercatorX(lon / body.scale), y: mercatorY(lat / body.scale), name, minZoom })));
    citiesPromise.catch(() => { citiesPromise = null; });
  }
  return citiesPromise;
}

// -- small helpers ------------------------------------------------------------------------------------------

function node(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  element.append(...children.filter((c) => c !== null && c !== undefined));
  return element;
}

let uid = 0;

/** "45.18830° N, 5.72450° E" in the page's language (5 decimals: about a metre). */
export function formatPlace(lat, lon) {
  const digits = { minimumFractionDigits: 5, maximumFractionDigits: 5 };
  return t("map.place", {
    lat: formatNumber(Math.abs(lat), digits), ns: t(lat >= 0 ? "map.north" : "map.south"),
    lon: formatNumber(Math.abs(lon), digits), ew: t(lon >= 0 ? "map.east" : "map.west"),
  });
}

/** "±25 m", "±1.2 km". */
export function formatPrecision(metres) {
  if (metres >= 1000) return t("map.precision_km", { value: formatNumber(metres / 1000, { maximumFractionDigits: 1 }) });
  return t("map.precision_m", { value: formatNumber(Math.round(metres)) });
}

function niceDistance(maxMetres) {
  const power = 10 ** Math.floor(Math.log10(maxMetres));
  for (const step of [5, 2, 1]) if (step * power <= maxMetres) return step * power;
  return power;
}

// -- the component ------------------------------------------------------------------------------------------

/**
 * Draw a map into `container`.
 *
 * options: latitude, longitude, precisionM (the place, if known); zoom; editable (the person can place the
 * marker); onPick(latitude, longitude) (called when the person places or drags the marker); label (the map's
 * accessible name).
 * Returns {setPlace(lat, lon, {precisionM, recenter, zoom}), clearPlace(), setView(lat, lon, zoom), place(),
 * redraw(), element}.
 */
export function createMap(container, options = {}) {
  const editable = !!options.editable;
  const id = `map-${(uid += 1)}`;
  const canvas = node("canvas", { "aria-hidden": "true" });
  const hint = node("p", { id: `${id}-hint`, class: "sr-only" },
    t(editable ? "map.hint_editable" : "map.hint_readonly"));
  const view = node("div", {
    class: "map-view", tabindex: "0", role: "application", "aria-roledescription": t("map.roledescription"),
    "aria-label": options.label || t(editable ? "map.label_editable" : "map.label_readonly"),
    "aria-describedby": hint.id,
  }, canvas);
  const zoomIn = node("button", { type: "button", class: "map-button", "aria-label": t("map.zoom_in"),
    title: t("map.zoom_in") }, "+");
  const zoomOut = node("button", { type: "button", class: "map-button", "aria-label": t("map.zoom_out"),
    title: t("map.zoom_out") }, "−");
  const scaleBar = node("span", { class: "map-scale-bar" });
  const scaleText = node("span", { class: "map-scale-text" });
  const readout = node("span", { class: "map-readout", "aria-live": "polite" });
  const credit = node("span", { class: "map-credit" }, t("map.credit"));
  const root = node("div", { class: `map${editable ? " editable" : ""}`, id },
    view, node("div", { class: "map-zoom" }, zoomIn, zoomOut),
    node("div", { class: "map-footer" }, node("span", { class: "map-scale", "aria-hidden": "true" }, scaleBar, scaleText),
      readout, credit),
    hint);
  container.replaceChildren(root);
  const ctx = canvas.getContext("2d");

  const state = {
    cx: 0.5, cy: mercatorY(30), zoom: options.zoom ?? 2, width: 0, height: 0,
    place: null, // {lat, lon, precisionM}
    layers: {}, // level name → decoded layers, once loaded
    cities: null,
    frame: 0,
    loading: new Set(),
  };

  // -- geometry: Mercator (0‥1) ⇄ canvas pixels (CSS pixels, origin top left) --------------------------------
  const worldSize = () => TILE * 2 ** state.zoom;
  const toScreen = (x, y) => [(x - state.cx) * worldSize() + state.width / 2, (y - state.cy) * worldSize() + state.height / 2];
  const toWorld = (px, py) => [state.cx + (px - state.width / 2) / worldSize(), state.cy + (py - state.height / 2) / worldSize()];

  function clampCentre() {
    const half = state.height / 2 / worldSize();
    state.cy = half >= 0.5 ? 0.5 : Math.max(half, Math.min(1 - half, state.cy));
    state.cx = Math.max(0, Math.min(1, state.cx));
  }

  function setZoom(zoom, anchor) {
    const next = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, zoom));
    const [ax, ay] = anchor || [state.width / 2, state.height / 2];
    const [wx, wy] = toWorld(ax, ay);
    state.zoom = next;
    // keep the point under the anchor where it was
    state.cx = wx - (ax - state.width / 2) / worldSize();
    state.cy = wy - (ay - state.height / 2) / worldSize();
    clampCentre();
    schedule();
  }

  function panBy(dx, dy) {
    state.cx -= dx / worldSize();
    state.cy -= dy / worldSize();
    clampCentre();
    schedule();
  }

  // -- drawing ----------------------------------------------------------------------------------------------

  function wantedLevel() {
    let wanted = LEVELS[0].name;
    for (const level of LEVELS) if (state.zoom >= level.from) wanted = level.name;
    return wanted;
  }

  /** The most detailed loaded level (up to the wanted one) that has this layer. */
  function layerFor(name, wanted) {
    let best = null;
    for (const level of LEVELS) {
      const layers = state.layers[level.name];
      if (layers && layers[name]) best = { level: level.name, shapes: layers[name] };
      if (level.name === wanted) break;
    }
    return best;
  }

  /**
   * Add one ring or line to the current path. Points closer than half a pixel to the last one are skipped,
   * and so are the inner points of a run that stays beyond one side of the (enlarged) view: such a run's
   * replacement, the straight line from its first to its last point, lies beyond that side too, so what shows
   * (outline and even-odd fill) is unchanged while a zoomed-in frame skips most of a continent's coast.
   */
  function trace(shape, closed, box) {
    const { xy } = shape;
    const n = xy.length / 2;
    const size = worldSize();
    const ox = state.width / 2 - state.cx * size;
    const oy = state.height / 2 - state.cy * size;
    let lastX = 0; let lastY = 0; let runBits = 0;
    let pending = false; let pendX = 0; let pendY = 0;
    for (let i = 0; i < n; i += 1) {
      const x = xy[2 * i] * size + ox;
      const y = xy[2 * i + 1] * size + oy;
      const bits = (x < box.left ? 1 : 0) | (x > box.right ? 2 : 0) | (y < box.top ? 4 : 0) | (y > box.bottom ? 8 : 0);
      if (i === 0) {
        ctx.moveTo(x, y);
        lastX = x; lastY = y; runBits = bits;
        continue;
      }
      if (bits & runBits) { // still beyond the same side as the run so far
        runBits &= bits;
        pending = true; pendX = x; pendY = y;
        continue;
      }
      if (pending) { ctx.lineTo(pendX, pendY); pending = false; lastX = pendX; lastY = pendY; }
      if (Math.abs(x - lastX) + Math.abs(y - lastY) < 0.5 && i < n - 1) continue;
      ctx.lineTo(x, y);
      lastX = x; lastY = y; runBits = bits;
    }
    if (pending) ctx.lineTo(pendX, pendY);
    if (closed) ctx.closePath();
  }

  function drawLayer(name, wanted, box, { fill, stroke, width = 1, closed }) {
    const layer = layerFor(name, wanted);
    if (!layer) return 0;
    const size = worldSize();
    const [minX, minY] = toWorld(box.left, box.top);
    const [maxX, maxY] = toWorld(box.right, box.bottom);
    const minPixels = closed ? 1.5 / size : 0; // rings smaller than that are invisible
    let count = 0;
    ctx.beginPath();
    for (const shape of layer.shapes) {
      if (shape.maxX < minX || shape.minX > maxX || shape.maxY < minY || shape.minY > maxY) continue;
      if (closed && shape.maxX - shape.minX < minPixels && shape.maxY - shape.minY < minPixels) continue;
      trace(shape, closed, box);
      count += 1;
    }
    if (fill) { ctx.fillStyle = fill; ctx.fill("evenodd"); }
    if (stroke) { ctx.strokeStyle = stroke; ctx.lineWidth = width; ctx.stroke(); }
    return count;
  }

  function drawCities(taken) {
    if (!state.cities) return 0;
    const level = Math.floor(state.zoom + 1e-9);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    let shown = 0;
    for (const city of state.cities) {
      if (city.minZoom > level) continue;
      const [x, y] = toScreen(city.x, city.y);
      if (x < -50 || y < -20 || x > state.width + 50 || y > state.height + 20) continue;
      const textWidth = ctx.measureText(city.name).width;
      const box = { left: x - 3, top: y - 8, right: x + 7 + textWidth, bottom: y + 8 };
      if (taken.some((b) => b.left < box.right && box.left < b.right && b.top < box.bottom && box.top < b.bottom)) continue;
      taken.push(box);
      ctx.fillStyle = COLOURS.city;
      ctx.beginPath();
      ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
      ctx.fill();
      ctx.lineWidth = 3;
      ctx.strokeStyle = COLOURS.halo;
      ctx.strokeText(city.name, x + 6, y);
      ctx.fillText(city.name, x + 6, y);
      shown += 1;
      if (shown >= 250) break;
    }
    return shown;
  }

  function metresPerPixel(lat) {
    return (EARTH_CIRCUMFERENCE * Math.cos((lat * Math.PI) / 180)) / worldSize();
  }

  function markerScreen() {
    if (!state.place) return null;
    return toScreen(mercatorX(state.place.lon), mercatorY(state.place.lat));
  }

  function drawPlace(taken) {
    const at = markerScreen();
    if (!at) return;
    const [x, y] = at;
    const { precisionM } = state.place;
    if (precisionM) {
      const radius = precisionM / metresPerPixel(state.place.lat);
      if (radius >= 2) {
        ctx.beginPath();
        ctx.arc(x, y, Math.min(radius, 4 * (state.width + state.height)), 0, 2 * Math.PI);
        ctx.fillStyle = COLOURS.accuracy;
        ctx.fill();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = COLOURS.accuracyLine;
        ctx.stroke();
      }
    }
    // a pin: its point is the place
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.bezierCurveTo(x - 3, y - 9, x - 10, y - 13, x - 10, y - 21);
    ctx.arc(x, y - 21, 10, Math.PI, 0);
    ctx.bezierCurveTo(x + 10, y - 13, x + 3, y - 9, x, y);
    ctx.fillStyle = COLOURS.marker;
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#ffffff";
    ctx.stroke();
    ctx.beginPath();
    ctx.arc(x, y - 21, 3.5, 0, 2 * Math.PI);
    ctx.fillStyle = "#ffffff";
    ctx.fill();
    taken.push({ left: x - 12, top: y - 33, right: x + 12, bottom: y + 2 });
  }

  function drawCrosshair() {
    const x = state.width / 2;
    const y = state.height / 2;
    ctx.strokeStyle = COLOURS.crosshair;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(x - 12, y); ctx.lineTo(x - 4, y); ctx.moveTo(x + 4, y); ctx.lineTo(x + 12, y);
    ctx.moveTo(x, y - 12); ctx.lineTo(x, y - 4); ctx.moveTo(x, y + 4); ctx.lineTo(x, y + 12);
    ctx.stroke();
  }

  function updateFooter() {
    const lat = latitudeOf(state.cy);
    const perPixel = metresPerPixel(lat);
    const metres = niceDistance(perPixel * 100);
    scaleBar.style.width = `${Math.round(metres / perPixel)}px`;
    scaleText.textContent = metres >= 1000
      ? t("map.scale_km", { value: formatNumber(metres / 1000) }) : t("map.scale_m", { value: formatNumber(metres) });
    if (state.place) {
      const { lat: plat, lon, precisionM } = state.place;
      readout.textContent = precisionM ? `${formatPlace(plat, lon)} (${formatPrecision(precisionM)})` : formatPlace(plat, lon);
    } else {
      readout.textContent = editable ? t("map.no_place_editable") : t("map.no_place");
    }
  }

  /** The view and the place on the element's data- attributes (kept current at once, not at the next frame). */
  function mirrorState() {
    const data = root.dataset;
    data.zoom = state.zoom.toFixed(2);
    const at = markerScreen();
    if (state.place) {
      data.latitude = state.place.lat.toFixed(6);
      data.longitude = state.place.lon.toFixed(6);
      data.precision = state.place.precisionM ? String(Math.round(state.place.precisionM)) : "";
      data.markerX = at[0].toFixed(1);
      data.markerY = at[1].toFixed(1);
      const perPixel = metresPerPixel(state.place.lat);
      data.precisionPx = state.place.precisionM ? (state.place.precisionM / perPixel).toFixed(1) : "";
    } else {
      for (const key of ["latitude", "longitude", "precision", "markerX", "markerY", "precisionPx"]) delete data[key];
    }
  }

  function draw() {
    state.frame = 0;
    const rect = view.getBoundingClientRect();
    const width = Math.round(rect.width);
    const height = Math.round(rect.height);
    if (!width || !height) return; // hidden: drawn when it shows (ResizeObserver)
    const ratio = window.devicePixelRatio || 1;
    if (width !== state.width || height !== state.height || canvas.width !== Math.round(width * ratio)) {
      state.width = width; state.height = height;
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
      clampCentre();
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    ctx.fillStyle = COLOURS.water;
    ctx.fillRect(0, 0, width, height);
    const wanted = wantedLevel();
    ensureLoaded(wanted);
    const margin = 64;
    const box = { left: -margin, top: -margin, right: width + margin, bottom: height + margin };
    let drawn = drawLayer("land", wanted, box, { fill: COLOURS.land, stroke: COLOURS.coast, width: 0.8, closed: true });
    const landLevel = layerFor("land", wanted)?.level;
    drawn += drawLayer("lakes", wanted, box, { fill: COLOURS.lake, stroke: COLOURS.coast, width: 0.6, closed: true });
    if (state.zoom >= 3) drawn += drawLayer("rivers", wanted, box, { stroke: COLOURS.river, width: 1, closed: false });
    ctx.setLineDash([4, 3]);
    drawn += drawLayer("borders", wanted, box, { stroke: COLOURS.border, width: 1, closed: false });
    ctx.setLineDash([]);
    const taken = [];
    drawPlace(taken);
    const cities = state.zoom >= 3 ? drawCities(taken) : 0;
    if (editable && document.activeElement === view) drawCrosshair();
    updateFooter();
    mirrorState();
    root.dataset.level = landLevel || "";
    root.dataset.drawn = String(drawn);
    root.dataset.cities = String(cities);
  }

  function schedule() {
    mirrorState();
    if (!state.frame) state.frame = requestAnimationFrame(draw);
  }

  function ensureLoaded(wanted) {
    for (const level of LEVELS) {
      if (!state.layers[level.name] && !state.loading.has(level.name)) {
        state.loading.add(level.name);
        loadLevel(level.name).then((layers) => { state.layers[level.name] = layers; schedule(); })
          .catch(() => { root.dataset.error = "map-data"; })
          .finally(() => { state.loading.delete(level.name); });
      }
      if (level.name === wanted) break;
    }
    if (state.zoom >= 3 && !state.cities && !state.loading.has("cities")) {
      state.loading.add("cities");
      loadCities().then((cities) => { state.cities = cities; schedule(); })
        .catch(() => { /* names are a help, not a need */ })
        .finally(() => { state.loading.delete("cities"); });
    }
  }

  // -- the place ------------------------------------------------------------------------------------------

  function zoomForPrecision(metres, lat) {
    // the circle about a sixth of the view across, between zoom 4 and 16
    const target = (metres * 3) / Math.max(120, Math.min(state.width || 400, state.height || 300));
    const zoom = Math.log2((EARTH_CIRCUMFERENCE * Math.cos((lat * Math.PI) / 180)) / (TILE * target));
    return Math.max(4, Math.min(16, Math.floor(zoom)));
  }

  /** Show a place; recenter (default true) moves the view to it, zoomed to its precision if none is given. */
  function setPlace(lat, lon, { precisionM = null, recenter = true, zoom } = {}) {
    if (!Number.isFinite(lat) || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) return;
    state.place = { lat, lon, precisionM: precisionM && precisionM > 0 ? precisionM : null };
    if (recenter) {
      if (zoom !== undefined) state.zoom = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, zoom));
      else if (state.place.precisionM) state.zoom = zoomForPrecision(state.place.precisionM, lat);
      else state.zoom = Math.max(state.zoom, 10);
      state.cx = mercatorX(lon);
      state.cy = mercatorY(lat);
      clampCentre();
    }
    schedule();
  }

  function clearPlace() { state.place = null; schedule(); }

  function setView(lat, lon, zoom = state.zoom) {
    state.cx = mercatorX(lon);
    state.cy = mercatorY(lat);
    state.zoom = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, zoom));
    clampCentre();
    schedule();
  }

  /**
   * The person placed the marker here (canvas pixels). Its precision is what a pointer can aim at this zoom,
   * PICK_PIXELS pixels on the ground (zoomed out, a tap is kilometres wide; zoomed in, metres).
   */
  function pick(px, py) {
    const [x, y] = toWorld(px, py);
    const lat = Math.max(-MAX_LAT, Math.min(MAX_LAT, latitudeOf(y)));
    const lon = Math.max(-180, Math.min(180, longitudeOf(x)));
    const metres = metresPerPixel(lat) * PICK_PIXELS;
    const precisionM = Math.max(1, Number(metres.toPrecision(2)));
    state.place = { lat, lon, precisionM };
    schedule();
    if (options.onPick) options.onPick(lat, lon, { precisionM });
  }

  // -- pointer: pan, pinch, pick, drag the marker --------------------------------------------------------------

  const pointers = new Map();
  let gesture = null; // {mode: "pan"|"marker"|"pinch", startX, startY, moved, distance, zoom}

  function local(event) {
    const rect = view.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  function onMarker(px, py) {
    const at = markerScreen();
    if (!at) return false;
    // the pin's head and stem
    return Math.hypot(px - at[0], py - (at[1] - 18)) <= 16 || Math.hypot(px - at[0], py - at[1]) <= 8;
  }

  view.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    view.setPointerCapture(event.pointerId);
    const [px, py] = local(event);
    pointers.set(event.pointerId, [px, py]);
    if (pointers.size === 2) {
      const [[ax, ay], [bx, by]] = [...pointers.values()];
      gesture = { mode: "pinch", distance: Math.hypot(ax - bx, ay - by) || 1, zoom: state.zoom, moved: true };
      return;
    }
    const mode = editable && onMarker(px, py) ? "marker" : "pan";
    gesture = { mode, startX: px, startY: py, lastX: px, lastY: py, moved: false };
    if (mode === "marker") {
      const at = markerScreen();
      gesture.offsetX = at[0] - px;
      gesture.offsetY = at[1] - py;
      root.classList.add("dragging-marker");
    }
  });

  view.addEventListener("pointermove", (event) => {
    if (!gesture || !pointers.has(event.pointerId)) return;
    const [px, py] = local(event);
    pointers.set(event.pointerId, [px, py]);
    if (gesture.mode === "pinch") {
      if (pointers.size < 2) return;
      const [[ax, ay], [bx, by]] = [...pointers.values()];
      const distance = Math.hypot(ax - bx, ay - by) || 1;
      setZoom(gesture.zoom + Math.log2(distance / gesture.distance), [(ax + bx) / 2, (ay + by) / 2]);
      return;
    }
    if (!gesture.moved && Math.hypot(px - gesture.startX, py - gesture.startY) < 5) return;
    gesture.moved = true;
    if (gesture.mode === "marker") {
      pick(px + gesture.offsetX, py + gesture.offsetY);
    } else {
      panBy(px - gesture.lastX, py - gesture.lastY);
    }
    gesture.lastX = px; gesture.lastY = py;
  });

  function endPointer(event, cancelled) {
    if (!pointers.has(event.pointerId)) return;
    pointers.delete(event.pointerId);
    if (!gesture) return;
    if (gesture.mode === "pinch") {
      if (pointers.size === 0) gesture = null;
      else gesture = { mode: "pan-after-pinch", moved: true };
      return;
    }
    if (!cancelled && editable && !gesture.moved && gesture.mode === "pan") {
      const [px, py] = local(event);
      pick(px, py);
    }
    root.classList.remove("dragging-marker");
    if (pointers.size === 0) gesture = null;
  }
  view.addEventListener("pointerup", (event) => endPointer(event, false));
  view.addEventListener("pointercancel", (event) => endPointer(event, true));

  view.addEventListener("wheel", (event) => {
    event.preventDefault();
    const step = event.deltaMode === 1 ? event.deltaY * 0.05 : event.deltaY / 300;
    setZoom(state.zoom - Math.max(-1, Math.min(1, step)), local(event));
  }, { passive: false });

  view.addEventListener("dblclick", (event) => {
    event.preventDefault();
    setZoom(Math.round(state.zoom) + 1, local(event));
  });

  // -- keyboard: arrows pan, +/− zoom, Enter or Space places the marker at the centre ---------------------------

  view.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const step = event.shiftKey ? 240 : 80;
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (event.key in moves) {
      panBy(...moves[event.key]);
    } else if (event.key === "+" || event.key === "=") {
      setZoom(Math.round(state.zoom) + 1);
    } else if (event.key === "-" || event.key === "_") {
      setZoom(Math.round(state.zoom) - 1);
    } else if (editable && (event.key === "Enter" || event.key === " ")) {
      pick(state.width / 2, state.height / 2);
    } else {
      return;
    }
    event.preventDefault();
    event.stopPropagation(); // the page's own shortcuts (+/− zoom the photo on the specialist's page) stay out
  });
  view.addEventListener("focus", schedule);
  view.addEventListener("blur", schedule);

  zoomIn.addEventListener("click", () => setZoom(Math.round(state.zoom) + 1));
  zoomOut.addEventListener("click", () => setZoom(Math.round(state.zoom) - 1));

  new ResizeObserver(schedule).observe(view);

  if (Number.isFinite(options.latitude) && Number.isFinite(options.longitude)) {
    setPlace(options.latitude, options.longitude, { precisionM: options.precisionM, zoom: options.zoom });
  } else {
    schedule();
  }

  return {
    element: root,
    setPlace,
    clearPlace,
    setView,
    place: () => (state.place ? { ...state.place } : null),
    redraw: schedule,
  };
}
