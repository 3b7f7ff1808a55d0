// pollinid — the volunteer's place: the map, the latitude/longitude fields and "Use my location", kept in step.
// Picking or dragging on the map fills the fields; typing in the fields moves the marker; the device's fix
// fills both and shows its accuracy as a circle. It remembers how the place was given (gps, map, typed, exif)
// and how precise it is, for the observation sent to the API.
import { t } from "./i18n.js";
import { createMap, formatPrecision } from "./map.js";

const DECIMALS = 6; // about 0.1 m: the fields never claim less than the place holds

/**
 * fields: {map, latitude, longitude, locate, status} elements, and onChange() (optional), called when the map
 * or the device's fix changes the place (typing fires the fields' own change events). Returns {fromExif(lat, lon,
 * precisionM), source(), precision(), map}.
 */
export function mountPlacePicker(fields) {
  let source = null;
  let precision = null;

  function say(text) { fields.status.textContent = text; }
  const changed = () => { if (fields.onChange) fields.onChange(); };

  function fill(lat, lon) {
    fields.latitude.value = lat.toFixed(DECIMALS);
    fields.longitude.value = lon.toFixed(DECIMALS);
  }

  const map = createMap(fields.map, {
    editable: true,
    onPick(lat, lon, { precisionM } = {}) {
      fill(lat, lon);
      source = "map";
      precision = precisionM ?? null;
      say(t("map.source_map", { precision: formatPrecision(precision) }));
      changed();
    },
  });

  function typed() {
    const lat = parseFloat(fields.latitude.value);
    const lon = parseFloat(fields.longitude.value);
    source = null;
    precision = null;
    if (!Number.isFinite(lat) || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) {
      if (!fields.latitude.value && !fields.longitude.value) map.clearPlace();
      say("");
      return;
    }
    source = "typed";
    map.setPlace(lat, lon, { recenter: true });
    say(t("map.source_typed"));
  }
  fields.latitude.addEventListener("input", typed);
  fields.longitude.addEventListener("input", typed);

  fields.locate.addEventListener("click", () => {
    if (!navigator.geolocation) { say(t("map.no_geolocation")); return; }
    say(t("map.locating"));
    navigator.geolocation.getCurrentPosition((position) => {
      const { latitude, longitude, accuracy } = position.coords;
      fill(latitude, longitude);
      source = "gps";
      precision = Number.isFinite(accuracy) && accuracy > 0 ? Math.round(accuracy) : null;
      map.setPlace(latitude, longitude, { precisionM: precision, recenter: true });
      say(precision ? t("map.source_gps", { precision: formatPrecision(precision) }) : t("map.source_gps_plain"));
      changed();
    }, (error) => say(t("map.geolocation_failed", { message: error.message })),
    { enableHighAccuracy: true, timeout: 10000 });
  });

  return {
    map,
    /** The photo's EXIF position, used when the fields are still empty. */
    fromExif(lat, lon, precisionM = null) {
      if (fields.latitude.value || fields.longitude.value) return;
      if (!Number.isFinite(lat) || !Number.isFinite(lon)) return;
      fields.latitude.value = String(lat); // as the photo says it, no digits added
      fields.longitude.value = String(lon);
      source = "exif";
      precision = precisionM;
      map.setPlace(lat, lon, { precisionM, recenter: true });
      say(t("map.source_exif"));
    },
    /** How the place was given: "gps", "map", "typed", "exif", or null (no place). */
    source: () => (fields.latitude.value && fields.longitude.value ? source : null),
    /** Its uncertainty radius in metres, when known. */
    precision: () => (fields.latitude.value && fields.longitude.value ? precision : null),
    /** Draw again (call when the map's panel is shown). */
    redraw: () => map.redraw(),
  };
}

/**
 * The specialist's view of an observation's place: the same map, read-only, with the precision circle; or
 * "No place given". Returns {show(observation)}.
 */
export function mountPlaceView(container) {
  const empty = document.createElement("p");
  empty.className = "map-empty";
  empty.textContent = t("map.no_place");
  const holder = document.createElement("div");
  container.replaceChildren(holder, empty);
  let map = null;
  return {
    show(observation) {
      const { latitude, longitude } = observation || {};
      const known = Number.isFinite(latitude) && Number.isFinite(longitude);
      container.dataset.place = known ? "shown" : "none";
      empty.hidden = known;
      holder.hidden = !known;
      if (!known) return;
      if (!map) map = createMap(holder, { editable: false, label: t("map.label_readonly") });
      const precisionM = Number.isFinite(observation.coordinate_precision_m) ? observation.coordinate_precision_m : null;
      map.setPlace(latitude, longitude, { precisionM, recenter: true, zoom: precisionM ? undefined : 10 });
    },
  };
}
